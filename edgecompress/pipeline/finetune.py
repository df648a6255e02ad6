"""Fine-tuning of a pruned model through Ultralytics' trainer (implemented by the pruning issue)."""

from __future__ import annotations

from dataclasses import dataclass

from edgecompress.pipeline.config import require


@dataclass(frozen=True)
class FinetuneConfig:
    """`epochs`: fine-tuning epochs after pruning (0 = none)."""

    epochs: int = 0

    def __post_init__(self) -> None:
        require(self.epochs >= 0, f"finetune.epochs must be >= 0, got {self.epochs}")
