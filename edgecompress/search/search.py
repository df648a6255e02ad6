"""`compress search`: the fastest artifact within an accuracy budget (or the most accurate under a latency), measured in
the target's runtime.

Rung 0 measures every candidate (image size x pruning amount x precision) without fine-tuning: its latency is final
(fine-tuning changes no shape) and its accuracy a floor. Then, rung by rung, the pruned candidates that can still win
are fine-tuned until recovered, each rung with a higher ceiling of epochs; a candidate goes on only while its
fine-tuning ended at the ceiling (still rising) short of the goal, and only the better `keep` fraction of those does.
What it tried and why it stopped is in search.json and search.md.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgecompress import progress
from edgecompress.errors import UserError
from edgecompress.recipe import Recipe
from edgecompress.search.config import SearchConfig
from edgecompress.search.references import has_references
from edgecompress.search.trials import Job, Trial, executor, finished
from edgecompress.targets import get_target

SCHEMA = "edgecompress.search/1"
# The demo's space, where the recipe leaves it at the defaults: small enough for a few minutes on 2 CPU cores.
DEMO = {"imgsz": (480, 384), "prune": (0.0, 0.3), "rungs": (2,)}


@dataclass
class Result:
    """A finished trial as the search reads it: accuracy of its network in the target's runtime, latency of the
    deployed artifact (the frame to detections), and the torch rows its goal is computed from."""

    raw: dict[str, Any]

    @property
    def id(self) -> str:
        return self.raw["id"]

    @property
    def candidate(self) -> dict[str, Any]:
        return self.raw["candidate"]

    def row(self, name: str) -> dict[str, Any]:
        return next(s for s in self.raw["stages"] if s["name"] == name)

    @property
    def final(self) -> dict[str, Any]:
        return self.row(self.raw["final"]["stage"])

    @property
    def network(self) -> dict[str, Any]:
        """The final artifact's network (the final artifact itself where nothing of the frame is inside)."""
        final = self.final
        return self.row(final["info"]["network"]) if "frame" in final["info"] else final

    @property
    def map(self) -> float:
        return self.network["accuracy"]["map50_95"]

    @property
    def latency(self) -> float:
        return self.final["benchmark"]["end_to_end"]["p50_ms"]

    @property
    def torch_map(self) -> float:
        """The last PyTorch model's mAP: what fine-tuning reaches, before export and quantization."""
        return [s for s in self.raw["stages"] if s["runtime"] == "torch"][-1]["accuracy"]["map50_95"]

    @property
    def baseline_map(self) -> float:
        return self.raw["stages"][0]["accuracy"]["map50_95"]

    @property
    def finetune(self) -> dict[str, Any]:
        rows = [s for s in self.raw["stages"] if s["name"] == "finetune"]
        if not rows:
            return {}
        info = rows[0]["info"]
        return {"epochs": len(info.get("epochs_log", [])), "stopped": info.get("stopped", "")}


@dataclass
class State:
    """What the search knows: every result by trial id, the log of decisions, and the budget spent."""

    config: SearchConfig
    started: float
    ran: int = 0
    results: dict[str, Result] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)
    stop: str = ""

    def more(self) -> bool:
        c = self.config
        if c.budget_trials is not None and self.ran >= c.budget_trials:
            self.stop = self.stop or f"the trial budget is spent ({c.budget_trials} trials run)"
            return False
        if c.budget_minutes is not None and time.time() - self.started > 60 * c.budget_minutes:
            self.stop = self.stop or f"the time budget is spent ({c.budget_minutes:g} minutes)"
            return False
        return True

    def say(self, line: str) -> None:
        self.log.append(line)
        progress.note(line)


def candidates(recipe: Recipe, config: SearchConfig) -> list[dict[str, Any]]:
    """Every image size x pruning amount x precision, cheapest to measure first (no pruning)."""
    target = get_target(recipe.target)
    precisions = config.precision or (target.precisions[0],)
    if wrong := [p for p in precisions if p not in target.precisions]:
        raise UserError(f"target '{target.name}' runs {', '.join(target.precisions)}, not {', '.join(wrong)}; "
                        f"set search.precision to some of those")
    return [{"imgsz": size, "prune": amount, "precision": precision} for amount in sorted(config.prune)
            for size in config.sizes(recipe.imgsz) for precision in precisions]


def trial_recipe(recipe: Recipe, candidate: dict[str, Any], finetune: dict[str, Any]) -> dict[str, Any]:
    """The pipeline recipe of one candidate: its size, pruning and precision, the search's budget for INT8's fallback,
    no gates (the search judges), and the search section left at its defaults (a trial's id ignores the budget)."""
    data = recipe.to_dict()
    int8 = candidate["precision"] == "int8"
    data.update(imgsz=candidate["imgsz"], gates={}, search={})
    data["prune"] = {**data["prune"], "flops": candidate["prune"], "latency": 0.0}
    data["quant"] = {**data["quant"], "mode": (recipe.quant.mode if recipe.quant.mode in ("ptq", "qat") else "ptq")
                     if int8 else "none", "max_map_drop": recipe.search.max_map_drop}
    data["finetune"] = {**data["finetune"], **finetune}
    return data


def search(recipe: Recipe, out: Path, trust_checkpoint: bool = False) -> dict[str, Any]:
    """Run the search of `recipe.search` into `out` (resuming one killed there), publish the chosen artifact and
    write search.json, search.md and search.png; returns search.json as a dict."""
    from edgecompress.pipeline.runner import copy_over, demo_paths
    from edgecompress.search.report import write

    if recipe.is_demo:
        model, data = demo_paths()
        space = {f"search.{k}": v for k, v in DEMO.items()
                 if getattr(recipe.search, k) == getattr(SearchConfig(), k)}
        recipe = recipe.with_overrides(model=str(model), data=str(data), **space)
    config, out = recipe.search, Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    chosen_executor, note = executor(config.executor)
    state = State(config, time.time())
    if note:
        state.say(note)
    root = str(out)

    def run(trials: list[Trial], what: str) -> list[Result]:
        jobs, results = [Job(t, root, trust_checkpoint) for t in trials], []
        todo = []
        for job in jobs:
            if (done := finished(job)) is not None:
                results.append(Result(done))
            else:
                todo.append(job)
        with progress.task(what, total=len(jobs), unit="trial", each=True) as task:
            task.advance(len(results))
            for raw in chosen_executor.run(todo, state.more, config.workers, recipe.device, config.ray_address):
                state.ran += raw["kind"] == "candidate"  # the budget counts candidates, not the references
                result = Result(raw)
                results.append(result)
                task.advance(**{k: v for k, v in result.candidate.items()},
                                **({"mAP50-95": round(result.map, 4), "p50 ms": round(result.latency, 1)}
                                   if result.raw["kind"] != "ultralytics" else {}))
        for result in results:
            state.results[result.id] = result
        return results

    reference_candidate = {"imgsz": recipe.imgsz, "prune": 0.0,
                           "precision": next(p for p in get_target(recipe.target).precisions if p != "int8")}
    references = [Trial("reference", trial_recipe(recipe, reference_candidate, {}),
                        candidate=tuple(reference_candidate.items()))]
    if config.ultralytics and has_references(recipe.target):
        references.append(Trial("ultralytics", trial_recipe(recipe, reference_candidate, {}),
                                candidate=tuple(reference_candidate.items())))
    with progress.stage("search"):
        done = run(references, "references")
        if not done or done[0].raw["kind"] != "reference":
            raise UserError("the search's budget ended before its reference was measured; give a larger --budget")
        reference = done[0]
        goal = reference.map - config.max_map_drop / 100
        state.say(f"reference: the unpruned model in {reference.final['runtime']} {reference.final['precision']} at "
                  f"{recipe.imgsz}: mAP50-95 {reference.map:.4f}, p50 {reference.latency:.1f} ms; "
                  + (f"goal: the most accurate under {config.max_latency_ms} ms" if config.max_latency_ms else
                     f"goal: the fastest with mAP50-95 >= {goal:.4f} ({config.max_map_drop} points)"))
        rung0 = run([Trial("candidate", trial_recipe(recipe, c, {"epochs": 0}), 0, tuple(c.items()))
                     for c in candidates(recipe, config)], "rung 0: every candidate, no fine-tuning")
        contenders = _contenders(rung0, state, goal, config, reference)
        for rung, ceiling in enumerate(config.rungs, 1):
            if not contenders or state.stop:
                break
            trials = [Trial("candidate", trial_recipe(recipe, r.candidate, {
                "epochs": "auto", "max_epochs": ceiling, "recovered_within": _within(r, goal, config)}), rung,
                tuple(r.candidate.items())) for r in contenders]
            state.say(f"rung {rung}: fine-tuning {len(trials)} candidate(s) until recovered, at most {ceiling} epochs")
            tuned = run(trials, f"rung {rung}: fine-tune at most {ceiling} epochs")
            contenders = _contenders(tuned, state, goal, config, reference, keep=config.keep)
        if not state.stop:
            state.stop = "no candidate can still win" if not contenders else "every rung is spent"
        state.say(f"stopped: {state.stop}")
        chosen = _choose(state, goal, config)
    measured = [r for r in state.results.values() if r.raw["kind"] == "candidate"]
    published = None
    if chosen:
        trial_folder = out / chosen.raw["folder"]
        published = copy_over(trial_folder / chosen.raw["final"]["artifact"],
                              out / chosen.raw["final"]["artifact"]).name
    result = {"schema": SCHEMA, "recipe": recipe.to_dict(), "executor": type(chosen_executor).__name__.lower(),
              "seconds": round(time.time() - state.started, 1), "trials_run": state.ran,
              "goal": {"max_map_drop": config.max_map_drop, "max_latency_ms": config.max_latency_ms,
                       "map50_95": None if config.max_latency_ms else round(goal, 4)},
              "reference": _summary(reference), "ultralytics": _ultralytics(state),
              "trials": [_summary(r) for r in measured], "chosen": chosen.id if chosen else None,
              "artifact": published, "stopped": state.stop, "log": state.log}
    write(result, out)
    return result


def _feasible(result: Result, goal: float, config: SearchConfig) -> bool:
    if config.max_latency_ms:
        return result.latency <= config.max_latency_ms
    return result.map >= goal


def _choose(state: State, goal: float, config: SearchConfig) -> Result | None:
    ok = [r for r in state.results.values() if r.raw["kind"] == "candidate" and _feasible(r, goal, config)]
    if not ok:
        return None
    return max(ok, key=lambda r: r.map) if config.max_latency_ms else min(ok, key=lambda r: r.latency)


def _contenders(results: list[Result], state: State, goal: float, config: SearchConfig, reference: Result,
                keep: float = 1.0) -> list[Result]:
    """The pruned candidates among `results` that fine-tuning (longer) could still make the winner."""
    best = _choose(state, goal, config)
    open_: list[Result] = []
    for r in results:
        if r.candidate["prune"] == 0 or r.finetune.get("stopped", "the ceiling").startswith(("recovered", "no new")):
            continue  # nothing to fine-tune, or fine-tuning ended for good
        if config.max_latency_ms:
            if r.latency <= config.max_latency_ms and (best is None or r is best or r.map <= best.map):
                open_.append(r)  # under the latency; more epochs may make it the most accurate
        elif r.map < goal and (best is None or r.latency < best.latency):
            open_.append(r)  # faster than the best within budget, not within it yet
    open_.sort(key=lambda r: -r.map)
    kept = open_[:math.ceil(keep * len(open_))]
    if best:
        state.say(f"best so far: {_name(best)}, mAP50-95 {best.map:.4f}, p50 {best.latency:.1f} ms")
    if dropped := len(open_) - len(kept):
        state.say(f"successive halving: {dropped} of {len(open_)} candidates dropped (the lowest mAP50-95)")
    return kept


def _within(result: Result, goal: float, config: SearchConfig) -> float:
    """Fine-tuning's stop, in points below the unpruned model at the candidate's size: what the goal leaves once the
    export and precision loss measured at rung 0 is paid (0 under a latency goal: recover fully)."""
    if config.max_latency_ms:
        return 0.0
    conversion = result.torch_map - result.map
    return round(max(0.0, 100 * (result.baseline_map - goal - conversion)), 3)


def _name(result: Result) -> str:
    c = result.candidate
    return f"{c['imgsz']} px, -{c['prune']:.0%} FLOPs, {c['precision']}"


def _summary(result: Result) -> dict[str, Any]:
    final, network = result.final, result.network
    return {"id": result.id, "rung": result.raw["rung"], **result.candidate, **result.finetune,
            "map50_95": round(result.map, 4), "p50_ms": round(result.latency, 2),
            "inference_p50_ms": network["benchmark"]["inference"]["p50_ms"], "gflops": network["gflops"],
            "parameters": network["parameters"], "file_mb": final["benchmark"]["file_mb"],
            "seconds": result.raw["seconds"], "reused": result.raw["reused"], "folder": result.raw["folder"]}


def _ultralytics(state: State) -> list[dict[str, Any]]:
    rows = []
    for r in state.results.values():
        if r.raw["kind"] == "ultralytics":
            rows += [{"name": s["name"], "precision": s["precision"], "map50_95": s["accuracy"]["map50_95"],
                      "p50_ms": s["benchmark"]["end_to_end"]["p50_ms"],
                      "inference_p50_ms": s["benchmark"]["inference"]["p50_ms"]} for s in r.raw["stages"][1:]]
    return rows
