"""Structured pruning with torch-pruning (implemented by the pruning issue; the recipe section is here)."""

from __future__ import annotations

from dataclasses import dataclass

from edgecompress.pipeline.config import require


@dataclass(frozen=True)
class PruneConfig:
    """`flops`: the fraction of FLOPs to remove (0 = no pruning)."""

    flops: float = 0.0

    def __post_init__(self) -> None:
        require(0.0 <= self.flops < 1.0, f"prune.flops is the fraction of FLOPs to remove, in [0, 1); got {self.flops}")

    @property
    def enabled(self) -> bool:
        return self.flops > 0
