"""ncnn (Tencent's runtime, the one Ultralytics recommends for Raspberry Pi and Android CPUs): the PyTorch model
exported by Ultralytics' own exporter through pnnx, in FP32 and FP16 storage. INT8 is not offered: the `ncnn` and
`pnnx` wheels ship no calibration tools (ncnn2table and ncnn2int8 are built from ncnn's sources)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from edgecompress.targets.base import Target

if TYPE_CHECKING:
    from edgecompress.pipeline.stage import Stage
    from edgecompress.recipe import Recipe


@dataclass(frozen=True)
class NcnnTarget(Target):
    """pnnx writes ncnn's own graph, not ONNX: the frame's processing stays on the host (OpenCV letterbox, numpy
    NMS), so the artifact takes Ultralytics' tensor and gives its raw output."""

    def preset(self, recipe: Recipe) -> Recipe:
        if recipe.frame.input == "target":
            recipe = recipe.with_overrides(**{"frame.input": "tensor", "frame.nms": False})
        return super().preset(recipe)

    def deploy(self, recipe: Recipe) -> list[Stage]:
        from edgecompress.pipeline import stages

        # FP16 weights: half the file; computed in FP16 where the CPU has FP16 arithmetic (ARMv8.2: Raspberry Pi 5)
        return [stages.Export("ncnn", "ncnn", "fp32"), stages.Export("ncnn", "ncnn", "fp16", quantize=16)]


# NEON registers hold 4 float lanes (as the arm target's).
NCNN = NcnnTarget("ncnn", "Arm CPU (Raspberry Pi, Android) with ncnn", "ncnn", ("fp16", "fp32"), channel_multiple=4,
                  frame_input="tensor")
