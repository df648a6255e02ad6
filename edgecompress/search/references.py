"""The reference points of a search's report: Ultralytics' own exports of the user's model at the trained size, in
the target's runtime (FP32, and INT8 where Ultralytics quantizes that format), measured like every candidate."""

from __future__ import annotations

from typing import Any

from edgecompress.pipeline.stage import Stage
from edgecompress.pipeline.stages import Export, Load
from edgecompress.recipe import Recipe
from edgecompress.targets import get_target

# runtime -> Ultralytics' export format, and whether Ultralytics makes INT8 of it (`quantize=8`)
FORMATS = {"openvino": ("openvino", True), "onnxruntime": ("onnx", True), "ncnn": ("ncnn", False)}


class UltralyticsExport(Export):
    """Ultralytics' exporter with its own settings (its INT8: `quantize=8`, calibrated on the dataset)."""

    def __init__(self, fmt: str, runtime: str, precision: str, **options: Any) -> None:
        super().__init__(fmt, runtime, precision, **options)
        self.name = self.output_name = f"ultralytics-{fmt}-{precision}"
        self.source_kind = None


def ultralytics_plan(recipe: Recipe) -> list[Stage]:
    """Load, then Ultralytics' exports for the recipe's target; just the load where it has none here."""
    runtime = get_target(recipe.target).runtime
    if runtime not in FORMATS:
        return [Load()]
    fmt, int8 = FORMATS[runtime]
    return [Load(), UltralyticsExport(fmt, runtime, "fp32"),
            *([UltralyticsExport(fmt, runtime, "int8", quantize=8, data=recipe.data)] if int8 else [])]


def has_references(target: str) -> bool:
    return get_target(target).runtime in FORMATS
