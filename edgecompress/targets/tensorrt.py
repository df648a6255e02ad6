"""NVIDIA Jetson boards with TensorRT: the bundle a device builds its engine from (a strongly typed ONNX, checked
against TensorRT's rules, its metadata, the `trtexec` command, a DeepStream nvinfer config, and for boards with a
DLA the layers it cannot run), and the engines themselves where TensorRT runs here.

The ONNX carries its own precision (edgecompress.targets.typed): FP16 everywhere but the head's box arithmetic, INT8
where it has Q/DQ. TensorRT builds it as a strongly typed network, so the engine runs what was measured here, alike
on TensorRT 10 (which needs strong typing asked for) and 11 (which has nothing else). Running engines is the
device's (edgecompress.device.tensorrt); this module builds them.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from edgecompress import __version__
from edgecompress.device.tensorrt import unusable_reason, write_engine
from edgecompress.errors import UserError
from edgecompress.targets.base import Int8Rules, Target

if TYPE_CHECKING:
    import onnx

    from edgecompress.pipeline.stage import Artifact, Stage
    from edgecompress.recipe import Recipe
    from edgecompress.targets.frame import FrameConfig

TIMING_CACHE = "timing.cache"
TRTEXEC_SCRIPT = "trtexec.sh"
METADATA = "metadata.json"
DLA_REPORT = "dla.json"
FRAME = "frame.json"  # the frame ONNX's name and what it holds (edgecompress.targets.frame), when the bundle has one
# The optimization profile of an engine that takes the decoded frame (any size): from a tiny frame to 1080p in either
# orientation, tuned at the network's square size. A larger camera: raise --maxShapes in trtexec.sh (every
# intermediate of the letterbox is allocated at the largest size).
FRAME_PROFILE = (32, None, 1920)  # min, opt (None: imgsz), max side
_NO_ENGINE = "the engine is built on the device: copy this folder there and run trtexec.sh, or " \
             "`python3 -m edgecompress.targets.tensorrt FOLDER --target NAME` for the .engine with metadata"
# TensorRT explicit quantization accepts only symmetric int8 (zero point 0), per-channel weights, opset >= 13. Q/DQ at
# the inputs of convolutions, Add and MaxPool, never on a convolution's output: TensorRT fuses Conv + SiLU + the
# next layer's Q into one INT8 kernel, and a Q/DQ between them would cost a reformat each.
# What `modelopt.onnx.autocast` imports beyond modelopt itself: its [onnx] extra, without that extra's pins
# (onnx~=1.21, onnxruntime-gpu, cupy), which would replace the runtimes the pipeline measures with.
AUTOCAST_MODULES = {"modelopt": "nvidia-modelopt", "onnx_graphsurgeon": "onnx-graphsurgeon",
                    "onnxscript": "onnxscript", "lief": "lief"}
TRT_INT8 = Int8Rules(("qdq",), "int8", symmetric_activations=True, placement="tensorrt", strict=True)


@dataclass(frozen=True)
class JetsonTarget(Target):
    """A Jetson board. Tensor Cores take channels in multiples of 8: TensorRT pads any other width, so pruning to it
    buys nothing. Float layers run in FP16, but the head's box arithmetic in FP32 (edgecompress.targets.typed)."""

    dla_cores: int = 0  # NVIDIA Deep Learning Accelerator cores on the board; an engine is built for core 0
    workspace_mib: int = 0  # TensorRT builder's workspace limit; 0 = TensorRT's default (all free memory)

    def unusable(self) -> str | None:
        from edgecompress.device.runtime import RUNTIMES

        # the bundle is prepared anywhere (its engine is built where TensorRT runs): its ONNX is typed by ModelOpt
        # and measured in onnxruntime on the CPU, the accuracy proxy for the engine
        return RUNTIMES["onnxruntime"].unusable() or autocast_missing()

    def deploy(self, recipe: Recipe) -> list[Stage]:
        """The FP32 export, then INT8 where the recipe asks for it, else FP16; then the bundle of that model."""
        from edgecompress.pipeline import stages

        export = stages.Export("onnx", "onnxruntime", "fp32", simplify=True)
        return [export, *(stages.int8(self, recipe) or [stages.FP16(self)]), *stages.frame(self, recipe),
                stages.Bundle(self)]

    @property
    def int8_runtime(self) -> str:
        return "onnxruntime"

    @property
    def int8_name(self) -> str:
        return "tensorrt-qdq-int8"

    def check_int8(self, model: onnx.ModelProto) -> None:
        from edgecompress.targets import tensorrt_rules

        tensorrt_rules.check(model)

    def from_qdq(self, qdq: Path, onnx_fp32: Path) -> Path:
        """The QDQ ONNX, strongly typed in place: its float parts FP16 (fallback layers included) but the head's box
        arithmetic, so the engine's precision is the graph's on every TensorRT."""
        return fp16(qdq, qdq)

    def wrap(self, network: Path, config: FrameConfig, folder: Path) -> Path:
        import onnx

        from edgecompress.targets import tensorrt_rules

        wrapped = super().wrap(network, config, folder)
        model = onnx.load(str(wrapped))
        if any(n.op_type == "QuantizeLinear" for n in model.graph.node):
            tensorrt_rules.check(model)  # its network's Q/DQ as TensorRT needs them, decode float
        return wrapped

    def bundle(self, model: Artifact, folder: Path) -> dict[str, Any]:
        """The bundle of the model, and of its frame artifact where the run made one (then `model` is it, and its
        network the model the engines are built from)."""
        metadata = yaml.safe_load((model.sources["onnx"].parent / "metadata.yaml").read_text())
        if "network" not in model.sources:
            return prepare_jetson(model.path, metadata, self, folder)
        return prepare_jetson(model.sources["network"], metadata, self, folder,
                              frame=(model.path, model.info["frame"]))


def autocast_missing() -> str | None:
    """Why ModelOpt's AutoCast cannot type graphs here (with what to install), or None; imports nothing."""
    missing = [package for module, package in AUTOCAST_MODULES.items() if importlib.util.find_spec(module) is None]
    return (f"strongly typed ONNX for TensorRT needs NVIDIA ModelOpt's AutoCast: pip install {' '.join(missing)}"
            if missing else None)


def fp16(source: Path, dest: Path) -> Path:
    """`source` (FP32 or QDQ ONNX) as a strongly typed graph at `dest`, checked: every float tensor FP16 but the head's
    box arithmetic, and TensorRT's Q/DQ rules where it has Q/DQ."""
    import onnx

    from edgecompress.targets import tensorrt_rules, typed

    keep = typed.fp32_nodes(onnx.load(str(source), load_external_data=False))
    model = onnx.load(str(typed.to_fp16(source, dest, keep)))
    problems = typed.typing_problems(model, keep)
    if any(n.op_type == "QuantizeLinear" for n in model.graph.node):
        problems += tensorrt_rules.violations(model)
    if problems:
        raise tensorrt_rules.TensorRTRuleError(f"{dest.name} is not the strongly typed graph TensorRT needs:\n  "
                                               + "\n  ".join(problems[:20]))
    return dest


def _jetson(name: str, board: str, dla_cores: int, workspace_mib: int) -> JetsonTarget:
    return JetsonTarget(name, f"NVIDIA Jetson {board} with TensorRT", "tensorrt", ("int8", "fp16", "fp32"), TRT_INT8,
                        channel_multiple=8, dla_cores=dla_cores, workspace_mib=workspace_mib)


# Workspace: the boards share their memory (8 / 16 / 32-64 GB) with the CPU; leave most to the application.
ORIN_NANO = _jetson("jetson-orin-nano", "Orin Nano (no DLA)", dla_cores=0, workspace_mib=1024)
ORIN_NX = _jetson("jetson-orin-nx", "Orin NX (16 GB: 2 DLA cores; the 8 GB module has 1)", dla_cores=2,
                  workspace_mib=2048)
AGX_ORIN = _jetson("jetson-agx-orin", "AGX Orin (2 DLA cores)", dla_cores=2, workspace_mib=4096)


@dataclass(frozen=True)
class Build:
    """One engine of a bundle: its file stem, the ONNX it is built from, the DLA core (None: the GPU), its header
    metadata, and the optimization profile of a dynamic input ((name, min, opt, max) shapes) or None."""

    stem: str
    onnx: str
    dla: int | None
    metadata: dict[str, Any]
    profile: tuple[str, tuple[int, ...], tuple[int, ...], tuple[int, ...]] | None = None


def prepare_jetson(onnx_path: Path, metadata: dict[str, Any], target: JetsonTarget, folder: Path,
                   frame: tuple[Path, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Make `folder` the bundle a Jetson needs: the strongly typed ONNX, its Ultralytics metadata, the trtexec
    command, the DeepStream config (per engine of the network) with labels.txt and the parser's source, the layers
    DLA cannot run (boards with DLA), and, where TensorRT is usable here, the engines (GPU, plus DLA core 0) in both
    forms. `frame`: the same network with the frame's processing inside (its ONNX and `frame` description), bundled
    and built beside it (on the GPU: DLA runs neither the letterbox nor NMS).

    `metadata` is the dict of the metadata.yaml that export_onnx writes. Returns JSON-ready facts for the report:
    the graph's typing and precision boundaries, DLA fallbacks, the files; "engine" is None, with a "reason", when
    this host cannot build engines."""
    import onnx

    from edgecompress.targets import deepstream, typed
    from edgecompress.targets.dla import dla_report

    folder.mkdir(parents=True, exist_ok=True)
    onnx_copy = _copy(onnx_path, folder)
    (folder / METADATA).write_text(json.dumps(metadata, indent=1))
    if frame:
        (folder / FRAME).write_text(json.dumps({"onnx": _copy(frame[0], folder).name, **frame[1]}, indent=1))
    builds = bundle_builds(folder, target)
    (folder / TRTEXEC_SCRIPT).write_text(trtexec_script(builds, target))
    model = onnx.load(str(onnx_copy))
    int8 = any(n.op_type == "QuantizeLinear" for n in model.graph.node)
    network = [b for b in builds if b.onnx == onnx_copy.name]  # DeepStream letterboxes and feeds the network itself
    info: dict[str, Any] = {"target": target.name, "onnx": onnx_copy.name, "trtexec": TRTEXEC_SCRIPT,
                            "typing": typed.summary(model, typed.fp32_nodes(model)),
                            "deepstream": deepstream.write(folder, metadata, [(b.stem, b.dla) for b in network], int8),
                            "engine": None, "engines": []}
    if frame:
        info["frame_onnx"] = frame[0].name
    if target.dla_cores:
        info["dla"] = {"report": DLA_REPORT, **dla_report(model)}
        (folder / DLA_REPORT).write_text(json.dumps(info["dla"], indent=1))
    if reason := unusable_reason():
        return {**info, "reason": f"{reason}; {_NO_ENGINE}"}
    info["engines"] = [build_engine(folder, build, target) for build in builds]
    info["engine"] = info["engines"][0]["engine"]
    return info


def _copy(onnx_path: Path, folder: Path) -> Path:
    copy = folder / onnx_path.name
    if copy.resolve() != onnx_path.resolve():
        shutil.copyfile(onnx_path, copy)
    return copy


def bundle_builds(folder: Path, target: JetsonTarget) -> list[Build]:
    """The engines of a bundle folder (its ONNX files, metadata.json and frame.json: all a device needs): the
    network on the GPU, and on DLA core 0 where the board has one; the frame artifact, where there is one, on the
    GPU."""
    metadata = json.loads((folder / METADATA).read_text())
    frame = json.loads((folder / FRAME).read_text()) if (folder / FRAME).is_file() else None
    networks = [p.name for p in sorted(folder.glob("*.onnx")) if not frame or p.name != frame["onnx"]]
    if len(networks) != 1:
        raise UserError(f"{folder} is not a Jetson bundle: {len(networks)} network .onnx files; pass the folder "
                        f"compress wrote")
    builds = [Build("model", networks[0], None, metadata)]
    if target.dla_cores:
        builds.append(Build("model.dla0", networks[0], 0, {**metadata, "dla": "0"}))  # Ultralytics' DLA key
    return builds + _frame_build(frame, metadata)


def _frame_build(frame: dict[str, Any] | None, metadata: dict[str, Any]) -> list[Build]:
    if not frame:
        return []
    described = {k: v for k, v in frame.items() if k != "onnx"}
    profile = None
    if described["input"] == "frame":  # any size: TensorRT builds for a range of them
        low, opt, high = FRAME_PROFILE
        opt = opt or described["imgsz"]
        profile = ("frame", (1, low, low, 3), (1, opt, opt, 3), (1, high, high, 3))
    return [Build("model_frame", frame["onnx"], None, {**metadata, "end2end": described["nms"], "frame": described},
                  profile)]
def trtexec_script(builds: list[Build], target: JetsonTarget) -> str:
    """A shell script with the trtexec command for each engine, the same settings build_engine uses: a strongly
    typed network (--stronglyTyped: needed on TensorRT 10, what 11 always does), no precision flags."""
    lines = [
        "#!/bin/sh",
        f"# TensorRT engines for {target.description}, from the strongly typed ONNX beside this file (edgecompress "
        f"{__version__}).",
        "# Run it on the device. These write bare .plan engines (trtexec, DeepStream); for the .engine that",
        f"# ultralytics.YOLO() loads: python3 -m edgecompress.targets.tensorrt . --target {target.name}",
        "# The ONNX carries its precision (FP16, INT8 where it has Q/DQ, FP32 for the box decode): TensorRT >= 10.",
        "set -e",
        'cd "$(dirname "$0")"',
        # JetPack installs trtexec outside PATH
        'TRTEXEC="${TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}"',
        '"$TRTEXEC" --help 2>&1 | grep -q -- --stronglyTyped || '
        '{ echo "this trtexec has no --stronglyTyped: TensorRT >= 10 is needed (JetPack 6.1 or later)" >&2; exit 1; }',
    ]
    for build in builds:
        flags = ["--stronglyTyped"]
        if target.workspace_mib:
            flags.append(f"--memPoolSize=workspace:{target.workspace_mib}")  # MiB
        if build.dla is not None:
            # DLA runs FP16/INT8 4-D layers; the others (dla.json lists them) go back to the GPU
            flags += [f"--useDLACore={build.dla}", "--allowGPUFallback"]
        if build.profile:
            name, *shapes = build.profile
            flags += [f"--{which}Shapes={name}:{'x'.join(map(str, shape))}"
                      for which, shape in zip(("min", "opt", "max"), shapes)]
        lines.append(f'"$TRTEXEC" --onnx={build.onnx} --saveEngine={build.stem}.plan {" ".join(flags)} '
                     f"--timingCacheFile={TIMING_CACHE}")
    return "\n".join(lines) + "\n"


def build_engine(folder: Path, build: Build, target: JetsonTarget) -> dict[str, Any]:
    """Build one engine of the bundle from its strongly typed ONNX (each layer in its tensors' types: no precision
    flags), within the target's workspace, reusing and updating the bundle's timing cache."""
    import tensorrt as trt

    onnx_path, stem, dla_core, timing_cache = folder / build.onnx, build.stem, build.dla, folder / TIMING_CACHE
    start = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(_strongly_typed(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise UserError(f"TensorRT {trt.__version__} cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    if target.workspace_mib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, target.workspace_mib << 20)
    if build.profile:
        name, *shapes = build.profile
        profile = builder.create_optimization_profile()
        profile.set_shape(name, *shapes)
        config.add_optimization_profile(profile)
    if dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)  # layers the DLA cannot run go to the GPU
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    if not config.set_timing_cache(cache, ignore_mismatch=False):  # a cache from another device or version
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT {trt.__version__} failed to build {stem} from {onnx_path}; "
                           f"its log above says why")
    timing_cache.write_bytes(bytes(memoryview(config.get_timing_cache().serialize())))
    plan_bytes = bytes(memoryview(plan))
    (folder / f"{stem}.plan").write_bytes(plan_bytes)
    write_engine(folder / f"{stem}.engine", plan_bytes, build.metadata)
    return {"device": "gpu" if dla_core is None else f"dla{dla_core}", "engine": f"{stem}.engine",
            "plan": f"{stem}.plan", "typing": _typing(trt), "workspace_mib": target.workspace_mib,
            "build_s": round(time.perf_counter() - start, 1), "tensorrt": trt.__version__,
            "file_mb": round(len(plan_bytes) / 2**20, 3)}


def _strongly_typed(trt: Any) -> int:
    """The network creation flags of a strongly typed network: asked for on TensorRT 10, the only kind on 11 (which
    deprecates the flag and ignores it). Older TensorRT has no strong typing: a weakly typed build would choose its
    own precisions, unlike what was measured, so it is refused."""
    major = int(trt.__version__.split(".")[0])
    if major < 10:
        raise UserError(f"TensorRT {trt.__version__} cannot build strongly typed networks; the bundle needs TensorRT "
                        f">= 10 (JetPack 6.1 or later)")
    return 0 if major >= 11 else 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def _typing(trt: Any) -> str:
    return ("strongly typed (TensorRT 11: every network)" if int(trt.__version__.split(".")[0]) >= 11
            else "strongly typed (NetworkDefinitionCreationFlag.STRONGLY_TYPED)")


def main(argv: list[str]) -> int:
    """`python -m edgecompress.targets.tensorrt FOLDER --target NAME`: build the engines on the device, from the
    bundle the pipeline wrote (its strongly typed ONNX and metadata.json). Needs TensorRT, not onnx or torch."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m edgecompress.targets.tensorrt",
                                description="Build TensorRT engines (.engine with Ultralytics' metadata, and .plan) "
                                            "from a Jetson bundle, on the device that will run them.")
    p.add_argument("bundle", type=Path, help="the folder the pipeline wrote for a Jetson target")
    p.add_argument("--target", default="jetson", help="jetson-orin-nano (= jetson), jetson-orin-nx, jetson-agx-orin")
    args = p.parse_args(argv)
    try:
        from edgecompress.targets import get_target

        target = get_target(args.target)
        if not (args.bundle / METADATA).is_file():  # without metadata the .engine would not load in YOLO()
            raise UserError(f"{args.bundle} is not a Jetson bundle (no {METADATA}); pass the folder compress wrote")
        if reason := unusable_reason():
            raise UserError(reason)
        engines = [build_engine(args.bundle, build, target) for build in bundle_builds(args.bundle, target)]
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    print(json.dumps(engines, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
