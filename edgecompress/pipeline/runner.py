"""The runner: ask the target for its plan for this recipe, run each stage through the cache, measure every model
it makes, then write the report and judge the gates."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import IO, Any

from edgecompress import logs, progress
from edgecompress.config import to_dict
from edgecompress.errors import UserError
from edgecompress.files import file_digest, write_atomic
from edgecompress.pipeline import machine
from edgecompress.pipeline import report as report_mod
from edgecompress.pipeline.cache import DONE, Cache, Entry, OutputFolder
from edgecompress.pipeline.stage import Artifact, Stage
from edgecompress.pipeline.stages import Bench, Evaluate
from edgecompress.recipe import Recipe
from edgecompress.targets import Target, get_target

def demo_paths() -> tuple[Path, Path]:
    """The embedded demo's checkpoint and dataset YAML, wherever the package is installed."""
    root = Path(str(resources.files("edgecompress") / "demo"))
    return root / "yolov8n-raccoon.pt", root / "raccoon" / "data.yaml"


@dataclass
class Run:
    """What the stages of one run share: the recipe, the target, the user's model and dataset loaded once, the one
    evaluation protocol, and the measurements made so far. `fact(name)` is what a stage's key depends on."""

    recipe: Recipe
    target: Target
    checkpoint: Path
    model: Any  # the user's checkpoint, loaded by the safe loader
    dataset: Any  # edgecompress.yolo.data.Dataset
    evaluate: Any  # edgecompress.yolo.model.Evaluator
    trust: bool
    measurements: dict[str, dict[str, Any]] = field(default_factory=dict)  # by artifact key: the report's rows

    def fact(self, name: str) -> Any:
        from edgecompress.device.host import host_key
        from edgecompress.device.runtime import RUNTIMES

        recipe = self.recipe
        facts: dict[str, Callable[[], Any]] = {
            "checkpoint": lambda: {"path": str(self.checkpoint), "sha256": self.sha256},
            "data": lambda: self.dataset.fingerprint,
            "imgsz": lambda: recipe.imgsz,
            "device": lambda: recipe.device,
            "eval": lambda: to_dict(recipe.eval),
            "bench": lambda: to_dict(recipe.bench),
            "frame": lambda: to_dict(recipe.frame.thresholds),  # the deployed NMS, timed on the host too
            "host": host_key,  # latency is only reusable on the same kind of machine
            # whether the target's own runtime runs here (a bundle builds its engine where it does)
            "runtime": lambda: RUNTIMES[self.target.runtime].unusable() is None,
        }
        return facts[name]()

    @property
    def sha256(self) -> str:
        if "sha256" not in self.__dict__:
            self.__dict__["sha256"] = file_digest(self.checkpoint)
        return self.__dict__["sha256"]

    def measured(self, artifact: Artifact) -> dict[str, Any]:
        """The report row of an artifact measured earlier in this run."""
        return self.measurements[artifact.key]


class Runner:
    """Runs one recipe into one output folder. Progress goes to edgecompress.progress; what third-party libraries
    print goes to OUT/compress.log (and to `echo` too, when given)."""

    def __init__(self, recipe: Recipe, out: Path, trust_checkpoint: bool = False, echo: IO[str] | None = None,
                 stages: Path | None = None, plan: Callable[[Recipe], list[Stage]] | None = None) -> None:
        """`stages`: the stage cache (default OUT/stages), which a search's trials share; `plan`: the stages to run
        instead of the target's plan (a search's reference exports)."""
        if recipe.is_demo:
            model, data = demo_paths()
            recipe = recipe.with_overrides(model=str(model), data=str(data))
        self.target = get_target(recipe.target)
        self.recipe = self.target.preset(recipe)
        self.out = Path(out).resolve()
        self.echo = echo
        self.trust = trust_checkpoint
        self.manifest: list[dict[str, Any]] = []
        self.cache = Cache(stages or self.out / "stages")
        self.plan = plan or self.target.plan
        if reason := self.target.unusable():
            raise UserError(reason)

    def run(self) -> dict[str, Any]:
        """Run every stage of the target's plan (reusing finished ones), write the report, and return it."""
        with logs.captured(self.echo) as log:
            return self._checked(log)

    def _checked(self, log: logs.LogFile) -> dict[str, Any]:
        from edgecompress.yolo import patches
        from edgecompress.yolo.data import Dataset
        from edgecompress.yolo.model import Evaluator, load_model

        patches.apply()
        recipe = self.recipe
        checkpoint = Path(recipe.model).resolve()
        model = load_model(checkpoint, self.trust)
        stride = int(model.stride.max())
        if recipe.imgsz % stride:
            raise UserError(f"imgsz {recipe.imgsz} is not a multiple of the model's stride {stride}; "
                            f"try {max(stride, round(recipe.imgsz / stride) * stride)}")
        machine.check_device(recipe.device)
        dataset = Dataset.check(recipe.data, len(model.names), recipe.eval.split)
        machine.check_training_memory(recipe, model, dataset)
        evaluate = Evaluator(dataset, recipe.imgsz, recipe.eval.split, recipe.eval.conf, recipe.eval.iou,
                             recipe.device)
        run = Run(recipe, self.target, checkpoint, model, dataset, evaluate, self.trust)
        need = self._disk_need(run)
        if machine.free_space(self.out) < need / 2:  # clearly too small: the estimate is generous, not tight
            raise UserError(machine.space_message("too little free space", self.out,
                                                  machine.scratch_folders(self.out)[self.out], need))
        folder = OutputFolder(self.out, checkpoint)
        try:
            log.open(self.out / logs.LOG_FILE)
            if stale := self.cache.sweep():
                progress.note(f"removed {len(stale)} unfinished stage folder(s) left by an interrupted run")
            return self._run(run)
        except Exception as e:
            scratch = machine.scratch_folders(self.out)
            full = None if isinstance(e, UserError) else machine.full_folder(e, list(scratch))
            self.cache.sweep()  # the failed stage's folder: a rerun never trusts it, and its space is free again
            if full:
                raise UserError(machine.space_message("no space left", full, scratch[full],
                                                      self._disk_need(run))) from e
            raise
        finally:
            folder.release()

    def _disk_need(self, run: Run) -> int:
        """The disk space the stages still to run need: those from the first stage of the plan not finished yet."""
        parent: Artifact | None = None
        plan = self.plan(run.recipe)
        for i, stage in enumerate(plan):
            if (entry := self.cache.finished(stage.name, stage.key(parent, run))) is None:
                return machine.disk_need(plan[i:], run.model)
            parent = stage.output(parent, entry) or parent
        return machine.disk_need([], run.model)  # only the published copy

    def _run(self, run: Run) -> dict[str, Any]:
        parent: Artifact | None = None
        chain: list[Artifact] = []
        stages: list[dict[str, Any]] = []
        for stage in self.plan(run.recipe):
            entry = self._step(stage, parent, run)
            artifact = stage.output(parent, entry)
            if artifact is not None:
                stages.append(self._measure(artifact, run))
                chain.append(artifact)
                parent = artifact
        published = self._publish(stage, entry, parent, run)
        notes = [entry.info["reason"]] if "reason" in entry.info else []
        bundle = entry.info if stage.publishes_folder else None
        result = report_mod.build(run.recipe, self.target, run.checkpoint, run.sha256, run.dataset, chain[0].size,
                                  stages, published, notes, bundle)
        report_mod.write(result, self.out)
        return result

    def _step(self, stage: Stage, parent: Artifact | None, run: Run) -> Entry:
        with progress.stage(stage.name):
            progress.emit({"event": "stage"})
            entry = self.cache.stage(stage.name, stage.key(parent, run), lambda folder: stage.run(parent, folder, run))
            folder = os.path.relpath(entry.folder, self.out)  # a search's shared cache lies beside
            progress.emit({"event": "stage_end", "reused": entry.reused, "seconds": entry.seconds, "folder": folder,
                           "summary": stage.summary(entry.info)})
        self.manifest.append({"stage": stage.name, "key": entry.key, "folder": folder,
                              "files": sorted(p.name for p in entry.folder.iterdir() if p.name != DONE),
                              "reused": entry.reused})
        write_atomic(self.out / "manifest.json", json.dumps({"stages": self.manifest}, indent=2))
        return entry

    def _measure(self, artifact: Artifact, run: Run) -> dict[str, Any]:
        """Accuracy in the artifact's own runtime, and its latency and memory, each cached on its own."""
        evaluated = self._step(Evaluate(artifact), artifact, run)
        with self.cache.exclusive("bench"):  # a search's trials time one at a time
            benched = self._step(Bench(artifact), artifact, run)
        row = {"name": artifact.name, "artifact": str(artifact.path), "runtime": artifact.runtime,
               "precision": artifact.precision, "parameters": artifact.size["parameters"],
               "gflops": artifact.size["gflops"], "accuracy": evaluated.info, "benchmark": benched.info,
               "info": {k: v for k, v in artifact.info.items() if k not in ("artifact", "size")},
               "reused": evaluated.reused and benched.reused}
        run.measurements[artifact.key] = row
        return row

    def _publish(self, stage: Stage, entry: Entry, last: Artifact, run: Run) -> list[Path]:
        """Copy the run's deliverables to the top of the output folder, atomically: the last stage's folder where
        it bundles one (a Jetson's), else the last artifact, and beside an artifact with the frame's processing
        inside its network (what Ultralytics' YOLO() loads). The first is the final artifact."""
        from edgecompress.device.runtime import RUNTIMES

        stem = f"{run.checkpoint.stem}-{self.target.name}-{last.precision}"
        if stage.publishes_folder:
            return [copy_over(entry.folder, self.out / f"{stem}-{stage.name}-bundle")]
        runtime = RUNTIMES[last.runtime]  # named with the ending Ultralytics' AutoBackend reads
        if "frame" not in last.info:
            return [copy_over(last.path, runtime.artifact_path(self.out, stem))]
        suffix = run.recipe.frame.suffix
        return [copy_over(last.path, runtime.artifact_path(self.out, f"{stem}{suffix}")),
                copy_over(last.sources["network"], runtime.artifact_path(self.out, stem))]


def copy_over(path: Path, dest: Path) -> Path:
    """Copy a file or folder to `dest` through a temporary name, so that `dest` is never half written."""
    tmp = dest.with_name(f".tmp-{dest.name}")
    shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
    if path.is_dir():
        shutil.copytree(path, tmp, ignore=shutil.ignore_patterns(DONE))
        shutil.rmtree(dest, ignore_errors=True)
    else:
        shutil.copyfile(path, tmp)
    os.replace(tmp, dest)
    return dest
