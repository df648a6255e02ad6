"""The runner: stages in order, each cached by a hash of its inputs and config, then the report and the gates.

load -> [prune] -> [fine-tune] -> export (FP32 ONNX) -> [quantize] -> convert (target runtime)
     -> evaluate + benchmark every artifact -> report
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from edgecompress.bench import BENCH_IMAGES
from edgecompress.errors import NotAvailableYet, UserError
from edgecompress.pipeline import report as report_mod
from edgecompress.pipeline import dataset, yolo
from edgecompress.pipeline.cache import DONE, Cache, Entry, file_digest, write_atomic
from edgecompress.pipeline.config import to_dict
from edgecompress.pipeline.recipe import Recipe
from edgecompress.targets import Target, get_target
from edgecompress.targets.runtimes import RUNTIMES, convert_onnx

MARKER = ".edgecompress-run.json"
LOCK = ".edgecompress.lock"

Log = Callable[[str], None]


def demo_paths() -> tuple[Path, Path]:
    """The embedded demo's checkpoint and dataset YAML, wherever the package is installed."""
    root = Path(str(resources.files("edgecompress") / "demo"))
    return root / "yolov8n-raccoon.pt", root / "raccoon" / "data.yaml"


@dataclass(frozen=True)
class Artifact:
    """One stage's model file and how to run it."""

    stage: str
    entry: Entry | None  # None for the user's own checkpoint, which is read in place
    path: Path
    runtime: str
    precision: str


class OutputFolder:
    """The run's output folder: checked writable and ours, locked against a second concurrent run.

    The lock is an flock, which the OS releases when its holder dies, so a killed run's lock is stale at once
    and the next run takes it over; the pid in the file only serves the messages.
    """

    def __init__(self, path: Path, model: Path, log: Log) -> None:
        self.path = path
        try:
            path.mkdir(parents=True, exist_ok=True)
            probe = path / f".write-test-{os.getpid()}"
            probe.touch()
            probe.unlink()
        except OSError as e:
            raise UserError(f"output folder {path} is not writable ({e.strerror}); choose another with --out") from None
        marker = path / MARKER
        if marker.is_file():
            owner = json.loads(marker.read_text()).get("model")
            if owner != str(model):
                raise UserError(f"output folder {path} holds the run of another checkpoint ({owner}); "
                                f"choose a new --out or delete that folder")
        elif any(p.name != LOCK for p in path.iterdir()):
            raise UserError(f"output folder {path} already holds files that are not an edgecompress run; "
                            f"choose an empty or new folder with --out")
        self._lock = open(path / LOCK, "a+")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released by the OS if this process dies
        except BlockingIOError:
            self._lock.seek(0)
            raise UserError(f"another compress run (pid {self._lock.read().strip() or '?'}) is using {path}; "
                            f"wait for it to finish or choose another --out") from None
        self._lock.seek(0)
        if previous := self._lock.read().strip():
            log(f"took over the lock left by an ended run (pid {previous})")
        self._lock.seek(0)
        self._lock.truncate()
        self._lock.write(str(os.getpid()))
        self._lock.flush()
        write_atomic(marker, json.dumps({"model": str(model)}))

    def release(self) -> None:
        fcntl.flock(self._lock, fcntl.LOCK_UN)
        self._lock.close()


class Runner:
    """Runs one recipe into one output folder."""

    def __init__(self, recipe: Recipe, out: Path, log: Log = print, trust_checkpoint: bool = False) -> None:
        if recipe.is_demo:
            model, data = demo_paths()
            recipe = recipe.with_overrides(model=str(model), data=str(data))
        self.recipe = recipe
        self.out = Path(out).resolve()
        self.log = log
        self.trust = trust_checkpoint
        self.manifest: list[dict[str, Any]] = []
        self.target: Target = get_target(recipe.target)
        RUNTIMES[self.target.runtime].check()
        if recipe.prune.enabled or recipe.finetune.epochs:
            raise NotAvailableYet("pruning and fine-tuning are not available yet in this release; "
                                  "drop --prune / the recipe's prune and finetune sections")
        if recipe.quant.enabled:
            raise NotAvailableYet(f"--quant {recipe.quant.mode} is not available yet in this release; "
                                  f"use --quant none (FP32)")

    def run(self) -> dict[str, Any]:
        """Run every stage (reusing finished ones), write the report, and return it."""
        checkpoint = Path(self.recipe.model).resolve()
        model = yolo.load_model(checkpoint, self.trust)
        stride = int(model.stride.max())
        if self.recipe.imgsz % stride:
            raise UserError(f"imgsz {self.recipe.imgsz} is not a multiple of the model's stride {stride}; "
                            f"try {max(stride, round(self.recipe.imgsz / stride) * stride)}")
        data = dataset.check_dataset(Path(self.recipe.data).resolve(), len(model.names), self.recipe.eval.split)
        folder = OutputFolder(self.out, checkpoint, self.log)
        try:
            self.cache = Cache(self.out / "stages")
            if stale := self.cache.sweep():
                self.log(f"removed {len(stale)} unfinished stage folder(s) left by an interrupted run")
            return self._run(checkpoint, model, data)
        finally:
            folder.release()

    def _run(self, checkpoint: Path, model: Any, data: dict[str, Any]) -> dict[str, Any]:
        recipe = self.recipe
        self.data = data
        self.data_key = dataset.dataset_fingerprint(data)
        baseline = Artifact("baseline", None, checkpoint, "torch", "fp32")
        baseline_key = file_digest(checkpoint)
        described = self._step("describe", {"model": baseline_key, "imgsz": recipe.imgsz},
                               lambda _: yolo.describe(model, recipe.imgsz))
        chain: list[tuple[Artifact, str]] = [(baseline, baseline_key)]
        exported = self._step("export", {"parent": baseline_key, "imgsz": recipe.imgsz},
                              lambda folder: self._export(model, folder))
        onnx = Artifact("onnx-fp32", exported, exported.folder / exported.info["artifact"], "onnxruntime", "fp32")
        chain.append((onnx, exported.key))
        if self.target.runtime != "onnxruntime":
            converted = self._step(f"{self.target.runtime}-fp32", {"parent": exported.key,
                                                                  "runtime": self.target.runtime},
                                   lambda folder: self._convert(onnx.path, exported.folder, folder))
            path = converted.folder / converted.info["artifact"]
            chain.append((Artifact(f"{self.target.runtime}-fp32", converted, path, self.target.runtime, "fp32"),
                          converted.key))
        stages = [self._measure(artifact, key, described.info) for artifact, key in chain]
        final = self._publish(chain[-1][0], checkpoint.stem)
        result = report_mod.build(recipe, self.target, checkpoint, baseline_key, data, described.info, stages, final)
        report_mod.write(result, self.out)
        return result

    def _step(self, name: str, parts: dict[str, Any], build: Callable[[Path], dict[str, Any]]) -> Entry:
        self.log(f"[{name}] ...")
        entry = self.cache.stage(name, parts, build)
        self.manifest.append({"stage": name, "key": entry.key, "folder": str(entry.folder.relative_to(self.out)),
                              "files": sorted(p.name for p in entry.folder.iterdir() if p.name != DONE),
                              "reused": entry.reused})
        write_atomic(self.out / "manifest.json", json.dumps({"stages": self.manifest}, indent=2))
        how = "reused" if entry.reused else f"done in {entry.seconds:.1f} s"
        self.log(f"[{name}] {how} ({entry.folder.relative_to(self.out)})")
        return entry

    def _export(self, model: Any, folder: Path) -> dict[str, Any]:
        onnx_path, _ = yolo.export_onnx(model, self.recipe.imgsz, folder, "model")
        return {"artifact": onnx_path.name}

    def _convert(self, onnx_path: Path, export_folder: Path, folder: Path) -> dict[str, Any]:
        runtime = RUNTIMES[self.target.runtime]
        dest = runtime.artifact_path(folder, "model")
        convert_onnx(runtime.name, onnx_path, dest, export_folder / "metadata.yaml")
        return {"artifact": dest.name}

    def _measure(self, artifact: Artifact, key: str, described: dict[str, Any]) -> dict[str, Any]:
        """Accuracy in the artifact's own runtime, and its latency and memory, each cached on its own."""
        recipe = self.recipe
        evaluated = self._step(f"evaluate-{artifact.stage}",
                               {"artifact": key, "data": self.data_key, "imgsz": recipe.imgsz,
                                "eval": to_dict(recipe.eval)},
                               lambda folder: self._evaluate(artifact, folder))
        benched = self._step(f"bench-{artifact.stage}",
                             {"artifact": key, "imgsz": recipe.imgsz, "bench": to_dict(recipe.bench),
                              "host": _host_key()},
                             lambda folder: self._bench(artifact, folder))
        return {"name": artifact.stage, "artifact": str(artifact.path), "runtime": artifact.runtime,
                "precision": artifact.precision, "parameters": described["parameters"],
                "gflops": described["gflops"], "accuracy": evaluated.info, "benchmark": benched.info,
                "reused": evaluated.reused and benched.reused}

    def _evaluate(self, artifact: Artifact, folder: Path) -> dict[str, Any]:
        e = self.recipe.eval
        # A checkpoint goes in loaded by our safe loader: given a path, Ultralytics would unpickle it fully.
        weights = yolo.load_model(artifact.path, self.trust) if artifact.runtime == "torch" else artifact.path
        metrics = yolo.evaluate(weights, self.data["yaml_file"], self.recipe.imgsz, e.split, e.conf, e.iou,
                                self.recipe.device, folder)
        shutil.rmtree(folder / "val", ignore_errors=True)  # Ultralytics' empty save_dir (plots are off)
        return metrics

    def _bench(self, artifact: Artifact, folder: Path) -> dict[str, Any]:
        """Time the artifact in a fresh process, so its peak memory is that of one runtime session."""
        images = dataset.split_images(self.data, self.recipe.eval.split)[:BENCH_IMAGES]
        spec = {"artifact": str(artifact.path), "runtime": artifact.runtime, "imgsz": self.recipe.imgsz,
                "config": to_dict(self.recipe.bench), "images": [str(p) for p in images]}
        (folder / "spec.json").write_text(json.dumps(spec, indent=2))
        proc = subprocess.run([sys.executable, "-m", "edgecompress.bench", str(folder / "spec.json"),
                               str(folder / "bench.json")], capture_output=True, text=True,
                              env={**os.environ, yolo.TRUST_ENV: "1" if self.trust else "0"})
        if proc.returncode:
            raise RuntimeError(f"benchmark of {artifact.path} failed:\n{proc.stderr[-3000:]}")
        return json.loads((folder / "bench.json").read_text())

    def _publish(self, artifact: Artifact, stem: str) -> Path:
        """Copy the final artifact to the top of the output folder, atomically, named after the checkpoint."""
        runtime = RUNTIMES[artifact.runtime]
        dest = runtime.artifact_path(self.out, f"{stem}-{self.recipe.target}-{artifact.precision}")
        tmp = dest.with_name(f".tmp-{dest.name}")
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
        if artifact.path.is_dir():
            shutil.copytree(artifact.path, tmp)
            shutil.rmtree(dest, ignore_errors=True)
        else:
            shutil.copyfile(artifact.path, tmp)
        os.replace(tmp, dest)
        return dest


def _host_key() -> dict[str, Any]:
    """Latency is only reusable on the same kind of machine."""
    from edgecompress.bench import host_info

    info = host_info()
    return {"cpu": info["cpu"], "cores": info["cores"]}
