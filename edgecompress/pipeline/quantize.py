"""INT8 quantization per target (implemented by the quantization issue; the recipe section is here)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

QuantMode = Literal["none", "ptq", "qat"]


@dataclass(frozen=True)
class QuantConfig:
    """`mode`: none (FP32), ptq (post-training INT8 with calibration) or qat (quantization-aware training)."""

    mode: QuantMode = "none"

    @property
    def enabled(self) -> bool:
        return self.mode != "none"
