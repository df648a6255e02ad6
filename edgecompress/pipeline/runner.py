"""The runner: stages in order, each cached by a hash of its inputs and config, then the report and the gates.

load -> [prune -> fine-tune] -> export (FP32 ONNX) -> [OpenVINO FP32] -> [PTQ or QAT] -> [TensorRT bundle]
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
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from edgecompress.bench import BENCH_IMAGES
from edgecompress.errors import UserError
from edgecompress.pipeline import report as report_mod
from edgecompress.pipeline import dataset, yolo
from edgecompress.pipeline.cache import DONE, Cache, Entry, file_digest, write_atomic
from edgecompress.pipeline.config import to_dict
from edgecompress.pipeline.finetune import finetune
from edgecompress.pipeline.prune import prune
from edgecompress.pipeline.quantize import qat, quantize
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
    """One stage's model file, how to run it, and the key that names its content."""

    stage: str
    path: Path
    runtime: str
    precision: str
    key: str
    size: dict[str, Any]  # parameters and GFLOPs of the network it holds
    info: dict[str, Any] = field(default_factory=dict)  # what the stage that made it reports


class OutputFolder:
    """The run's output folder: checked writable and ours, locked against a second concurrent run.

    The lock is an flock, which the OS releases when its holder dies, so a killed run's lock is stale at once
    and the next run takes it over; the pid in the file only serves the messages.
    """

    def __init__(self, path: Path, model: Path, log: Log) -> None:
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
        if self.target.runtime == "tensorrt":
            if not recipe.quant.enabled:
                raise UserError(f"target '{self.target.name}' engines are built from the INT8 QDQ ONNX; "
                                f"use --quant ptq (FP16-only engines are not available yet)")
        else:  # a Jetson bundle is prepared anywhere; its engine is built where TensorRT runs
            RUNTIMES[self.target.runtime].check()

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
        recipe, target = self.recipe, self.target
        self.data = data
        self.data_key = dataset.dataset_fingerprint(data)
        key = file_digest(checkpoint)
        described = self._step("describe", {"model": key, "imgsz": recipe.imgsz},
                               lambda _: yolo.describe(model, recipe.imgsz))
        chain = [Artifact("baseline", checkpoint, "torch", "fp32", key, described.info)]
        if recipe.prune.enabled:
            # channel counts that are not a multiple of the target's vector width buy it nothing
            pruning = replace(recipe.prune, round_to=max(recipe.prune.round_to, target.channel_multiple))
            chain.append(self._train_step("prune", chain[-1], to_dict(pruning),
                                          lambda m, folder: prune(m, pruning, str(data["yaml_file"]),
                                                                  recipe.imgsz, recipe.device, folder)))
        if recipe.prune.enabled and recipe.finetune.epochs:  # fine-tuning recovers what pruning lost
            chain.append(self._train_step("finetune", chain[-1], to_dict(recipe.finetune),
                                          lambda m, folder: finetune(m, recipe.finetune, str(data["yaml_file"]),
                                                                     recipe.imgsz, recipe.device, folder, model)))
        source = chain[-1]
        exported = self._step("export", {"parent": source.key, "imgsz": recipe.imgsz},
                              lambda folder: self._export(source, folder))
        fp32 = self._artifact("onnx-fp32", exported, "onnxruntime", "fp32", source.size)
        chain.append(fp32)
        if target.runtime == "openvino":
            converted = self._step("openvino-fp32", {"parent": exported.key},
                                   lambda folder: self._convert(fp32.path, exported.folder, folder))
            chain.append(self._artifact("openvino-fp32", converted, "openvino", "fp32", source.size))
        measured: dict[str, dict[str, Any]] = {}
        if recipe.quant.enabled:
            budget = recipe.quant.max_map_drop
            parts = {"quant": to_dict(recipe.quant), "target": target.name, "data": self.data_key,
                     "imgsz": recipe.imgsz}
            if recipe.quant.mode == "ptq":
                # held to the FP32 model in the target's runtime (the stage just before), measured once for both
                reference = chain[-1]
                measured[reference.stage] = self._measure(reference)
                baseline = measured[reference.stage]["accuracy"]["map50_95"]
                quantized = self._step(f"quantize-{target.name}",
                                       {**parts, "parent": exported.key, "eval": to_dict(recipe.eval)},
                                       lambda folder: self._quantize(fp32.path, folder, baseline))
            else:  # QAT fine-tunes the PyTorch model, then quantizes it the same way
                quantized = self._step(f"qat-{target.name}", {**parts, "parent": source.key,
                                                              "device": recipe.device},
                                       lambda folder: self._qat(source, folder))
            # a Jetson's QDQ ONNX is measured in onnxruntime on the CPU: the accuracy proxy for its engine
            runtime = "openvino" if target.runtime == "openvino" else "onnxruntime"
            name = "tensorrt-qdq-int8" if target.runtime == "tensorrt" else f"{runtime}-int8"
            chain.append(self._artifact(name, quantized, runtime, "int8", source.size))
            if "drop_points" in quantized.info:  # PTQ measures itself against FP32 for its fallback
                self.log(f"[quantize] INT8 mAP50-95 {-quantized.info['drop_points']:+.2f} points against FP32 "
                         f"(budget -{budget}); layers kept in float: {len(quantized.info['float_layers'])}")
        bundle = self._jetson(chain[-1], exported.folder) if target.runtime == "tensorrt" else None
        if bundle and bundle.info["engine"]:
            chain.append(Artifact("tensorrt-int8", bundle.folder / bundle.info["engine"], "tensorrt", "int8",
                                  bundle.key, source.size, bundle.info))
        stages = [measured.get(artifact.stage) or self._measure(artifact) for artifact in chain]
        if bundle and not bundle.info["engine"]:
            final = self._publish(bundle.folder, f"{checkpoint.stem}-{target.name}-int8-tensorrt-bundle")
        else:
            last = chain[-1]
            final = self._publish(last.path, RUNTIMES[last.runtime].artifact_path(
                self.out, f"{checkpoint.stem}-{target.name}-{last.precision}").name)
        notes = [bundle.info["reason"]] if bundle and not bundle.info["engine"] else []
        result = report_mod.build(recipe, target, checkpoint, key, data, described.info, stages, final, notes)
        report_mod.write(result, self.out)
        return result

    def _artifact(self, stage: str, entry: Entry, runtime: str, precision: str, size: dict[str, Any]) -> Artifact:
        return Artifact(stage, entry.folder / entry.info["artifact"], runtime, precision, entry.key, size,
                        entry.info)

    def _train_step(self, name: str, parent: Artifact, config: dict[str, Any],
                    train: Callable[[Any, Path], tuple[Any, dict[str, Any]]]) -> Artifact:
        """A PyTorch stage (prune, fine-tune): parent checkpoint in, checkpoint out."""
        recipe = self.recipe

        def build(folder: Path) -> dict[str, Any]:
            model, info = train(yolo.load_model(parent.path, self.trust), folder / "scratch")
            yolo.save_checkpoint(model, folder / f"{name}.pt", half=False)
            shutil.rmtree(folder / "scratch", ignore_errors=True)  # trainer scratch: checkpoints of every epoch
            return {"artifact": f"{name}.pt", "size": yolo.describe(model, recipe.imgsz), **info}

        entry = self._step(name, {"parent": parent.key, "config": config, "data": self.data_key,
                                  "imgsz": recipe.imgsz, "device": recipe.device}, build)
        return self._artifact(name, entry, "torch", "fp32", entry.info["size"])

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

    def _export(self, source: Artifact, folder: Path) -> dict[str, Any]:
        model = yolo.load_model(source.path, self.trust)
        onnx_path, _ = yolo.export_onnx(model, self.recipe.imgsz, folder, "model")
        return {"artifact": onnx_path.name}

    def _quantize(self, onnx_fp32: Path, folder: Path, baseline: float) -> dict[str, Any]:
        e = self.recipe.eval

        def evaluate(candidate: Path) -> float:
            return yolo.evaluate(candidate, self.data["yaml_file"], self.recipe.imgsz, e.split, e.conf, e.iou,
                                 self.recipe.device, folder / "eval")["map50_95"]

        artifact, info = quantize(onnx_fp32, self.recipe.quant, self.target, str(self.data["yaml_file"]),
                                  self.recipe.imgsz, folder, evaluate, baseline)
        shutil.rmtree(folder / "eval", ignore_errors=True)
        return {"artifact": artifact.name, **info}

    def _qat(self, source: Artifact, folder: Path) -> dict[str, Any]:
        recipe = self.recipe
        artifact, info = qat(yolo.load_model(source.path, self.trust), recipe.quant, self.target,
                             str(self.data["yaml_file"]), recipe.imgsz, recipe.device, folder / "scratch")
        dest = folder / artifact.name
        shutil.move(str(artifact), dest)
        shutil.rmtree(folder / "scratch", ignore_errors=True)  # trainer scratch: checkpoints of every epoch
        return {"artifact": dest.name, **info}

    def _jetson(self, qdq: Artifact, export_folder: Path) -> Entry:
        """The bundle a Jetson needs (QDQ ONNX, metadata, trtexec.sh) and its engines where TensorRT runs."""
        from edgecompress.targets.tensorrt import prepare_jetson, unusable_reason

        metadata = yaml.safe_load((export_folder / "metadata.yaml").read_text())
        entry = self._step("tensorrt", {"parent": qdq.key, "target": self.target.name,
                                        "tensorrt_usable": unusable_reason() is None},
                           lambda folder: prepare_jetson(qdq.path, metadata, self.target, folder))
        if not entry.info["engine"]:
            self.log(f"[tensorrt] {entry.info['reason']}")
        return entry

    def _convert(self, onnx_path: Path, export_folder: Path, folder: Path) -> dict[str, Any]:
        runtime = RUNTIMES[self.target.runtime]
        dest = runtime.artifact_path(folder, "model")
        convert_onnx(runtime.name, onnx_path, dest, export_folder / "metadata.yaml")
        return {"artifact": dest.name}

    def _measure(self, artifact: Artifact) -> dict[str, Any]:
        """Accuracy in the artifact's own runtime, and its latency and memory, each cached on its own."""
        recipe = self.recipe
        evaluated = self._step(f"evaluate-{artifact.stage}",
                               {"artifact": artifact.key, "data": self.data_key, "imgsz": recipe.imgsz,
                                "eval": to_dict(recipe.eval), "device": recipe.device},
                               lambda folder: self._evaluate(artifact, folder))
        benched = self._step(f"bench-{artifact.stage}",
                             {"artifact": artifact.key, "imgsz": recipe.imgsz, "bench": to_dict(recipe.bench),
                              "host": _host_key()},
                             lambda folder: self._bench(artifact, folder))
        return {"name": artifact.stage, "artifact": str(artifact.path), "runtime": artifact.runtime,
                "precision": artifact.precision, "parameters": artifact.size["parameters"],
                "gflops": artifact.size["gflops"], "accuracy": evaluated.info, "benchmark": benched.info,
                "info": {k: v for k, v in artifact.info.items() if k not in ("artifact", "size")},
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

    def _publish(self, path: Path, name: str) -> Path:
        """Copy the final artifact to the top of the output folder, atomically, under `name`."""
        dest = self.out / name
        tmp = dest.with_name(f".tmp-{dest.name}")
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
        if path.is_dir():
            shutil.copytree(path, tmp, ignore=shutil.ignore_patterns(DONE))
            shutil.rmtree(dest, ignore_errors=True)
        else:
            shutil.copyfile(path, tmp)
        os.replace(tmp, dest)
        return dest


def _host_key() -> dict[str, Any]:
    """Latency is only reusable on the same kind of machine."""
    from edgecompress.bench import host_info

    info = host_info()
    return {"cpu": info["cpu"], "cores": info["cores"]}
