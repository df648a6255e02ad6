"""A search's trials and what runs them. A trial is one pipeline run (a recipe, or a reference plan) into its own
folder under the search's, on the search's one stage cache: trials that share a prefix (the same pruned model
fine-tuned longer, exported at another precision) share its stages, and a finished trial (its `trial.json`) is
read back instead of run again. Executors (a registry): `sequential` in this process, `ray` on a local or remote
Ray, one trial per task."""

from __future__ import annotations

import contextvars
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgecompress.config import Registry
from edgecompress.files import digest, write_atomic

if TYPE_CHECKING:
    from edgecompress.pipeline.stage import Stage
    from edgecompress.recipe import Recipe

TRIAL = "trial.json"


@dataclass(frozen=True)
class Trial:
    """One run of a search: `kind` candidate, reference (the unpruned model in the target's float precision at the
    trained size) or ultralytics (Ultralytics' own exports at the trained size); `rung` 0 is measured without
    fine-tuning; `candidate` holds imgsz, prune and precision. `warm`: the finetune sections of the rungs below,
    whose fine-tuning runs first (reused from their trials' stages), so this rung's continues from its model."""

    kind: str
    recipe: dict[str, Any]
    rung: int = 0
    candidate: tuple[tuple[str, Any], ...] = ()
    warm: tuple[dict[str, Any], ...] = ()

    @property
    def id(self) -> str:
        return digest({"kind": self.kind, "recipe": self.recipe, **({"warm": self.warm} if self.warm else {})})[:12]

    @property
    def finetunes(self) -> list[dict[str, Any]]:
        """The finetune section of every round this trial runs, the rungs below first (none at rung 0)."""
        return [*self.warm, self.recipe["finetune"]] if self.rung else []

    def plan(self, recipe: Recipe) -> list[Stage]:
        """The target's plan, or Ultralytics' exports; a rung above the first fine-tunes in one round per rung."""
        from edgecompress.pipeline.stages import Finetune
        from edgecompress.search.references import ultralytics_plan
        from edgecompress.targets import get_target
        from edgecompress.yolo.config import FinetuneConfig

        if self.kind == "ultralytics":
            return ultralytics_plan(recipe)
        stages = get_target(recipe.target).plan(recipe)
        if not self.warm:
            return stages
        at = next(i for i, s in enumerate(stages) if isinstance(s, Finetune))
        rounds = [Finetune(FinetuneConfig(**section), n) for n, section in enumerate(self.finetunes, 1)]
        return [*stages[:at], *rounds, *stages[at + 1:]]


@dataclass(frozen=True)
class Job:
    """What a worker needs to run a trial: the trial, the search's folder, and whether to trust the checkpoint."""

    trial: Trial
    root: str
    trust: bool

    @property
    def folder(self) -> Path:
        return Path(self.root) / "trials" / self.trial.id


def finished(job: Job) -> dict[str, Any] | None:
    """The result of a trial that ran before (this search or an earlier, killed one), or None."""
    path = job.folder / TRIAL
    return {**json.loads(path.read_text()), "reused": True} if path.is_file() else None


def run_job(job: Job, threads: int) -> dict[str, Any]:
    """Run one trial on `threads` CPU threads (silently: its progress is not the search's) and record its result; in
    any process."""
    return contextvars.Context().run(_run, job, threads)


def _run(job: Job, threads: int) -> dict[str, Any]:
    from edgecompress.pipeline.runner import Runner
    from edgecompress.recipe import Recipe
    from edgecompress.yolo.patches import THREADS_ENV

    os.environ[THREADS_ENV] = str(threads)
    recipe = Recipe.from_dict(job.trial.recipe)
    start = time.perf_counter()
    report = Runner(recipe, job.folder, trust_checkpoint=job.trust, stages=Path(job.root) / "stages",
                    plan=job.trial.plan).run()
    result = {"id": job.trial.id, "kind": job.trial.kind, "rung": job.trial.rung,
              "candidate": dict(job.trial.candidate), "finetunes": job.trial.finetunes,
              "seconds": round(time.perf_counter() - start, 1),
              "folder": str(job.folder.relative_to(job.root)), "final": report["final"],
              "stages": [{k: s[k] for k in ("name", "runtime", "precision", "parameters", "gflops", "accuracy",
                                            "benchmark", "info")} for s in report["stages"]]}
    write_atomic(job.folder / TRIAL, json.dumps(result, indent=1, default=str))
    return {**result, "reused": False}


class Executor:
    """Runs the jobs `next_job()` hands out (None: no more, by the budget or because none can still win), yielding
    each result as it finishes; the search records it before asking for the next job."""

    def unusable(self) -> str | None:
        return None

    def run(self, next_job: Callable[[], Job | None], workers: int, device: str,
            address: str | None) -> Iterator[dict[str, Any]]:
        raise NotImplementedError

    def close(self) -> None:
        """Release what `run` started (once the search ends)."""


EXECUTORS: Registry[Executor] = Registry("search executor")


@EXECUTORS.register("sequential")
class Sequential(Executor):
    """One trial after another, in this process, on every core."""

    def run(self, next_job: Callable[[], Job | None], workers: int, device: str,
            address: str | None) -> Iterator[dict[str, Any]]:
        from edgecompress.yolo.patches import cpu_threads

        while job := next_job():
            yield run_job(job, cpu_threads())


@EXECUTORS.register("ray")
class Ray(Executor):
    """Trials as Ray tasks, `workers` at a time, each on its share of the CPUs: a local Ray started here, or the
    cluster at `address`. A trial on a GPU device takes one GPU (Ray sets CUDA_VISIBLE_DEVICES, so the trial's
    device is index 0)."""

    INSTALL = "pip install 'edgecompress[ray]'"

    def unusable(self) -> str | None:
        try:
            import ray  # noqa: F401
        except ImportError:
            return f"Ray is not installed ({self.INSTALL}); trials run one after another in this process"
        return None

    def run(self, next_job: Callable[[], Job | None], workers: int, device: str,
            address: str | None) -> Iterator[dict[str, Any]]:
        import ray

        if not ray.is_initialized():  # once per search: its rungs reuse it
            env = {"YOLO_OFFLINE": os.environ.get("YOLO_OFFLINE", "1")}
            quiet = {"log_to_driver": False, "logging_level": logging.ERROR, "runtime_env": {"env_vars": env}}
            if address:
                ray.init(address=address, **quiet)
            else:  # the trials pass small dicts: a small object store, no dashboard
                ray.init(num_cpus=os.cpu_count(), object_store_memory=128 * 2**20, include_dashboard=False, **quiet)
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)) // workers)
        task = ray.remote(num_cpus=cpus, num_gpus=0 if device in ("cpu", "mps") else 1, max_retries=0)(run_job)
        pending: list[Any] = []
        while True:
            while len(pending) < workers and (job := next_job()):
                pending.append(task.remote(job, cpus))
            if not pending:
                return
            done, pending = ray.wait(pending, num_returns=1)
            yield ray.get(done[0])

    def close(self) -> None:
        import ray

        ray.shutdown()


def executor(name: str) -> tuple[Executor, str | None]:
    """The executor a search asked for (auto: Ray where it is installed), and a note when it falls back."""
    if name != "auto":
        chosen = EXECUTORS[name]
        if reason := chosen.unusable():
            from edgecompress.errors import UserError

            raise UserError(f"search.executor {name}: {reason.split(';')[0]}")
        return chosen, None
    reason = EXECUTORS["ray"].unusable()
    return (EXECUTORS["sequential"], reason) if reason else (EXECUTORS["ray"], None)
