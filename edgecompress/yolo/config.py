"""Fine-tuning settings: the schedules (what each is for is measured in BENCHMARKS.md, "Pruning") and the
recipe's `finetune` section. Light: no torch, so a recipe validates without loading the training stack.

- `recover`: for a model pruning damaged. Ultralytics' schedule (3 warm-up epochs whose bias lr starts at 0.1, lrf
  0.01) with AdamW at 5e-4, and an optimizer step per batch of 8, so a few epochs on a small dataset make enough
  steps. The warm-up's bias lr helps a pruned model re-centre; Ultralytics sets it to 0 only when it picks AdamW.
- `preserve`: for a model that is nearly intact. AdamW 1e-5 without warm-up, BatchNorm statistics frozen: the
  warm-up destroys a trained model within an epoch, and statistics re-estimated over a few augmented batches cost
  about half a point on their own.
- `auto`: evaluate the model and the unpruned reference first, and preserve when within `preserve_within` points.

`epochs: auto` fine-tunes until recovered: it stops once the validation mAP50-95 is within `recovered_within` points of
the unpruned model (evaluated at the same image size), or after `patience` epochs without a new best, and at
`max_epochs` at the latest. Short fixed runs stop while mAP is still rising (BENCHMARKS.md, "yolo11n-bccd at -35%":
-1.3 points after 5 epochs, -0.45 after 10).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from edgecompress.config import require

Schedule = Literal["auto", "recover", "preserve"]
SCHEDULES: dict[str, dict[str, Any]] = {
    "recover": {"optimizer": "AdamW", "lr0": 5e-4, "lrf": 0.01, "warmup_epochs": 3.0, "warmup_bias_lr": 0.1,
                "freeze_bn": False, "batch": 8, "nbs": 8},
    "preserve": {"optimizer": "AdamW", "lr0": 1e-5, "lrf": 0.1, "warmup_epochs": 0.0, "warmup_bias_lr": 0.0,
                 "freeze_bn": True, "batch": 16, "nbs": 64},
}


@dataclass(frozen=True)
class FinetuneConfig:
    """`epochs`: fine-tuning epochs after pruning (0 = none); `schedule` sets the optimizer, lr0, lrf,
    warmup_epochs, freeze_bn, batch and nbs that are left unset (None); the rest are Ultralytics' trainer settings."""

    epochs: int | Literal["auto"] = "auto"  # the stage runs after pruning, so `--prune X` alone also fine-tunes
    unpruned: bool = False  # fine-tune an unpruned model too: at an image size below its training size, it adapts
    max_epochs: int = 30  # epochs: auto: the ceiling (the trainer's schedule spans it)
    # epochs: auto: mAP50-95 points below the unpruned model that count as recovered; negative: that many above it
    # (what `compress search` asks of a candidate whose goal lies above the unpruned model at its image size)
    recovered_within: float = 0.5
    patience: int = 3  # epochs: auto: stop after this many epochs without a new best val mAP50-95
    schedule: Schedule = "auto"
    preserve_within: float = 1.0  # auto: mAP50-95 points below the reference within which to preserve
    optimizer: Literal["AdamW", "Adam", "SGD", "auto"] | None = None  # auto: Ultralytics picks by run length
    lr0: float | None = None
    lrf: float | None = None  # final lr = lr0 * lrf (linear decay)
    warmup_epochs: float | None = None
    warmup_bias_lr: float | None = None  # the biases' lr at the first step, falling to lr0 over the warm-up
    freeze_bn: bool | None = None  # keep BatchNorm running statistics as loaded (scale and shift still train)
    mosaic: float = 1.0
    close_mosaic: int = 10  # last epochs without mosaic (Ultralytics' default): short runs see no mosaic at all
    batch: int | None = None
    nbs: int | None = None  # nominal batch: gradients of nbs / batch batches accumulate into each optimizer step
    workers: int = 2
    distill: float = 0.0  # weight of distillation from the unpruned reference (OutputDistillation); 0 = off
    seed: int = 0

    def __post_init__(self) -> None:
        require(self.epochs == "auto" or self.epochs >= 0,
                f"finetune.epochs must be >= 0 or auto (until recovered), got {self.epochs!r}")
        require(self.max_epochs >= 1, f"finetune.max_epochs must be >= 1, got {self.max_epochs}")
        require(-100 < self.recovered_within <= 100,
                f"finetune.recovered_within is in mAP50-95 points, within (-100, 100]; got {self.recovered_within}")
        require(self.patience >= 1, f"finetune.patience must be >= 1 epoch, got {self.patience}")
        require(self.schedule in SCHEDULES or self.schedule == "auto",
                f"finetune.schedule must be auto, recover or preserve; got {self.schedule!r}")
        require(self.preserve_within >= 0, f"finetune.preserve_within must be >= 0 points, got {self.preserve_within}")
        require(self.lr0 is None or 0 < self.lr0 < 1, f"finetune.lr0 must be in (0, 1), got {self.lr0}; try 0.0001")
        require(self.lrf is None or 0 < self.lrf <= 1,
                f"finetune.lrf is the final lr fraction, in (0, 1]; got {self.lrf}")
        require(self.warmup_epochs is None or self.warmup_epochs >= 0,
                f"finetune.warmup_epochs must be >= 0, got {self.warmup_epochs}")
        require(0 <= self.mosaic <= 1, f"finetune.mosaic is a probability in [0, 1], got {self.mosaic}")
        require(self.close_mosaic >= 0, f"finetune.close_mosaic must be >= 0, got {self.close_mosaic}")
        require(self.batch is None or self.batch >= 1, f"finetune.batch must be >= 1, got {self.batch}")
        require(self.nbs is None or self.nbs >= 1,
                f"finetune.nbs must be >= 1, got {self.nbs}; write the batch size for no accumulation")
        require(self.workers >= 0, f"finetune.workers must be >= 0, got {self.workers}")
        require(self.distill >= 0, f"finetune.distill is a loss weight and must be >= 0, got {self.distill}")

    def runs(self, pruned: bool) -> bool:
        """Whether the pipeline fine-tunes: after pruning, or always where `unpruned`, unless epochs is 0."""
        return bool(self.epochs) and (pruned or self.unpruned)

    @property
    def ceiling(self) -> int:
        """The most epochs it trains: the trainer's epochs."""
        return self.max_epochs if self.epochs == "auto" else self.epochs

    def settings(self, schedule: str) -> dict[str, Any]:
        """The schedule's optimizer settings, with those this config sets explicitly."""
        chosen = SCHEDULES[schedule]
        return {k: default if (v := getattr(self, k)) is None else v for k, default in chosen.items()}
