"""Hardware targets: each one a frozen profile of what its device runs and how the pipeline must shape a model for it.

This package imports neither torch nor ultralytics: `compress bench` runs on a device that has only numpy
and the target's runtime.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgecompress.errors import UserError
from edgecompress.pipeline.config import require, suggest
from edgecompress.targets.runtimes import RUNTIMES

PRECISIONS = ("int8", "fp16", "fp32")


@dataclass(frozen=True)
class Int8Rules:
    """How a target's runtime wants INT8: the hardware facts that decide the quantization scheme."""

    quantizer: str  # "onnxruntime": QDQ ONNX from calibrated ranges; "nncf": NNCF on the OpenVINO model
    activation_type: str  # "uint8" or "int8"
    symmetric_activations: bool
    validator: str = ""  # a rule checker every artifact must pass: "tensorrt", or "" for none


@dataclass(frozen=True)
class Target:
    """What a deployment target needs from the pipeline, and the defaults its device runs at."""

    name: str
    runtime: str  # a key of edgecompress.targets.runtimes.RUNTIMES
    description: str
    precisions: tuple[str, ...]  # what the runtime executes, fastest first
    int8: Int8Rules | None = None  # None: the runtime runs no INT8
    channel_multiple: int = 1  # pruning keeps channel counts a multiple of this (PruneConfig.round_to)
    fp16_fallback: bool = False  # layers kept out of INT8 run in FP16 (True) or FP32 (False)
    imgsz: int = 640  # default square input size of `compress bench` on an artifact with a dynamic shape
    batch: int = 1
    dla_cores: int = 0  # NVIDIA Deep Learning Accelerator cores on the board; an engine is built for core 0
    workspace_mib: int = 0  # TensorRT builder's workspace limit; 0 = TensorRT's default (all free memory)

    def __post_init__(self) -> None:
        require(self.runtime in RUNTIMES, f"target {self.name}: runtime {self.runtime!r} is not one of "
                                          f"{', '.join(RUNTIMES)}")
        unknown = set(self.precisions) - set(PRECISIONS)
        require(bool(self.precisions) and not unknown,
                f"target {self.name}: precisions {self.precisions} must be a non-empty subset of {PRECISIONS}")
        require(("int8" in self.precisions) == (self.int8 is not None),
                f"target {self.name}: give Int8Rules exactly when 'int8' is among its precisions")
        require(not self.fp16_fallback or "fp16" in self.precisions,
                f"target {self.name}: fp16_fallback needs 'fp16' among its precisions")
        require(self.channel_multiple >= 1 and self.batch >= 1 and self.dla_cores >= 0 and self.workspace_mib >= 0,
                f"target {self.name}: channel_multiple and batch must be >= 1, dla_cores and workspace_mib >= 0")
        require(self.imgsz % 32 == 0, f"target {self.name}: imgsz {self.imgsz} is not a multiple of 32")


# onnxruntime's CPU kernels (QLinearConv, VNNI/NEON dot products) are fastest with uint8 activations and int8
# weights; symmetric int8 activations ran 2.5x slower here (DESIGN.md, Known traps).
_ORT_INT8 = Int8Rules("onnxruntime", "uint8", False)
# TensorRT explicit quantization accepts only symmetric int8 (zero point 0), per-channel weights, opset >= 13.
_TRT_INT8 = Int8Rules("onnxruntime", "int8", True, validator="tensorrt")


def _jetson(name: str, board: str, dla_cores: int, workspace_mib: int) -> Target:
    # Tensor Cores take channels in multiples of 8: TensorRT pads any other width, so pruning to it buys nothing.
    # Layers TensorRT cannot run in INT8 (and the head's decode, kept float on purpose) run in FP16.
    return Target(name, "tensorrt", f"NVIDIA Jetson {board} with TensorRT", ("int8", "fp16", "fp32"), _TRT_INT8,
                  channel_multiple=8, fp16_fallback=True, dla_cores=dla_cores, workspace_mib=workspace_mib)


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        # Workspace: the boards share their memory (8 / 16 / 32-64 GB) with the CPU; leave most to the application.
        _jetson("jetson-orin-nano", "Orin Nano (no DLA)", dla_cores=0, workspace_mib=1024),
        _jetson("jetson-orin-nx", "Orin NX (16 GB: 2 DLA cores; the 8 GB module has 1)", dla_cores=2,
                workspace_mib=2048),
        _jetson("jetson-agx-orin", "AGX Orin (2 DLA cores)", dla_cores=2, workspace_mib=4096),
        # NNCF's MIXED preset: asymmetric uint8 activations, symmetric per-channel int8 weights. oneDNN blocks
        # channels by 8 (AVX2) or 16 (AVX-512); 16 suits both. Pruned yolov8n-bccd at -35% FLOPs, OpenVINO FP32 on
        # an AVX-512 CPU: latency fell 0.72 and 0.79 times as much as FLOPs rounded to 16, 0.72 and 0.67 rounded
        # to 8, 0.42 and 0.55 unrounded (two quiet timings of 15 rounds, BENCHMARKS.md).
        Target("x86", "openvino", "x86 CPU with OpenVINO", ("int8", "fp32"), Int8Rules("nncf", "uint8", False),
               channel_multiple=16),
        # NEON registers hold 4 float lanes.
        Target("arm", "onnxruntime", "Arm CPU (Raspberry Pi 5, Graviton) with onnxruntime", ("int8", "fp32"),
               _ORT_INT8, channel_multiple=4),
        Target("onnx", "onnxruntime", "generic ONNX, run by onnxruntime on the CPU", ("int8", "fp32"), _ORT_INT8),
    )
}
ALIASES = {"jetson": "jetson-orin-nano"}


def get_target(name: str) -> Target:
    """The target called `name` (or an alias of one); an unknown name is a UserError that suggests the closest."""
    name = ALIASES.get(name, name)
    if name not in TARGETS:
        names = [*TARGETS, *ALIASES]
        raise UserError(f"unknown target '{name}'{suggest(name, names)}; choose one of {', '.join(names)}")
    return TARGETS[name]
