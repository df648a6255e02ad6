"""Fine-tuning of a (pruned) model through Ultralytics' DetectionTrainer, keeping the pruned architecture.

`YOLO(pt).train()` rebuilds the model from its yaml and copies only tensors whose shapes match, so a pruned
model grows back to full width. Here the trainer starts from a checkpoint file of the pruned module and its
`get_model` returns that module as loaded: nothing is rebuilt. Because the trainer's input is a file, the same
holds when Ultralytics re-creates the trainer in a DDP subprocess.

The defaults are chosen for fine-tuning a trained detector, not training from scratch, and were measured
(BENCHMARKS.md, "Pruning"): a learning rate that suits training destroys a trained model within one epoch
(AdamW 1e-3: -44.9 mAP50-95 points; Ultralytics' own schedule, AdamW 0.0014 with warm-up: -57); AdamW 1e-4
without warm-up lost 0.27 to 1.05 points (three seeds; the trainer alone at lr 1e-9 lost 0.44 and 0.55, its
BatchNorm statistics re-estimated). Ultralytics' schedule recovers a pruned model further in the same 5 epochs
(-35% FLOPs: 0.608 against 0.585), and a recipe may choose it:
`finetune: {optimizer: auto, lr0: 0.01, lrf: 0.01, warmup_epochs: 3, close_mosaic: 10}`.
"""

from __future__ import annotations

import csv
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator, Literal
from unittest import mock

import torch
import ultralytics.engine.trainer as _ul_trainer
from torch import nn
from ultralytics.cfg import get_cfg
from ultralytics.data import build_dataloader, build_yolo_dataset
from ultralytics.data.utils import check_det_dataset
from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.nn.tasks import DetectionModel, load_checkpoint
from ultralytics.utils.torch_utils import unwrap_model

from edgecompress.pipeline.config import require
from edgecompress.pipeline.yolo import evaluate, save_checkpoint


@dataclass(frozen=True)
class FinetuneConfig:
    """`epochs`: fine-tuning epochs after pruning (0 = none); the rest are Ultralytics' trainer settings."""

    epochs: int = 5  # the fine-tune stage runs only after pruning, so `--prune X` alone also fine-tunes
    optimizer: Literal["AdamW", "Adam", "SGD", "auto"] = "AdamW"  # auto: Ultralytics picks by run length
    lr0: float = 0.0001  # measured (BENCHMARKS.md): 1e-3 took yolov8n-bccd from 0.604 to 0.155 in one epoch
    lrf: float = 0.1  # final lr = lr0 * lrf (linear decay)
    warmup_epochs: float = 0.0  # Ultralytics' warm-up raises the bias lr to 0.1: fatal to a trained model
    mosaic: float = 1.0
    close_mosaic: int = 1  # last epochs without mosaic, so the model ends on images like the val split
    batch: int = 16
    workers: int = 2
    distill: float = 0.0  # weight of the distillation loss from the unpruned teacher (Ultralytics' `dis`); 0 = off
    seed: int = 0

    def __post_init__(self) -> None:
        require(self.epochs >= 0, f"finetune.epochs must be >= 0, got {self.epochs}")
        require(0 < self.lr0 < 1, f"finetune.lr0 must be in (0, 1), got {self.lr0}; try 0.0001 (AdamW)")
        require(0 < self.lrf <= 1, f"finetune.lrf is the final lr fraction, in (0, 1]; got {self.lrf}")
        require(self.warmup_epochs >= 0, f"finetune.warmup_epochs must be >= 0, got {self.warmup_epochs}")
        require(0 <= self.mosaic <= 1, f"finetune.mosaic is a probability in [0, 1], got {self.mosaic}")
        require(self.close_mosaic >= 0, f"finetune.close_mosaic must be >= 0, got {self.close_mosaic}")
        require(self.batch >= 1, f"finetune.batch must be >= 1, got {self.batch}")
        require(self.workers >= 0, f"finetune.workers must be >= 0, got {self.workers}")
        require(self.distill >= 0, f"finetune.distill is a loss weight and must be >= 0, got {self.distill}")


class KeepModelTrainer(DetectionTrainer):
    """A DetectionTrainer that trains the module in its checkpoint as it is (no rebuild from yaml).

    `regulariser`, when given, is called with the trained module and returns a function applied to it after
    each backward pass, before the optimizer step (torch-pruning's sparsity regularisation).
    `qat_batches` > 0 (with the trainer argument quantize=8): Ultralytics' quantization-aware training, its
    fake quantizers' ranges calibrated on that many train batches before the first step.
    """

    regulariser: Callable[[nn.Module], Callable[[nn.Module], None]] | None = None
    qat_batches: int = 0

    def get_model(self, cfg=None, weights=None, verbose=True):
        if not isinstance(weights, nn.Module):
            raise TypeError("KeepModelTrainer trains the module of a checkpoint; pass model=<path to .pt>")
        return weights

    def _setup_train(self):
        # Ultralytics calls prepare_qat with its fixed 8 calibration batches; pass ours instead
        calibrate = partial(_ul_trainer.prepare_qat, batches=self.qat_batches)
        with mock.patch.object(_ul_trainer, "prepare_qat", calibrate) if self.qat_batches else nullcontext():
            super()._setup_train()
        module = unwrap_model(self.model)
        self._regularise = type(self).regulariser(module) if type(self).regulariser else None

    def optimizer_step(self):
        if self._regularise:
            self._regularise(unwrap_model(self.model))
        super().optimizer_step()


def finetune(model: DetectionModel, config: FinetuneConfig, data: str, imgsz: int, device: str, workdir: Path,
             teacher: DetectionModel | None = None,
             regulariser: Callable[[nn.Module], Callable[[nn.Module], None]] | None = None,
             qat_batches: int = 0) -> tuple[DetectionModel, dict]:
    """Train `model` for `config.epochs`; returns the best epoch's model (by val fitness) and a JSON-able info.

    `qat_batches` > 0 trains with INT8 fake quantization (see KeepModelTrainer); the returned model then carries
    its quantizers and their ranges (edgecompress.pipeline.quantize.qat exports it)."""
    workdir = Path(workdir).resolve()  # Ultralytics files a relative project under ./runs/detect
    if config.epochs == 0:
        return model, {"epochs": 0}
    workdir.mkdir(parents=True, exist_ok=True)
    start = workdir / "start.pt"
    save_checkpoint(model, start, half=False)
    overrides = {
        "model": str(start), "data": str(data), "imgsz": imgsz, "epochs": config.epochs, "batch": config.batch,
        "device": device, "workers": config.workers, "project": str(workdir), "name": "train", "exist_ok": True,
        "optimizer": config.optimizer, "lr0": config.lr0, "lrf": config.lrf,
        "warmup_epochs": config.warmup_epochs, "mosaic": config.mosaic, "close_mosaic": config.close_mosaic,
        "seed": config.seed, "plots": False, "amp": False, "verbose": False, "val": True,
    }
    if config.distill:
        require(teacher is not None, "finetune.distill needs the unpruned teacher model; set finetune.distill: 0")
        save_checkpoint(teacher, workdir / "teacher.pt", half=False)
        overrides.update(distill_model=str(workdir / "teacher.pt"), dis=config.distill)
    if qat_batches:
        overrides["quantize"] = 8
    trainer_cls = type("Trainer", (KeepModelTrainer,), {"regulariser": staticmethod(regulariser),
                                                        "qat_batches": qat_batches}) \
        if regulariser or qat_batches else KeepModelTrainer
    trainer = trainer_cls(overrides=overrides)
    t0 = time.time()
    trainer.train()
    best, _ = load_checkpoint(trainer.best if trainer.best.exists() else trainer.last)
    best = getattr(best, "student_model", best)  # a distillation checkpoint holds the student inside
    info = {"config": asdict(config), "seconds": round(time.time() - t0, 1), "epochs_log": _results(trainer.csv)}
    return best.float().eval(), info


def _results(path: Path) -> list[dict[str, float]]:
    if not path.exists():
        return []
    with open(path) as f:
        return [{k.strip(): float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def evaluate_model(model: DetectionModel, data: str, imgsz: int, device: str, workdir: Path) -> dict[str, Any]:
    """mAP of a PyTorch model on the val split, measured exactly as the runner's evaluate stage does."""
    return evaluate(model, data, imgsz, "val", 0.001, 0.7, device, Path(workdir).resolve())


def train_batches(data: str, imgsz: int, count: int, batch: int = 8) -> Iterator[dict[str, torch.Tensor]]:
    """`count` preprocessed, un-augmented batches of the train split (for importance scoring)."""
    info = check_det_dataset(str(data), autodownload=False)
    cfg = get_cfg(overrides={"imgsz": imgsz, "data": str(data)})
    dataset = build_yolo_dataset(cfg, info["train"], batch, info, mode="val", stride=32)
    loader = build_dataloader(dataset, batch, workers=0, shuffle=True)
    for i, b in enumerate(loader):
        if i >= count:
            return
        b["img"] = b["img"].float() / 255
        yield b
