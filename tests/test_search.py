"""`compress search` on the demo at tiny sizes: real trials (pruning, export, onnxruntime, Ultralytics' own exports),
on a local Ray with two workers and in this process without Ray, a killed search resumed, and the rules it spends its
budget by."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import FAST_BENCH

from edgecompress.config import ConfigError
from edgecompress.recipe import Recipe
from edgecompress.search.config import SearchConfig, parse_budget
from edgecompress.search.report import pareto
from edgecompress.search.search import Result, State, _contenders, _smaller, search, trial_recipe
from edgecompress.search.trials import Trial

# two candidates at 64 px: unpruned and 30% pruned, in FP32 (INT8's calibration is tested elsewhere)
TINY = {"imgsz": 64, "target": "onnx", "bench": FAST_BENCH, "prune": {"sensitivity_images": 2},
        "search": {"imgsz": [64], "prune": [0.0, 0.3], "precision": ["fp32"], "rungs": [1], "max_map_drop": 100.0}}


def tiny_recipe(demo: tuple[Path, Path], **search: object) -> Recipe:
    return Recipe.from_dict({**TINY, "model": str(demo[0]), "data": str(demo[1]),
                             "search": {**TINY["search"], **search}})


def test_search_runs_its_trials_on_a_local_ray_with_two_workers_and_reuses_them(demo, tmp_path):
    pytest.importorskip("ray")
    recipe = tiny_recipe(demo, executor="ray", workers=2, ultralytics=False)
    result = search(recipe, tmp_path)
    assert result["executor"] == "ray" and result["trials_run"] == 2
    assert {(t["imgsz"], t["prune"], t["rung"]) for t in result["trials"]} == {(64, 0.0, 0), (64, 0.3, 0)}
    chosen = next(t for t in result["trials"] if t["id"] == result["chosen"])  # everything is within 100 points
    assert all(t["retimed"] for t in result["trials"]) and result["reference"]["retimed"]  # taking turns at the end
    assert chosen["p50_ms"] == min(t["p50_ms"] for t in result["trials"])
    assert any(line.startswith("finalists timed again taking turns") for line in result["log"])
    assert (tmp_path / result["artifact"]).is_file() and (tmp_path / "search.png").is_file()
    assert "| **chosen** | 64 |" in (tmp_path / "search.md").read_text()
    again = search(tiny_recipe(demo, executor="sequential", ultralytics=False), tmp_path)
    assert again["trials_run"] == 0 and all(t["reused"] for t in again["trials"])


def test_a_killed_search_without_ray_resumes_without_rerunning_finished_trials(demo, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({**TINY, "search": {**TINY["search"], "executor": "auto"}}))
    hide_ray = ("import sys; sys.modules['ray'] = None; from edgecompress.cli import main; "
                "sys.exit(main(sys.argv[1:]))")
    command = [sys.executable, "-c", hide_ray, "search", "--model", str(demo[0]), "--data", str(demo[1]),
               "--recipe", str(recipe), "--out", str(tmp_path / "out")]
    env = {**os.environ, "YOLO_OFFLINE": "1"}
    first = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not _candidates_done(tmp_path / "out") and time.time() < deadline and first.poll() is None:
        time.sleep(0.5)
    first.send_signal(signal.SIGKILL)
    _, stderr = first.communicate()
    done = _candidates_done(tmp_path / "out")
    assert "Ray is not installed (pip install 'edgecompress[ray]')" in stderr
    assert done, stderr[-2000:]
    finished = {p: p.stat().st_mtime_ns for p in done}
    resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert all(p.stat().st_mtime_ns == t for p, t in finished.items())  # read back, not run again
    result = json.loads((tmp_path / "out" / "search.json").read_text())
    assert result["executor"] == "sequential" and len(result["trials"]) == 2
    assert result["trials_run"] == 2 - len(finished) and result["ultralytics"]  # Ultralytics' exports, measured
    assert {u["name"] for u in result["ultralytics"]} == {"ultralytics-onnx-fp32", "ultralytics-onnx-int8"}
    assert all(u["retimed"] == (result["chosen"] is not None) for u in result["ultralytics"])  # with the finalists


def _candidates_done(out: Path) -> list[Path]:
    return [p for p in out.glob("trials/*/trial.json") if json.loads(p.read_text())["kind"] == "candidate"]


def test_budget_and_search_settings_are_checked_with_what_to_write_instead():
    assert parse_budget("40") == {"budget_trials": 40}
    assert parse_budget("90m") == {"budget_minutes": 90.0} and parse_budget("2h") == {"budget_minutes": 120.0}
    for bad in ("0", "ten", "-3m"):
        with pytest.raises(ConfigError, match="trials \\(40\\), minutes \\(90m\\)"):
            parse_budget(bad)
    with pytest.raises(ConfigError, match="multiple of 32"):
        SearchConfig(imgsz=(600,))
    with pytest.raises(ConfigError, match="rising epoch ceilings"):
        SearchConfig(rungs=(30, 5))
    with pytest.raises(ConfigError, match="unknown key 'budget'.*did you mean"):
        Recipe.from_dict({"search": {"budget": 3}})
    assert SearchConfig().sizes(640) == (640, 576, 512, 448)


def test_pareto_front_keeps_only_trials_nothing_beats_on_both():
    trials = [{"p50_ms": 10, "map50_95": 0.50}, {"p50_ms": 12, "map50_95": 0.49}, {"p50_ms": 8, "map50_95": 0.40},
              {"p50_ms": 15, "map50_95": 0.60}]
    assert [t["p50_ms"] for t in pareto(trials)] == [8, 10, 15]


def _result(prune: float, map50_95: float, p50: float, stopped: str | None = None, imgsz: int = 640) -> Result:
    """A finished trial as trial.json holds it: the torch baseline, the pruned (and fine-tuned) model, the artifact."""
    row = lambda name, runtime, m, info=None: {  # noqa: E731
        "name": name, "runtime": runtime, "precision": "fp32", "parameters": 1, "gflops": 1.0, "info": info or {},
        "accuracy": {"map50_95": m}, "benchmark": {"file_mb": 1.0, "end_to_end": {"p50_ms": p50},
                                                   "inference": {"p50_ms": p50}}}
    tuned = [row("finetune", "torch", map50_95 + 0.002, {"epochs_log": [{}] * 5, "stopped": stopped})] \
        if stopped else []
    stages = [row("baseline", "torch", 0.60), row("prune", "torch", map50_95), *tuned,
              row("openvino-int8", "openvino", map50_95)]
    return Result({"id": f"{prune}-{p50}", "kind": "candidate", "rung": int(bool(stopped)), "seconds": 1.0,
                   "reused": False, "folder": "", "candidate": {"imgsz": imgsz, "prune": prune, "precision": "int8"},
                   "final": {"stage": "openvino-int8"}, "stages": stages})


def test_a_fine_tuned_candidate_keeps_the_latency_rung_0_timed_for_its_shapes():
    state = State(SearchConfig(), time.time())
    state.record(_result(0.4, 0.55, 12.0).raw)
    tuned = state.record(_result(0.4, 0.58, 14.0, "the ceiling, 5 epochs").raw)  # its own timing: 14 ms
    assert tuned.latency == 12.0 and tuned.map == 0.58


def test_candidates_that_can_still_win_go_on_and_halving_keeps_the_better():
    config = SearchConfig(max_map_drop=1.0, keep=0.5)
    goal = 0.60 - 0.01
    state = State(config, time.time())
    unpruned = _result(0.0, 0.595, 20.0)  # within budget: the best so far
    slower = _result(0.2, 0.50, 25.0)  # short of the goal, but slower than the best: cannot win
    intact = _result(0.0, 0.58, 19.0)  # short of the goal at the trained size: nothing to fine-tune
    smaller = _result(0.0, 0.585, 11.0, imgsz=448)  # unpruned below the trained size: fine-tuned at 448
    fast = [_result(0.4, 0.55, 12.0), _result(0.5, 0.45, 10.0), _result(0.6, 0.40, 8.0)]
    state.results.update((r.id, r) for r in [unpruned, slower, intact, smaller, *fast])
    assert _contenders([unpruned, slower, intact, smaller, *fast], state, goal, config, 640) == [smaller, *fast]
    ceiling, recovered = _result(0.4, 0.57, 12.0, "the ceiling, 5 epochs"), _result(0.5, 0.56, 10.0, "recovered")
    still = [ceiling, _result(0.6, 0.52, 8.0, "the ceiling, 5 epochs"), recovered]
    state.results.update((r.id, r) for r in still)
    # fine-tuning that ended for good (recovered) does not go on; of the two at the ceiling, the better half does
    assert _contenders(still, state, goal, config, 640, keep=0.5) == [ceiling]


def test_the_default_sizes_go_smaller_only_while_the_best_lies_at_the_smallest_tried():
    goal = 0.60 - 0.01

    def smaller(config: SearchConfig, *results: Result) -> tuple[int, ...]:
        state = State(config, time.time())
        state.results.update((r.id, r) for r in results)
        return _smaller(state, goal, config)

    budget = SearchConfig(max_map_drop=1.0)
    at_edge = [_result(0.0, 0.60, 20.0), _result(0.0, 0.595, 9.0, imgsz=448)]
    assert smaller(budget, *at_edge) == (384,)  # the fastest within the goal is the smallest size: go on
    assert smaller(budget, *at_edge, _result(0.0, 0.57, 7.0, imgsz=384)) == ()  # 384 px misses the goal: stop
    assert smaller(SearchConfig(imgsz=(640, 448)), *at_edge) == ()  # the recipe's own sizes are kept
    assert smaller(budget, _result(0.0, 0.60, 20.0), _result(0.0, 0.58, 9.0, imgsz=448)) == ()
    assert smaller(SearchConfig(max_latency_ms=8.0), *at_edge) == (384,)  # nothing under 8 ms yet
    assert smaller(SearchConfig(max_latency_ms=10.0), *at_edge) == ()


def test_a_rung_continues_from_the_model_the_rung_below_fine_tuned(demo):
    recipe, candidate = tiny_recipe(demo), {"imgsz": 64, "prune": 0.3, "precision": "fp32"}

    def trial(rung: int, epochs: int, warm: tuple = ()) -> Trial:
        finetune = {"epochs": "auto", "max_epochs": epochs, "unpruned": True}
        return Trial("candidate", trial_recipe(recipe, candidate, finetune), rung, tuple(candidate.items()), warm)

    def rounds(t: Trial) -> list:
        return [s for s in t.plan(Recipe.from_dict(t.recipe)) if s.name.startswith("finetune")]

    first = trial(1, 1)
    second = trial(2, 2, tuple(first.finetunes))
    assert [s.name for s in rounds(first)] == ["finetune"] and first.finetunes == [first.recipe["finetune"]]
    assert [s.name for s in rounds(second)] == ["finetune", "finetune-2"]
    assert rounds(second)[0].settings() == rounds(first)[0].settings()  # the same stage: the rung below's, reused
    assert rounds(second)[1].settings().max_epochs == 2 and second.id != trial(2, 2).id


def test_a_candidate_short_of_the_goal_is_fine_tuned_further_from_where_the_rung_below_left_it(demo, tmp_path):
    # at 32 px and half the FLOPs, two epochs stay far below the unpruned model at 64 px: both rungs run
    recipe = tiny_recipe(demo, executor="sequential", ultralytics=False, imgsz=[32], prune=[0.5], rungs=[1, 2],
                         max_map_drop=0.0)
    result = search(recipe, tmp_path)
    rungs = {t["rung"]: t for t in result["trials"]}
    assert set(rungs) == {0, 1, 2}, result["log"]
    manifest = json.loads((tmp_path / rungs[2]["folder"] / "manifest.json").read_text())
    stages = {s["stage"]: s["reused"] for s in manifest["stages"]}
    assert stages["finetune"] and not stages["finetune-2"]  # rung 1's fine-tuning reused, then one more round
    assert rungs[2]["epochs"] == rungs[1]["epochs"] + 1
    assert len({t["p50_ms"] for t in result["trials"]}) == 1  # one network's shapes: one latency for all its versions
