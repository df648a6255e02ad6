"""NVIDIA Jetson boards with TensorRT: the bundle a device builds its engine from (the QDQ ONNX checked against
TensorRT's rules, its metadata and the `trtexec` command), and the engines themselves where TensorRT runs here.

Running engines is the device's (edgecompress.device.tensorrt); this module builds them.
"""

from __future__ import annotations

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
FRAME = "frame.json"  # the frame ONNX's name and what it holds (edgecompress.targets.frame), when the bundle has one
# The optimization profile of an engine that takes the decoded frame (any size): from a tiny frame to 1080p in either
# orientation, tuned at the network's square size. A larger camera: raise --maxShapes in trtexec.sh (every
# intermediate of the letterbox is allocated at the largest size).
FRAME_PROFILE = (32, None, 1920)  # min, opt (None: imgsz), max side
_NO_ENGINE = "the engine is built on the device: copy this folder there and run trtexec.sh, or " \
             "`python3 -m edgecompress.targets.tensorrt FOLDER --target NAME` for the .engine with metadata"
# TensorRT explicit quantization accepts only symmetric int8 (zero point 0), per-channel weights, opset >= 13, and
# float weights behind their Q/DQ pair.
TRT_INT8 = Int8Rules(("qdq",), "int8", symmetric_activations=True, float_weights=True, strict=True)


@dataclass(frozen=True)
class JetsonTarget(Target):
    """A Jetson board. Tensor Cores take channels in multiples of 8: TensorRT pads any other width, so pruning to it
    buys nothing. Layers TensorRT cannot run in INT8 (and the head's decode, kept float on purpose) run in FP16."""

    fp16_fallback: bool = True  # layers kept out of INT8 run in FP16 (True) or FP32 (False)
    dla_cores: int = 0  # NVIDIA Deep Learning Accelerator cores on the board; an engine is built for core 0
    workspace_mib: int = 0  # TensorRT builder's workspace limit; 0 = TensorRT's default (all free memory)

    def unusable(self) -> str | None:
        from edgecompress.device.runtime import RUNTIMES

        # the bundle is prepared anywhere (its engine is built where TensorRT runs); its QDQ ONNX is measured in
        # onnxruntime on the CPU, the accuracy proxy for the engine
        return RUNTIMES["onnxruntime"].unusable()

    def preset(self, recipe: Recipe) -> Recipe:
        recipe = super().preset(recipe)
        if not recipe.quant.enabled:
            raise UserError(f"target '{self.name}' engines are built from the INT8 QDQ ONNX; use --quant ptq "
                            f"(FP16-only engines are not available yet)")
        return recipe

    def deploy(self, recipe: Recipe) -> list[Stage]:
        from edgecompress.pipeline import stages

        return [*super().deploy(recipe), stages.Bundle(self)]

    @property
    def int8_runtime(self) -> str:
        return "onnxruntime"

    @property
    def int8_name(self) -> str:
        return "tensorrt-qdq-int8"

    def check_int8(self, model: onnx.ModelProto) -> None:
        from edgecompress.targets import tensorrt_rules

        tensorrt_rules.check(model)

    def wrap(self, network: Path, config: FrameConfig, folder: Path) -> Path:
        import onnx

        from edgecompress.targets import tensorrt_rules

        wrapped = super().wrap(network, config, folder)
        tensorrt_rules.check(onnx.load(str(wrapped)))  # its network's Q/DQ as TensorRT needs them, decode float
        return wrapped

    def bundle(self, qdq: Artifact, folder: Path) -> dict[str, Any]:
        """The bundle of the INT8 QDQ ONNX, and of its frame artifact where the run made one (then `qdq` is it,
        and the QDQ ONNX its network)."""
        metadata = yaml.safe_load((qdq.sources["onnx"].parent / "metadata.yaml").read_text())
        if "network" not in qdq.sources:
            return prepare_jetson(qdq.path, metadata, self, folder)
        return prepare_jetson(qdq.sources["network"], metadata, self, folder, frame=(qdq.path, qdq.info["frame"]))


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
                   timing_cache: Path | None = None,
                   frame: tuple[Path, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Make `folder` the bundle a Jetson needs: the QDQ ONNX, its Ultralytics metadata, the trtexec command, and,
    where TensorRT is usable here, the engines (GPU, plus DLA core 0 on boards with DLA) in both forms. `frame`: the
    same network with the frame's processing inside (its ONNX and `frame` description), bundled and built beside
    it (on the GPU: DLA runs neither the letterbox nor NMS).

    `metadata` is the dict of the metadata.yaml that export_onnx writes. Returns JSON-ready facts for the report;
    "engine" is None, with a "reason", when this host cannot build engines.
    """
    folder.mkdir(parents=True, exist_ok=True)
    onnx_copy = _copy(onnx_path, folder)
    (folder / METADATA).write_text(json.dumps(metadata, indent=1))
    info: dict[str, Any] = {"target": target.name, "onnx": onnx_copy.name, "trtexec": TRTEXEC_SCRIPT,
                            "engine": None, "engines": []}
    frame_onnx = None
    if frame:
        frame_onnx = _copy(frame[0], folder).name
        (folder / FRAME).write_text(json.dumps({"onnx": frame_onnx, **frame[1]}, indent=1))
        info["frame_onnx"] = frame_onnx
    cache = timing_cache or folder / TIMING_CACHE
    builds = _builds(target, onnx_copy.name, metadata, (frame_onnx, frame[1]) if frame else None)
    (folder / TRTEXEC_SCRIPT).write_text(trtexec_script(builds, target, cache.name))
    if reason := unusable_reason():
        return {**info, "reason": f"{reason}; {_NO_ENGINE}"}
    info["engines"] = [build_engine(folder, build, target, cache) for build in builds]
    info["engine"] = info["engines"][0]["engine"]
    return info


def _copy(onnx_path: Path, folder: Path) -> Path:
    copy = folder / onnx_path.name
    if copy.resolve() != onnx_path.resolve():
        shutil.copyfile(onnx_path, copy)
    return copy


def _builds(target: JetsonTarget, onnx_name: str, metadata: dict[str, Any],
            frame: tuple[str, dict[str, Any]] | None) -> list[Build]:
    """The engines of a bundle: the network on the GPU, and on DLA core 0 where the board has one; the frame artifact
    (its ONNX's name and `frame` description), where there is one, on the GPU."""
    builds = [Build("model", onnx_name, None, metadata)]
    if target.dla_cores:
        builds.append(Build("model.dla0", onnx_name, 0, {**metadata, "dla": "0"}))  # Ultralytics' DLA key
    if frame:
        frame_onnx, described = frame
        profile = None
        if described["input"] == "frame":  # any size: TensorRT builds for a range of them
            low, opt, high = FRAME_PROFILE
            opt = opt or described["imgsz"]
            profile = ("frame", (1, low, low, 3), (1, opt, opt, 3), (1, high, high, 3))
        builds.append(Build("model_frame", frame_onnx, None,
                            {**metadata, "end2end": described["nms"], "frame": described}, profile))
    return builds


def trtexec_script(builds: list[Build], target: JetsonTarget, cache_name: str) -> str:
    """A shell script with the trtexec command for each engine, the same settings build_engine uses."""
    lines = [
        "#!/bin/sh",
        f"# TensorRT engines for {target.description}, from the QDQ ONNX beside this file (edgecompress "
        f"{__version__}).",
        "# Run it on the device. These write bare .plan engines (trtexec, DeepStream); for the .engine that",
        f"# ultralytics.YOLO() loads: python3 -m edgecompress.targets.tensorrt . --target {target.name}",
        "set -e",
        'cd "$(dirname "$0")"',
        # JetPack installs trtexec outside PATH
        'TRTEXEC="${TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}"',
    ]
    for build in builds:
        flags = ["--int8"] + (["--fp16"] if target.fp16_fallback else [])
        if target.workspace_mib:
            flags.append(f"--memPoolSize=workspace:{target.workspace_mib}")  # MiB
        if build.dla is not None:
            flags += [f"--useDLACore={build.dla}", "--allowGPUFallback"]
        if build.profile:
            name, *shapes = build.profile
            flags += [f"--{which}Shapes={name}:{'x'.join(map(str, shape))}"
                      for which, shape in zip(("min", "opt", "max"), shapes)]
        lines.append(f'"$TRTEXEC" --onnx={build.onnx} --saveEngine={build.stem}.plan {" ".join(flags)} '
                     f"--timingCacheFile={cache_name}")
    return "\n".join(lines) + "\n"


def build_engine(folder: Path, build: Build, target: JetsonTarget, timing_cache: Path) -> dict[str, Any]:
    """Build one engine from a QDQ ONNX of the bundle: INT8 where the graph has Q/DQ, the other layers in FP16 (or
    FP32 where the target has no FP16 fallback), within the target's workspace, reusing and updating the timing
    cache."""
    import tensorrt as trt

    onnx_path, stem, dla_core = folder / build.onnx, build.stem, build.dla
    start = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    major = int(trt.__version__.split(".")[0])
    # TensorRT < 10 needs explicit batch asked for; 10 has nothing else and deprecates the flag.
    network = builder.create_network(0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise UserError(f"TensorRT {trt.__version__} cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    if target.workspace_mib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, target.workspace_mib << 20)
    # TensorRT >= 11 is strongly typed: it removed these flags, and the ONNX's own types decide each layer.
    wanted = ["INT8"] + (["FP16"] if target.fp16_fallback else [])
    flags = [f for f in wanted if hasattr(trt.BuilderFlag, f)]
    for flag in flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
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
            "plan": f"{stem}.plan", "flags": flags, "workspace_mib": target.workspace_mib,
            "build_s": round(time.perf_counter() - start, 1), "tensorrt": trt.__version__,
            "file_mb": round(len(plan_bytes) / 2**20, 3)}


def main(argv: list[str]) -> int:
    """`python -m edgecompress.targets.tensorrt FOLDER_OR_ONNX --target NAME`: build the engines on the device, from
    the folder the pipeline wrote (its QDQ ONNX and metadata.json) or from one ONNX."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m edgecompress.targets.tensorrt",
                                description="Build TensorRT engines (.engine with Ultralytics' metadata, and .plan) "
                                            "from a QDQ ONNX, on the device that will run them.")
    p.add_argument("source", type=Path, help="the folder the pipeline wrote for a Jetson target, or a QDQ .onnx")
    p.add_argument("--target", default="jetson", help="jetson-orin-nano (= jetson), jetson-orin-nx, jetson-agx-orin")
    args = p.parse_args(argv)
    try:
        from edgecompress.targets import get_target

        target = get_target(args.target)
        folder = args.source if args.source.is_dir() else args.source.parent
        onnx_files = [args.source] if args.source.is_file() else sorted(folder.glob("*.onnx"))
        frame_file = folder / FRAME
        frame = json.loads(frame_file.read_text()) if frame_file.is_file() and args.source.is_dir() else None
        networks = [p for p in onnx_files if not frame or p.name != frame["onnx"]]
        if len(networks) != 1:
            raise UserError(f"{args.source} holds {len(networks)} .onnx files; pass the one to build")
        meta_file = folder / METADATA
        if not meta_file.is_file():  # without it the .engine would not load in Ultralytics
            raise UserError(f"{meta_file} is missing; build from the folder compress wrote for the Jetson target")
        metadata = json.loads(meta_file.read_text())
        info = prepare_jetson(networks[0], metadata, target, folder,
                              frame=(folder / frame.pop("onnx"), frame) if frame else None)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    if info["engine"] is None:  # on the device itself: say only why TensorRT cannot run here
        print(f"error: {unusable_reason()}", file=sys.stderr)
        return 2
    print(json.dumps(info, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
