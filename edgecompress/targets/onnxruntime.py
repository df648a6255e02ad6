"""onnxruntime on a CPU: the generic `onnx` target and `arm` (Raspberry Pi 5, Graviton)."""

from __future__ import annotations

from edgecompress.targets.base import Int8Rules, Target

# onnxruntime's CPU kernels (QLinearConv, VNNI/NEON dot products) are fastest with uint8 activations and int8
# weights; symmetric int8 activations ran 2.5x slower here (DESIGN.md, Known traps).
ORT_INT8 = Int8Rules(("qdq",), "uint8", symmetric_activations=False)

ONNX = Target("onnx", "generic ONNX, run by onnxruntime on the CPU", "onnxruntime", ("int8", "fp32"), ORT_INT8)
# NEON registers hold 4 float lanes.
ARM = Target("arm", "Arm CPU (Raspberry Pi 5, Graviton) with onnxruntime", "onnxruntime", ("int8", "fp32"),
             ORT_INT8, channel_multiple=4)
