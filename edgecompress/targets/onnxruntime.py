"""onnxruntime on a CPU: the generic `onnx` target and `arm` (Raspberry Pi 5, Graviton)."""

from __future__ import annotations

from edgecompress.targets.base import Int8Rules, Target

# onnxruntime's CPU kernels (QLinearConv, VNNI/NEON dot products) are fastest with uint8 activations and int8
# weights; symmetric int8 activations ran 2.5x slower here (DESIGN.md, Known traps).
ORT_INT8 = Int8Rules(("qdq",), "uint8", symmetric_activations=False)

# onnxruntime's CPU kernels block channels too (MLAS's NCHWc layout: blocks of 8 with AVX2, 16 with AVX-512):
# yolov8n-bccd and yolo11n-bccd pruned 35% ran 8.5% and 11.6% faster rounded to 8 than unrounded, and 9% and 6%
# faster again rounded to 16, with more FLOPs left (bench/channel_multiple.py; BENCHMARKS.md, "Channel multiple
# per runtime"). 16 is a multiple of both blocks.
ONNX = Target("onnx", "generic ONNX, run by onnxruntime on the CPU", "onnxruntime", ("int8", "fp32"), ORT_INT8,
              channel_multiple=16)
# Not measured on an Arm CPU (none here): 8, the smallest multiple that gained on the x86 host, also two NEON
# registers of 4 float lanes.
ARM = Target("arm", "Arm CPU (Raspberry Pi 5, Graviton) with onnxruntime", "onnxruntime", ("int8", "fp32"),
             ORT_INT8, channel_multiple=8)
