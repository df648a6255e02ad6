"""Hardware targets: each one a frozen profile naming the runtime that runs its artifacts.

This package imports neither torch nor ultralytics: `compress bench` runs on a device that has only numpy
and the target's runtime.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgecompress.errors import NotAvailableYet, UserError
from edgecompress.pipeline.config import suggest


@dataclass(frozen=True)
class Target:
    """What a deployment target needs from the pipeline."""

    name: str
    runtime: str  # a key of edgecompress.targets.runtimes.RUNTIMES
    description: str
    available: bool = True  # False: parsed, but its export path is not implemented in this release


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("onnx", "onnxruntime", "generic ONNX, run by onnxruntime on the CPU"),
        Target("arm", "onnxruntime", "Arm CPU (Raspberry Pi 5, Graviton) with onnxruntime"),
        Target("x86", "openvino", "x86 CPU with OpenVINO"),
        Target("jetson", "tensorrt", "NVIDIA Jetson Orin Nano with TensorRT", available=False),
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
