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
# The letterboxed frame in (OpenCV resizes on the host, the rest inside): with the resize inside too, INT8 artifacts
# at 448 scored 0.10 and 0.14 points under their network fed by the host (the graph's float resize differs from
# OpenCV's fixed-point one by a level, which the INT8 input keeps), the letterboxed ones within 0.02, both within
# 1.14x of the network's latency (BENCHMARKS.md, "The whole frame"). `frame.input: frame` needs no OpenCV.
ONNX = Target("onnx", "generic ONNX, run by onnxruntime on the CPU", "onnxruntime", ("int8", "fp32"), ORT_INT8,
              channel_multiple=16, frame_input="letterboxed")
# Not measured on an Arm CPU (none here): 8, the smallest multiple that gained on the x86 host, also two NEON
# registers of 4 float lanes.
ARM = Target("arm", "Arm CPU (Raspberry Pi 5, Graviton) with onnxruntime", "onnxruntime", ("int8", "fp32"),
             ORT_INT8, channel_multiple=8, frame_input="letterboxed")
