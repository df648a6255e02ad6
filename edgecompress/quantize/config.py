"""The recipe's `quant` section: post-training quantization (calibration, fallback) or quantization-aware
training. Light: no torch or runtime at import."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from edgecompress.calibration.ranges import METHODS
from edgecompress.config import require
from edgecompress.quantize.quantizers import QUANTIZERS

QuantMode = Literal["none", "ptq", "qat"]


@dataclass(frozen=True)
class QATConfig:
    """Fake-quantized fine-tuning: short, at a small learning rate, from the already trained weights.

    An optimizer step per batch (`nbs` = `batch`) and frozen BatchNorm statistics: Ultralytics' nominal batch of 64
    accumulates 8 batches into each step, which leaves a few epochs on a small dataset too few steps. Distillation
    from the float model (`distill`) holds the fine-tuning to what the model did before. Both are measured in
    BENCHMARKS.md ("QAT against PTQ", "QAT distilled from the float model").
    """

    epochs: int = 3
    lr0: float = 1e-4
    batch: int = 8
    nbs: int = 8  # nominal batch: an optimizer step per nbs / batch batches (Ultralytics' gradient accumulation)
    calibration_batches: int = 8  # batches that set the fake quantizers' ranges before training
    freeze_bn: bool = True  # keep BatchNorm running statistics as loaded while training
    distill: float = 1.0  # weight of distillation from the float model (finetune.OutputDistillation); 0 = off

    def __post_init__(self) -> None:
        require(self.epochs >= 1, f"quant.qat.epochs must be >= 1, got {self.epochs}")
        require(0 < self.lr0 < 0.1, f"quant.qat.lr0 must be in (0, 0.1), got {self.lr0}; "
                                    f"QAT starts from trained weights, write e.g. 0.0001")
        require(self.batch >= 1, f"quant.qat.batch must be >= 1, got {self.batch}")
        require(self.nbs >= 1, f"quant.qat.nbs must be >= 1, got {self.nbs}; write the batch for no accumulation")
        require(self.calibration_batches >= 1,
                f"quant.qat.calibration_batches must be >= 1, got {self.calibration_batches}")
        require(self.distill >= 0, f"quant.qat.distill is a loss weight and must be >= 0, got {self.distill}")


@dataclass(frozen=True)
class QuantConfig:
    """`mode`: none (FP32), ptq (post-training INT8 with calibration) or qat (quantization-aware training).

    The scheme follows the target (its Int8Rules) unless `activations` overrides it; weights are always
    symmetric int8, per output channel unless `per_channel` is false.
    """

    # None: the target's preset (ptq where it runs INT8, else none); none keeps the target's float precision
    mode: QuantMode | None = None
    # activation ranges: auto (every method in calibration.ranges.METHODS tried, the most accurate kept) or one
    method: str = "auto"
    percentile: float = 99.999  # for method percentile: the share of values kept inside the range
    activations: Literal["target", "symmetric", "asymmetric"] = "target"
    per_channel: bool = True
    calibration_images: int = 300  # drawn from the train split; fewer give ranges that vary with the draw
    seed: int = 0
    max_map_drop: float = 1.0  # mAP50-95 points the INT8 model may lose before layers fall back to float
    max_float_layers: int = 16  # the fallback keeps at most this many layers in float
    quantizer: str = "auto"  # auto: every quantizer the target has (x86: nncf and qdq), the better kept
    qat: QATConfig = field(default_factory=QATConfig)

    def __post_init__(self) -> None:
        if self.method != "auto":
            METHODS[self.method]  # an unknown name fails here, with the closest one suggested
        require(50.0 < self.percentile <= 100.0,
                f"quant.percentile must be in (50, 100], got {self.percentile}; write e.g. 99.999")
        require(self.calibration_images >= 1,
                f"quant.calibration_images must be >= 1, got {self.calibration_images}; write e.g. 300")
        require(self.max_map_drop >= 0, f"quant.max_map_drop must be >= 0 points, got {self.max_map_drop}")
        require(self.max_float_layers >= 0, f"quant.max_float_layers must be >= 0, got {self.max_float_layers}")
        require(self.quantizer == "auto" or self.quantizer in QUANTIZERS,
                f"quant.quantizer {self.quantizer!r} is unknown; write auto or one of {', '.join(QUANTIZERS)}")

    @property
    def enabled(self) -> bool:
        return self.mode not in ("none", None)
