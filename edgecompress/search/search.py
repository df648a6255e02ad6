"""`compress search`: the fastest artifact within an accuracy budget (or the most accurate under a latency), measured in
the target's runtime.

Rung 0 measures every candidate (image size x pruning amount x precision) without fine-tuning: its latency is final
(fine-tuning changes no shape; the candidates are timed again side by side) and its accuracy a floor. Then, rung by
rung, the candidates that can still win (pruned, or unpruned below the trained size) are fine-tuned until recovered,
each rung with a higher ceiling of epochs, continuing from the model the rung below made; a candidate goes on only
while its fine-tuning ended at the ceiling (still rising) short of the goal, and only the better `keep` fraction of
those does. Where the space's sizes are the default ones and the best lies at the smallest, the next size down goes
through the same rungs. What it tried and why it stopped is in search.json and search.md.
"""

from __future__ import annotations

import functools
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgecompress import progress
from edgecompress.device.bench import BENCH_IMAGES
from edgecompress.errors import UserError
from edgecompress.pipeline.cache import OutputFolder
from edgecompress.recipe import Recipe
from edgecompress.search.config import MIN_SIZE, SIZE_STEP, SearchConfig
from edgecompress.search.references import has_references
from edgecompress.search.trials import Job, Trial, executor, finished
from edgecompress.targets import get_target

SCHEMA = "edgecompress.search/1"
CONFIRM = 4  # the finalists timed again taking turns at the end
TURNS = 160  # the timed calls of each artifact when candidates are timed again (200 calls with the untimed ones)
CONFIRM_MARGIN = 1.25  # under a latency limit, finalists whose own timing came within this factor of it
# The demo's space and timing, where the recipe leaves the space at its defaults: a few minutes on 2 CPU cores.
DEMO = {"search.imgsz": (480, 384), "search.prune": (0.0, 0.3), "search.rungs": (2,), "bench.runs": 30}


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

    retimed: float | None = None  # end-to-end p50 as last timed taking turns with other candidates (Search.retime)
    rung0: float | None = None  # a fine-tuned candidate's end-to-end p50 as rung 0 measured it (State.record)

    @property
    def raw_latency(self) -> float:
        """End-to-end p50 as its trial timed it, alone; a fine-tuned candidate's as rung 0 timed the same shapes (one
        timing per shape, so noise between two timings of one network cannot reorder candidates)."""
        return self.rung0 if self.rung0 is not None else self.final["benchmark"]["end_to_end"]["p50_ms"]

    @property
    def latency(self) -> float:
        """End-to-end p50: as last timed taking turns with other candidates (rung 0, the finalists), else alone."""
        return self.retimed if self.retimed is not None else self.raw_latency

    @property
    def torch_map(self) -> float:
        """The last PyTorch model's mAP: what fine-tuning reaches, before export and quantization."""
        return [s for s in self.raw["stages"] if s["runtime"] == "torch"][-1]["accuracy"]["map50_95"]

    @property
    def baseline_map(self) -> float:
        return self.raw["stages"][0]["accuracy"]["map50_95"]

    @property
    def finetune(self) -> dict[str, Any]:
        """The epochs of every fine-tuning round (one per rung), and why the last stopped."""
        rows = [s["info"] for s in self.raw["stages"] if s["name"].startswith("finetune")]
        if not rows:
            return {}
        return {"epochs": sum(len(info.get("epochs_log", [])) for info in rows), "stopped": rows[-1].get("stopped", "")}


@dataclass
class State:
    """What the search knows: every result by trial id, the log of decisions, and the budget spent."""

    config: SearchConfig
    started: float
    ran: int = 0
    results: dict[str, Result] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)
    stop: str = ""
    ultralytics_retimed: dict[str, float] = field(default_factory=dict)  # export name: p50 taking turns

    def record(self, raw: dict[str, Any]) -> Result:
        """Add a finished trial; a fine-tuned candidate takes its latency from rung 0, where its shapes were timed."""
        result = self.results[raw["id"]] = Result(raw)
        if result.raw["rung"]:
            result.rung0 = next(r.latency for r in self.results.values() if r.raw["kind"] == "candidate"
                                and r.raw["rung"] == 0 and r.candidate == result.candidate)
        return result

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


def candidates(recipe: Recipe, config: SearchConfig, sizes: tuple[int, ...]) -> list[dict[str, Any]]:
    """Every image size of `sizes` x pruning amount x precision, cheapest to measure first (no pruning)."""
    target = get_target(recipe.target)
    precisions = config.precision or (target.precisions[0],)
    if wrong := [p for p in precisions if p not in target.precisions]:
        raise UserError(f"target '{target.name}' runs {', '.join(target.precisions)}, not {', '.join(wrong)}; "
                        f"set search.precision to some of those")
    return [{"imgsz": size, "prune": amount, "precision": precision} for amount in sorted(config.prune)
            for size in sizes for precision in precisions]


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
    from edgecompress.pipeline.runner import demo_paths

    if recipe.is_demo:
        model, data = demo_paths()
        default = all(getattr(recipe.search, k) == getattr(SearchConfig(), k) for k in ("imgsz", "prune", "rungs"))
        recipe = recipe.with_overrides(model=str(model), data=str(data), **(DEMO if default else {}))
    out = Path(out).resolve()
    search = Search(recipe, out, trust_checkpoint)
    folder = OutputFolder(out, Path(recipe.model).resolve())  # ours, and one search at a time
    try:
        with progress.stage("search"):
            return search.run()
    finally:
        search.executor.close()
        folder.release()


class Search:
    """One search: its recipe, its folder, where trials run and what it knows so far."""

    def __init__(self, recipe: Recipe, out: Path, trust: bool) -> None:
        self.recipe, self.config, self.out, self.trust = recipe, recipe.search, out, trust
        self.executor, note = executor(self.config.executor)
        self.state = State(self.config, time.time())
        if note:
            self.state.say(note)

    def run(self) -> dict[str, Any]:
        config, state = self.config, self.state
        reference = self.references()
        goal = reference.map - config.max_map_drop / 100
        state.say(f"reference: the unpruned model in {reference.final['runtime']} {reference.final['precision']} at "
                  f"{self.recipe.imgsz} px: mAP50-95 {reference.map:.4f}, p50 {reference.latency:.1f} ms; "
                  + (f"goal: the most accurate under {config.max_latency_ms} ms" if config.max_latency_ms else
                     f"goal: the fastest with mAP50-95 >= {goal:.4f} ({config.max_map_drop} points)"))
        sizes, ended = config.sizes(self.recipe.imgsz), ""
        while sizes:
            ended = self.ladder(candidates(self.recipe, config, sizes), goal)
            sizes = () if state.stop else _smaller(state, goal, config)
        state.stop = state.stop or ended
        state.say(f"stopped: {state.stop}")
        self.confirm(goal, reference)
        return self.publish(reference, goal, _choose(state, goal, config))

    def ladder(self, candidates: list[dict[str, Any]], goal: float) -> str:
        """Rung 0 for `candidates`, then the rungs of fine-tuning; why it ended."""
        config, state = self.config, self.state
        rung0 = self.trials([Trial("candidate", trial_recipe(self.recipe, c, {"epochs": 0}), 0, tuple(c.items()))
                             for c in candidates], "rung 0: every candidate, no fine-tuning")
        if rung0:  # the later rungs' choices rest on these latencies, so they are taken side by side, with the best
            best = _choose(state, goal, config)  # so far (of a larger size's ladder), which they must beat
            self.retime([*rung0, *([best] if best else [])], "rung 0's candidates")
        contenders = _contenders(rung0, state, goal, config, self.recipe.imgsz)
        rounds: dict[str, list[dict[str, Any]]] = {}  # by trial id: the finetune sections it ran, rung by rung
        for rung, (below, ceiling) in enumerate(zip((0, *config.rungs), config.rungs), 1):
            if not contenders or state.stop:
                break
            # each continues from the model the rung below fine-tuned, for the epochs this rung adds
            trials = [Trial("candidate", trial_recipe(self.recipe, r.candidate, {
                "epochs": "auto", "max_epochs": ceiling - below, "recovered_within": _within(r, goal, config),
                "unpruned": True}), rung, tuple(r.candidate.items()), tuple(rounds.get(r.id, ())))
                for r in contenders]
            rounds = {t.id: t.finetunes for t in trials}
            before = {t.id: r for t, r in zip(trials, contenders)}  # each trial's result at the rung below
            state.say(f"rung {rung}: fine-tuning {len(trials)} candidate(s) until recovered, at most {ceiling} epochs")
            tuned = self.trials(trials, f"rung {rung}: fine-tune at most {ceiling} epochs",
                                lambda trial: _can_win(before[trial.id], state, goal, config))
            contenders = _contenders(tuned, state, goal, config, self.recipe.imgsz, keep=config.keep)
        return "no candidate can still win" if not contenders else "every rung is spent"

    def confirm(self, goal: float, reference: Result) -> None:
        """Time the finalists again with the reference and Ultralytics' exports, taking turns, and choose on those
        times."""
        config, results = self.config, [r for r in self.state.results.values() if r.raw["kind"] == "candidate"]
        if config.max_latency_ms:  # those near the limit or under it, most accurate first
            near = sorted((r for r in results if r.latency <= CONFIRM_MARGIN * config.max_latency_ms),
                          key=lambda r: -r.map)
        else:  # those within the budget, fastest first
            near = sorted((r for r in results if r.map >= goal), key=lambda r: r.latency)
        distinct: dict[str, Result] = {}  # one result per candidate: its fine-tuned versions share its shapes
        for r in near:
            distinct.setdefault(_name(r.candidate), r)
        if finalists := list(distinct.values())[:CONFIRM]:
            self.retime([*finalists, reference], "finalists", ultralytics=True)

    def retime(self, results: list[Result], what: str, ultralytics: bool = False) -> None:
        """Time `results` again end to end, taking turns in this process (with Ultralytics' exports, where asked), and
        keep those times. Each trial timed its artifact alone, at its own moment: on a machine that other work shares,
        minutes apart, that moves latency by more than the gaps between candidates. One artifact is timed per
        candidate (its fine-tuned versions have its shapes), and every result of that candidate takes its time."""
        import itertools

        from edgecompress.device.detector import Detector
        from edgecompress.device.runtime import RUNTIMES
        from edgecompress.device.timing import interleaved

        shapes: dict[str, Result] = {}
        for r in results:
            shapes.setdefault(_name(r.candidate), r)
        rows = {key: r.final for key, r in shapes.items()} | (
            {s["name"]: s for s in _ultralytics_rows(self.state)} if ultralytics else {})
        frames = self.frames
        steps = {}
        for key, row in rows.items():
            bench = row["benchmark"]
            session = RUNTIMES[row["runtime"]].load(Path(bench["artifact"]), shared=True)
            detect, cycle = Detector(session, bench["imgsz"], self.recipe.frame.thresholds), itertools.cycle(frames)
            steps[key] = lambda detect=detect, cycle=cycle: detect(next(cycle))
        with progress.task(f"timing the {what}, taking turns", total=None):
            times = {key: round(statistics.median(t), 3) for key, t in interleaved(steps, TURNS).items()}
        line = [f"{key} {times[key]:.1f} ms (before: {r.latency:.1f})" for key, r in shapes.items()]
        for r in self.state.results.values():
            if r.raw["kind"] != "ultralytics" and (key := _name(r.candidate)) in shapes:
                r.retimed = times[key]
        if ultralytics:
            self.state.ultralytics_retimed = {name: ms for name, ms in times.items() if name not in shapes}
        self.state.say(f"{what} timed again taking turns, end-to-end p50: " + ", ".join(
            line + [f"{name} {ms:.1f} ms" for name, ms in times.items() if name not in shapes]))

    @functools.cached_property
    def frames(self) -> list[Any]:
        """The eval split's first images, decoded once: what every side-by-side timing feeds its artifacts."""
        from edgecompress.device.images import read_images
        from edgecompress.yolo.data import Dataset
        from edgecompress.yolo.model import load_model

        classes = len(load_model(Path(self.recipe.model), self.trust).names)
        images = Dataset.check(self.recipe.data, classes, self.recipe.eval.split).images(self.recipe.eval.split)
        return read_images(images[:BENCH_IMAGES])[0]

    def references(self) -> Result:
        """Measure the reference (and Ultralytics' exports, where the target has them); the reference's result."""
        target = get_target(self.recipe.target)
        float_ = {"imgsz": self.recipe.imgsz, "prune": 0.0,
                  "precision": next(p for p in target.precisions if p != "int8")}
        trials = [Trial(kind, trial_recipe(self.recipe, float_, {}), candidate=tuple(float_.items()))
                  for kind in ("reference", "ultralytics")
                  if kind == "reference" or (self.config.ultralytics and has_references(target.name))]
        done = self.trials(trials, "references")
        if not done or done[0].raw["kind"] != "reference":
            raise UserError("the search's budget ended before its reference was measured; give a larger --budget")
        return done[0]

    def trials(self, trials: list[Trial], what: str,
               wanted: Callable[[Trial], bool] = lambda trial: True) -> list[Result]:
        """The results of `trials`: read back where they ran before, else run while the budget lasts and while
        `wanted` (asked just before each starts, after every result so far) says it can still win."""
        state, root = self.state, str(self.out)
        results = [state.record(done) for t in trials if (done := finished(Job(t, root, self.trust))) is not None]
        queue = [t for t in trials if t.id not in state.results]

        def next_job() -> Job | None:
            while queue and state.more():
                if wanted(trial := queue.pop(0)):
                    return Job(trial, root, self.trust)
                state.say(f"skipped {_name(dict(trial.candidate))} at rung {trial.rung}: it can no longer win")
            return None

        with progress.task(what, total=len(trials), unit="trial", each=True) as task:
            task.advance(len(results))
            for raw in self.executor.run(next_job, self.config.workers, self.recipe.device, self.config.ray_address):
                state.ran += raw["kind"] == "candidate"  # the budget counts candidates, not the references
                result = state.record(raw)
                results.append(result)
                task.advance(**({"Ultralytics' exports": "measured"} if raw["kind"] == "ultralytics" else
                                {**result.candidate, "mAP50-95": round(result.map, 4),
                                 "p50 ms": round(result.latency, 1)}))
        return results

    def publish(self, reference: Result, goal: float, chosen: Result | None) -> dict[str, Any]:
        """Copy the chosen trial's published files (its artifact, and beside one with the frame inside its network)
        to the top of the search's folder, and write the search's report."""
        from edgecompress.pipeline.runner import copy_over
        from edgecompress.search.report import write

        config, state = self.config, self.state
        published = None
        if chosen:
            final = chosen.raw["final"]
            for name in [final[k] for k in ("artifact", "network") if k in final]:
                copy_over(self.out / chosen.raw["folder"] / name, self.out / name)
            published = final["artifact"]
        result = {"schema": SCHEMA, "recipe": self.recipe.to_dict(), "executor": type(self.executor).__name__.lower(),
                  "seconds": round(time.time() - state.started, 1), "trials_run": state.ran,
                  "goal": {"max_map_drop": config.max_map_drop, "max_latency_ms": config.max_latency_ms,
                           "map50_95": None if config.max_latency_ms else round(goal, 4)},
                  "reference": _summary(reference), "ultralytics": _ultralytics(state),
                  "trials": [_summary(r) for r in state.results.values() if r.raw["kind"] == "candidate"],
                  "chosen": chosen.id if chosen else None, "artifact": published, "stopped": state.stop,
                  "log": state.log}
        write(result, self.out)
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


def _can_win(result: Result, state: State, goal: float, config: SearchConfig) -> bool:
    """Whether fine-tuning the candidate of `result` could still beat the best so far: under a latency, always (its
    accuracy is what fine-tuning changes); within an accuracy budget, while it is faster."""
    best = _choose(state, goal, config)
    return bool(config.max_latency_ms) or best is None or result.latency < best.latency


def _contenders(results: list[Result], state: State, goal: float, config: SearchConfig, trained: int,
                keep: float = 1.0) -> list[Result]:
    """The candidates among `results` that fine-tuning (longer) could still make the winner: the pruned ones, and the
    unpruned ones below the `trained` image size (fine-tuning at the size deployed adapts the model to it)."""
    best = _choose(state, goal, config)
    open_: list[Result] = []
    for r in results:
        intact = r.candidate["prune"] == 0 and r.candidate["imgsz"] == trained
        if intact or r.finetune.get("stopped", "the ceiling").startswith(("recovered", "no new")):
            continue  # nothing to fine-tune, or fine-tuning ended for good
        if config.max_latency_ms:
            if r.latency <= config.max_latency_ms and (best is None or r is best or r.map <= best.map):
                open_.append(r)  # under the latency; more epochs may make it the most accurate
        elif r.map < goal and _can_win(r, state, goal, config):
            open_.append(r)  # faster than the best within budget, not within it yet
    open_.sort(key=lambda r: -r.map)
    kept = open_[:math.ceil(keep * len(open_))]
    if best:
        state.say(f"best so far: {_name(best.candidate)}, mAP50-95 {best.map:.4f}, p50 {best.latency:.1f} ms")
    if dropped := len(open_) - len(kept):
        state.say(f"successive halving: {dropped} of {len(open_)} candidates dropped (the lowest mAP50-95)")
    return kept


def _within(result: Result, goal: float, config: SearchConfig) -> float:
    """Fine-tuning's stop, in points below the unpruned model at the candidate's size: what the goal leaves once the
    export and precision loss measured at rung 0 is paid, negative where the goal lies above that model (0 under a
    latency goal: recover fully)."""
    if config.max_latency_ms:
        return 0.0
    conversion = result.torch_map - result.map
    return round(100 * (result.baseline_map - goal - conversion), 3)


def _smaller(state: State, goal: float, config: SearchConfig) -> tuple[int, ...]:
    """The next image size to try below those tried, where the default space's best lies at its edge: within an
    accuracy budget, while the fastest within it is at the smallest size tried; under a latency, while nothing is
    under it. () where the recipe lists its sizes, or the edge is not reached."""
    results = [r for r in state.results.values() if r.raw["kind"] == "candidate"]
    smallest, best = min(r.candidate["imgsz"] for r in results), _choose(state, goal, config)
    if config.imgsz or smallest - SIZE_STEP < MIN_SIZE:
        return ()
    if config.max_latency_ms:
        if best:
            return ()
        why = f"no candidate is under {config.max_latency_ms} ms"
    elif best and best.candidate["imgsz"] == smallest:
        why = f"the fastest within the goal is at the smallest size tried ({_name(best.candidate)})"
    else:
        return ()
    state.say(f"{why}: trying {smallest - SIZE_STEP} px too")
    return (smallest - SIZE_STEP,)


def _name(candidate: dict[str, Any]) -> str:
    pruned = f"-{candidate['prune']:.0%} FLOPs" if candidate["prune"] else "unpruned"
    return f"{candidate['imgsz']} px, {pruned}, {candidate['precision']}"


def _summary(result: Result) -> dict[str, Any]:
    final, network = result.final, result.network
    return {"id": result.id, "rung": result.raw["rung"], **result.candidate, **result.finetune,
            "map50_95": round(result.map, 4), "p50_ms": round(result.latency, 2),
            "alone_p50_ms": round(result.raw_latency, 2), "retimed": result.retimed is not None,
            "inference_p50_ms": network["benchmark"]["inference"]["p50_ms"], "gflops": network["gflops"],
            "parameters": network["parameters"], "file_mb": final["benchmark"]["file_mb"],
            "seconds": result.raw["seconds"], "reused": result.raw["reused"], "folder": result.raw["folder"]}


def _ultralytics_rows(state: State) -> list[dict[str, Any]]:
    """The stage rows of Ultralytics' exports (after the trial's baseline), where the search measured them."""
    return [s for r in state.results.values() if r.raw["kind"] == "ultralytics" for s in r.raw["stages"][1:]]


def _ultralytics(state: State) -> list[dict[str, Any]]:
    """Ultralytics' exports as reference points, timed taking turns with the finalists where they were."""
    retimed = state.ultralytics_retimed
    return [{"name": s["name"], "precision": s["precision"], "map50_95": s["accuracy"]["map50_95"],
             "p50_ms": retimed.get(s["name"], s["benchmark"]["end_to_end"]["p50_ms"]),
             "alone_p50_ms": s["benchmark"]["end_to_end"]["p50_ms"], "retimed": s["name"] in retimed,
             "inference_p50_ms": s["benchmark"]["inference"]["p50_ms"]} for s in _ultralytics_rows(state)]
