"""Hardware targets: each one a frozen profile naming the runtime that runs its artifacts.

This package imports neither torch nor ultralytics: `compress bench` runs on a device that has only numpy
and the target's runtime.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgecompress.errors import NotAvailableYet, UserError
from edgecompress.pipeline.config import suggest


@dataclass(frozen=True)
class Int8Rules:
    """How a target's runtime wants INT8: the hardware facts that decide the quantization scheme."""

    quantizer: str  # "onnxruntime": QDQ ONNX from calibrated ranges; "nncf": NNCF on the OpenVINO model
    activation_type: str  # "uint8" or "int8"
    symmetric_activations: bool
    per_channel_weights: bool = True  # weights are always symmetric int8, one scale per output channel
    min_opset: int = 13  # per-channel DequantizeLinear
    validator: str = ""  # a rule checker every artifact must pass: "tensorrt", or "" for none


@dataclass(frozen=True)
class Target:
    """What a deployment target needs from the pipeline."""

    name: str
    runtime: str  # a key of edgecompress.targets.runtimes.RUNTIMES
    description: str
    available: bool = True  # False: parsed, but its export path is not implemented in this release
    int8: Int8Rules | None = None  # None: the runtime runs no INT8


# onnxruntime's CPU kernels (QLinearConv, VNNI/NEON dot products) are fastest with uint8 activations and int8
# weights; symmetric int8 activations ran 2.5x slower here (DESIGN.md, Known traps).
_ORT_INT8 = Int8Rules("onnxruntime", "uint8", False)

TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("onnx", "onnxruntime", "generic ONNX, run by onnxruntime on the CPU", int8=_ORT_INT8),
        Target("arm", "onnxruntime", "Arm CPU (Raspberry Pi 5, Graviton) with onnxruntime", int8=_ORT_INT8),
        # NNCF's MIXED preset: asymmetric uint8 activations, symmetric per-channel int8 weights
        Target("x86", "openvino", "x86 CPU with OpenVINO", int8=Int8Rules("nncf", "uint8", False)),
        Target("jetson", "tensorrt", "NVIDIA Jetson Orin Nano with TensorRT", available=False,
               # TensorRT explicit quantization accepts only symmetric int8 (zero point 0)
               int8=Int8Rules("onnxruntime", "int8", True, validator="tensorrt")),
    )
}


def get_target(name: str) -> Target:
    """The target called `name`; an unknown name is a UserError that suggests the closest ones."""
    if name not in TARGETS:
        raise UserError(f"unknown target '{name}'{suggest(name, TARGETS)}; choose one of {', '.join(TARGETS)}")
    target = TARGETS[name]
    if not target.available:
        raise NotAvailableYet(
            f"target '{name}' ({target.description}) is not available yet in this release; "
            f"use --target x86, arm or onnx"
        )
    return target
