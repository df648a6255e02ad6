"""The stages of the flow. Targets arrange them into plans (edgecompress.targets); the runner runs a plan.

load -> [prune -> fine-tune] -> export -> [convert] -> [PTQ | QAT | FP16] -> [frame] -> [bundle]; every model is
then evaluated and benchmarked (Evaluate, Bench). Heavy libraries are imported inside `run`, so a plan can be built
anywhere.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgecompress import progress
from edgecompress.pipeline.stage import Artifact, ModelStage, Stage

if TYPE_CHECKING:
    from edgecompress.pipeline.cache import Entry
    from edgecompress.pipeline.runner import Run
    from edgecompress.prune.config import PruneConfig
    from edgecompress.quantize.config import QuantConfig
    from edgecompress.recipe import Recipe
    from edgecompress.targets.base import Target
    from edgecompress.targets.frame import FrameConfig
    from edgecompress.targets.tensorrt import JetsonTarget
    from edgecompress.yolo.config import FinetuneConfig


class Load(ModelStage):
    """The user's checkpoint, as it is: the baseline every later stage is measured against."""

    name, output_name, runtime, precision, source_kind = "load", "baseline", "torch", "fp32", "torch"
    facts = ("checkpoint", "imgsz")

    def run(self, parent: Artifact | None, folder: Path, run: Run) -> dict[str, Any]:
        from edgecompress.yolo.model import describe

        return {"artifact": str(run.checkpoint), "size": describe(run.model, run.recipe.imgsz),
                "stored": run.model.stored_precision}


class _Train(ModelStage):
    """A PyTorch stage (prune, fine-tune): the parent checkpoint in, a checkpoint out."""

    runtime, precision, source_kind = "torch", "fp32", "torch"
    facts = ("data", "imgsz", "device", "eval")

    def run(self, parent: Artifact | None, folder: Path, run: Run) -> dict[str, Any]:
        from edgecompress.yolo.model import describe, load_model, save_checkpoint

        model, info = self.train(load_model(parent.path, run.trust), folder / "scratch", run)
        save_checkpoint(model, folder / f"{self.name}.pt", half=False)  # exact weights: later stages train on
        for plot in (folder / "scratch").glob("*.png"):  # the stage's pictures stay, beside its checkpoint
            shutil.move(plot, folder / plot.name)
        shutil.rmtree(folder / "scratch", ignore_errors=True)  # trainer scratch: checkpoints of every epoch
        return {"artifact": f"{self.name}.pt", "size": describe(model, run.recipe.imgsz), "stored": "fp32", **info}

    def train(self, model: Any, workdir: Path, run: Run) -> tuple[Any, dict[str, Any]]:
        raise NotImplementedError


class Prune(_Train):
    name = output_name = "prune"
    disk = 1.0  # the pruned checkpoint

    def __init__(self, config: PruneConfig, target_runtime: str) -> None:
        # `runtime` is what runs this stage's artifact (torch); a latency target is measured in the target's
        self.config, self.target_runtime = config, target_runtime
        if config.latency:  # measured in the target's runtime, on this kind of machine
            self.facts = (*_Train.facts, "host")

    def settings(self) -> Any:
        if self.config.latency:
            from edgecompress.config import to_dict

            return {**to_dict(self.config), "runtime": self.target_runtime}
        return self.config

    def train(self, model: Any, workdir: Path, run: Run) -> tuple[Any, dict[str, Any]]:
        from edgecompress.prune.pruner import prune

        return prune(model, self.config, run.evaluate, workdir, self.target_runtime)

    def summary(self, info: dict[str, Any]) -> str:
        flops = (f"{info['flops_removed']:.1%} of the FLOPs removed ({info['before']['gflops']:.2f} -> "
                 f"{info['after']['gflops']:.2f} GFLOPs)")
        if not (lat := info.get("latency")):
            return flops
        return (f"{flops}; {lat['removed']:.1%} of the {lat['runtime']} latency (target {lat['target_removed']:.0%}"
                + ("" if lat["reached"] else ", NOT reached") + ")" + (" by the FLOPs proxy" if "note" in lat else ""))


class Finetune(_Train):
    """Recovers what pruning lost, or adapts an unpruned model to the image size it is deployed at, against the user's
    unpruned model (schedule auto's and epochs auto's yardstick)."""

    name = output_name = "finetune"
    disk = 6.0  # the trainer's checkpoints (with optimizer state) of the last and best epoch, its start, the result

    def __init__(self, config: FinetuneConfig, round_: int = 1) -> None:
        self.config = config
        if round_ > 1:  # a later round continues from the model the one before it made (a search's next rung)
            self.name = self.output_name = f"finetune-{round_}"

    def settings(self) -> Any:
        return self.config

    def train(self, model: Any, workdir: Path, run: Run) -> tuple[Any, dict[str, Any]]:
        from edgecompress.yolo.train import finetune

        return finetune(model, self.config, run.evaluate, workdir, reference=run.model)

    def summary(self, info: dict[str, Any]) -> str:
        epochs = info.get("epochs_log") or []
        best = max((e.get("metrics/mAP50-95(B)", 0.0) for e in epochs), default=None)
        return (f"{len(epochs)} epochs ({info['schedule']['name']})"
                + (f", best val mAP50-95 {best:.4f}" if best is not None else "")
                + (f"; stopped: {info['stopped']}" if "stopped" in info else "")
                + (f"; kept the starting model: {info['kept_start']}" if "kept_start" in info else ""))


class Export(ModelStage):
    """The PyTorch model through Ultralytics' own exporter, as it is (a pruned module keeps its widths): ONNX for
    most targets, or a runtime's own format (ncnn). Batch 1, static shape."""

    facts = ("imgsz",)
    disk = 1.0

    def __init__(self, fmt: str, runtime: str, precision: str, dfl_last_axis: bool = False, **options: Any) -> None:
        self.fmt, self.runtime, self.precision, self.options = fmt, runtime, precision, options
        self.dfl_last_axis = dfl_last_axis  # the DFL's softmax on the last axis (dfl_softmax_last_axis), for ORT
        self.name = "export" if fmt == "onnx" else f"export-{fmt}-{precision}"
        self.output_name = f"{fmt}-{precision}"
        self.source_kind = "onnx" if fmt == "onnx" else None

    def settings(self) -> Any:
        return {"format": self.fmt, "precision": self.precision, **self.options,
                **({"dfl": "last-axis"} if self.dfl_last_axis else {})}

    def run(self, parent: Artifact | None, folder: Path, run: Run) -> dict[str, Any]:
        from edgecompress.calibration.graph import dfl_softmax_last_axis
        from edgecompress.yolo.model import export, load_model

        model = load_model(parent.sources["torch"], run.trust)
        path = export(model, self.fmt, run.recipe.imgsz, folder, "model", **self.options)
        return {"artifact": path.name, **({"dfl_last_axis": dfl_softmax_last_axis(path)} if self.dfl_last_axis
                                          else {})}


class Convert(ModelStage):
    """The FP32 ONNX converted to the target runtime's own format (OpenVINO IR)."""

    precision = "fp32"
    disk = 1.0

    def __init__(self, target: Target) -> None:
        self.target, self.runtime = target, target.runtime
        self.name = self.output_name = f"{target.runtime}-fp32"

    def settings(self) -> Any:
        return {"runtime": self.runtime}

    def run(self, parent: Artifact | None, folder: Path, run: Run) -> dict[str, Any]:
        return {"artifact": self.target.convert(parent.sources["onnx"], folder, "model").name}


class _Int8(ModelStage):
    """A stage that makes the target's INT8 artifact (named `<verb>-<target>`), by the recipe's quant section."""

    precision = "int8"
    facts = ("data", "imgsz", "device", "eval")
    verb: str

    def __init__(self, target: Target, config: QuantConfig) -> None:
        self.target, self.config = target, config
        self.name, self.output_name, self.runtime = f"{self.verb}-{target.name}", target.int8_name, target.int8_runtime

    def settings(self) -> Any:
        return self.config


class PTQ(_Int8):
    """Post-training INT8 for the target, held to its parent (the FP32 model in the target's runtime, measured
    already) by the accuracy-aware fallback."""

    verb = "quantize"
    disk = 1.5  # every quantizer's candidate and the fallback's steps

    def run(self, parent: Artifact | None, folder: Path, run: Run) -> dict[str, Any]:
        from edgecompress.quantize.ptq import quantize

        baseline = run.measured(parent)["accuracy"]["map50_95"]
        artifact, info = quantize(parent.sources["onnx"], parent.path, self.config, self.target, run.evaluate,
                                  folder, baseline)
        shutil.rmtree(folder / "eval", ignore_errors=True)
        return {"artifact": artifact.name, **info}

    def summary(self, info: dict[str, Any]) -> str:
        from edgecompress.pipeline.report import OVER_BUDGET

        if not info["within_budget"]:  # said loudly, on every run that shows it, reused or not
            progress.note(f"INT8 loses {info['drop_points']:.2f} mAP50-95 points against FP32, over the "
                          f"{self.config.max_map_drop}-point budget: {OVER_BUDGET}", "warning")
        return (f"{info['quantizer']} with {info['method'] or 'its own'} ranges: INT8 {-info['drop_points']:+.2f} "
                f"mAP50-95 points against FP32 (budget -{self.config.max_map_drop}), "
                f"{len(info['float_layers'])} layers kept in float")


class QAT(_Int8):
    """Fake-quantized fine-tuning of the PyTorch model, then the target's INT8 artifact from it."""

    verb = "qat"
    disk = 7.0  # fine-tuning's checkpoints, then the FP32 export and the INT8 artifact

    def run(self, parent: Artifact | None, folder: Path, run: Run) -> dict[str, Any]:
        from edgecompress.quantize.qat import qat
        from edgecompress.yolo.model import load_model

        model = load_model(parent.sources["torch"], run.trust)
        artifact, info = qat(model, self.config, self.target, run.evaluate, folder / "scratch")
        dest = folder / artifact.name
        shutil.move(str(artifact), dest)
        shutil.rmtree(folder / "scratch", ignore_errors=True)  # trainer scratch: checkpoints of every epoch
        return {"artifact": dest.name, **info}


class FP16(ModelStage):
    """The FP32 ONNX as a strongly typed FP16 graph for TensorRT (edgecompress.targets.typed): FP16 but the head's
    box arithmetic. Evaluated in onnxruntime on the CPU, the accuracy proxy for the engine, as the QDQ ONNX is."""

    precision, runtime, output_name = "fp16", "onnxruntime", "tensorrt-fp16"

    def __init__(self, target: JetsonTarget) -> None:
        self.target = target
        self.name = f"fp16-{target.name}"

    def run(self, parent: Artifact | None, folder: Path, run: Run) -> dict[str, Any]:
        import onnx

        from edgecompress.targets import typed
        from edgecompress.targets.tensorrt import fp16

        source = parent.sources["onnx"]
        model = fp16(source, folder / f"{source.stem}_fp16.onnx")
        proto = onnx.load(str(model))
        return {"artifact": model.name, "typing": typed.summary(proto, typed.fp32_nodes(proto))}


class Bundle(Stage):
    """What a device needs beside the artifact (a Jetson's strongly typed ONNX, metadata, trtexec.sh, DeepStream
    config), and the engine built from it where the runtime runs here. Its folder is what the run publishes."""

    facts = ("runtime",)
    publishes_folder = True
    disk = 1.5  # the QDQ ONNX and, where TensorRT runs, its engine

    def __init__(self, target: Target) -> None:
        self.target = target
        self.name = target.runtime

    def settings(self) -> Any:
        return {"target": self.target.name}

    def run(self, parent: Artifact | None, folder: Path, run: Run) -> dict[str, Any]:
        return self.target.bundle(parent, folder)

    def summary(self, info: dict[str, Any]) -> str:
        return f"engine {info['engine']}" if info.get("engine") else "bundle for the device (no engine built here)"

    def output(self, parent: Artifact | None, entry: Entry) -> Artifact | None:
        if not entry.info.get("engine"):
            return None
        return Artifact(f"{self.target.runtime}-{parent.precision}", entry.folder / entry.info["engine"],
                        self.target.runtime, parent.precision, entry.key, parent.size, entry.info, parent.sources)


class Frame(ModelStage):
    """The final network with the frame's processing inside (edgecompress.targets.frame, the recipe's `frame`:
    where the artifact starts, NMS or not): what a device feeds the frame to. The network stays beside it (the
    artifact's source "network"): what Ultralytics' YOLO() loads."""

    name = "frame"
    disk = 0.6  # its artifact and, while it is evaluated, its twin: 0.3 copies each at INT8 on the demo (1.0 at FP32)

    def __init__(self, target: Target, config: FrameConfig) -> None:
        self.target, self.config = target, config

    def settings(self) -> Any:
        return self.config

    def run(self, parent: Artifact | None, folder: Path, run: Run) -> dict[str, Any]:
        path = self.target.wrap(parent.path, self.config, folder)
        return {"artifact": path.name, "frame": self.config.describe(run.recipe.imgsz), "network": parent.name}

    def output(self, parent: Artifact | None, entry: Entry) -> Artifact:
        return Artifact(f"{parent.name}-{self.config.suffix[1:]}", entry.folder / entry.info["artifact"],
                        parent.runtime, parent.precision, entry.key, parent.size, entry.info,
                        {**parent.sources, "network": parent.path})

    def summary(self, info: dict[str, Any]) -> str:
        frame = info["frame"]
        return f"takes the {'decoded frame' if frame['input'] == 'frame' else frame['input'] + ' input'}" \
               + (f", NMS inside (at most {frame['max_det']} detections)" if frame["nms"] else "")


class Evaluate(Stage):
    """Accuracy of one artifact in its own runtime (the run's one evaluation protocol).

    Ultralytics' validator cannot feed an artifact with the frame's processing inside (Frame); it is measured as a
    device runs it (Evaluator.frames, each image decoded and fed, its detections read), in its twin with the eval
    split's thresholds (the deployed graph with eval.conf and eval.iou, which only the NMS reads), and so is its
    network, through the device's own letterbox and NMS: the change between the two is what going inside cost."""

    facts = ("data", "imgsz", "eval", "device")

    def __init__(self, artifact: Artifact) -> None:
        self.name = f"evaluate-{artifact.name}"

    def run(self, parent: Artifact | None, folder: Path, run: Run) -> dict[str, Any]:
        from edgecompress.yolo.model import load_model

        if "frame" in parent.info:
            return self.frames(parent, folder, run)
        # A checkpoint goes in loaded by our safe loader: given a path, Ultralytics would unpickle it fully.
        weights = load_model(parent.path, run.trust) if parent.runtime == "torch" else parent.path
        return run.evaluate(weights, folder)

    @staticmethod
    def frames(artifact: Artifact, folder: Path, run: Run) -> dict[str, Any]:
        from edgecompress.device.detector import Detector
        from edgecompress.device.postprocess import Thresholds
        from edgecompress.device.runtime import RUNTIMES

        recipe = run.recipe
        thresholds = Thresholds(recipe.eval.conf, recipe.eval.iou, recipe.frame.max_det)
        twin = run.target.wrap(artifact.sources["network"], recipe.frame.with_thresholds(recipe.eval.conf,
                                                                                         recipe.eval.iou),
                               folder / "twin")

        def measured(path: Path) -> dict[str, Any]:
            detector = Detector(RUNTIMES[artifact.runtime].load(path), recipe.imgsz, thresholds)
            return run.evaluate.frames(detector, folder)

        accuracy, network = measured(twin), measured(artifact.sources["network"])
        shutil.rmtree(folder / "twin")
        return {**accuracy, "network": network,
                "change_points": round((accuracy["map50_95"] - network["map50_95"]) * 100, 3)}

    def summary(self, info: dict[str, Any]) -> str:
        line = f"mAP50-95 {info['map50_95']:.4f} on {info['images']} images"
        return line + (f" ({info['change_points']:+.2f} points against its network fed by the host)"
                       if "network" in info else "")


class Bench(Stage):
    """Latency and memory of one artifact, timed in a fresh process (so its peak memory is one session's): end to
    end, the figure that counts (the decoded frame to detections in its pixels, NMS at the deployed thresholds of
    `frame`), and inference alone."""

    facts = ("imgsz", "bench", "host", "frame")

    def __init__(self, artifact: Artifact) -> None:
        self.name = f"bench-{artifact.name}"

    def run(self, parent: Artifact | None, folder: Path, run: Run) -> dict[str, Any]:
        from edgecompress.device.bench import BENCH_IMAGES, measure_isolated
        from edgecompress.yolo.model import TRUST_ENV

        images = run.dataset.images(run.recipe.eval.split)[:BENCH_IMAGES]
        return measure_isolated(parent.path, parent.runtime, run.recipe.imgsz, run.recipe.bench, images, folder,
                                {TRUST_ENV: "1" if run.trust else "0"}, run.recipe.frame.thresholds)

    def summary(self, info: dict[str, Any]) -> str:
        return (f"end to end p50 {info['end_to_end']['p50_ms']:.1f} ms, inference p50 "
                f"{info['inference']['p50_ms']:.1f} ms, {info['file_mb']:.1f} MB")


def training(recipe: Recipe, target: Target) -> list[Stage]:
    """The stages every plan starts with: load, then prune when the recipe prunes (a latency target is measured in the
    target's runtime), and fine-tune after pruning (or always, with finetune.unpruned)."""
    stages: list[Stage] = [Load()]
    if recipe.prune.enabled:
        stages.append(Prune(recipe.prune, target.runtime))
    if recipe.finetune.runs(recipe.prune.enabled):
        stages.append(Finetune(recipe.finetune))
    return stages


def frame(target: Target, recipe: Recipe) -> list[Stage]:
    """The frame stage, where the recipe puts anything inside the artifact."""
    return [Frame(target, recipe.frame)] if recipe.frame.enabled else []


def int8(target: Target, recipe: Recipe) -> list[Stage]:
    """The INT8 stage the recipe asks for, or none."""
    if recipe.quant.mode == "ptq":
        return [PTQ(target, recipe.quant)]
    if recipe.quant.mode == "qat":
        return [QAT(target, recipe.quant)]
    return []
