"""Fine-tuning of a (pruned) model through Ultralytics' DetectionTrainer, keeping the pruned architecture.

`YOLO(pt).train()` rebuilds the model from its yaml and copies only tensors whose shapes match, so a pruned
model grows back to full width. Here the trainer starts from a checkpoint file of the pruned module and its
`get_model` returns that module as loaded: nothing is rebuilt. Because the trainer's input is a file, the same
holds when Ultralytics re-creates the trainer in a DDP subprocess.

Two schedules, measured (BENCHMARKS.md, "Pruning"), and `auto` (the default) picks one by the damage it measures:
- `recover`: Ultralytics' schedule (3 warm-up epochs whose bias lr starts at 0.1, lrf 0.01) with AdamW at 5e-4
  rather than its fitted rate (1.4e-3 on bccd). At -35% FLOPs, 5 epochs: yolo11n-bccd 0.568 and 0.571 mAP50-95
  against 0.536 to 0.541 at the fitted rate; yolov8n-bccd 0.598 against 0.600 and 0.608 (noise is about 1 point).
  Ultralytics' schedule recovers pruned models far better than AdamW 1e-4 without warm-up (0.585), and destroys an
  intact model within one epoch (-57 points). An optimizer step per batch of 8 (batch 8, nbs 8): Ultralytics'
  batch of 16 with its nominal batch of 64 makes 5 epochs on bccd about 22 optimizer steps; 130 steps took the
  very same pruned models from 0.566 to 0.591 (yolo11n-bccd, -35% FLOPs) and from 0.586 (65 steps) to 0.602
  (yolov8n-bccd, -50%). Batch 4 (260 steps) gained nothing more (0.588). The warm-up's bias lr of 0.1
  (Ultralytics sets 0 only when it picks AdamW itself) helps a pruned model re-centre: 0 and 0.2 gave 0.573 and
  0.575 on that yolo11n model.
- `preserve`, AdamW 1e-5 without warm-up and with BatchNorm statistics frozen: one epoch on the unpruned
  yolov8n-bccd lost 0.08, 0.00 and 0.28 points (three seeds). Updated statistics, re-estimated over a few
  augmented batches, cost about half a point on their own (lr 1e-9: 0.44 and 0.55; frozen: 0.00). Frozen
  statistics need small steps: with AdamW 1e-3 a pruned model was destroyed.
`auto` evaluates the model and the unpruned reference on the val split first and preserves when the model is within
`preserve_within` points of it, else recovers.
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
import torch.nn.functional as F
import ultralytics.engine.trainer as _ul_trainer
from torch import nn
from ultralytics.cfg import get_cfg
from ultralytics.data import build_dataloader, build_yolo_dataset
from ultralytics.data.utils import check_det_dataset
from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.nn.distill_model import DistillationModel
from ultralytics.nn.tasks import DetectionModel, load_checkpoint
from ultralytics.utils.torch_utils import unwrap_model

from edgecompress.pipeline.config import require
from edgecompress.pipeline.yolo import evaluate, save_checkpoint


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

    epochs: int = 5  # the fine-tune stage runs only after pruning, so `--prune X` alone also fine-tunes
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
        require(self.epochs >= 0, f"finetune.epochs must be >= 0, got {self.epochs}")
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

    def settings(self, schedule: str) -> dict[str, Any]:
        """The schedule's optimizer settings, with those this config sets explicitly."""
        chosen = SCHEDULES[schedule]
        return {k: default if (v := getattr(self, k)) is None else v for k, default in chosen.items()}


class OutputDistillation(DistillationModel):
    """Ultralytics' DistillationModel with its loss on the head's outputs instead of the neck's features.

    Ultralytics distils neck features through a projector that starts untrained, and a short fine-tune spends its
    few steps fitting it: at its default weight it cost the pruned yolo11n-bccd 13 points (BENCHMARKS.md). A pruned
    or fake-quantized student keeps its teacher's head layout (classes, DFL bins, anchors), so the raw outputs
    compare directly: the class logits against the teacher's probabilities as soft targets, normalised like
    Ultralytics' class loss, and the box distributions by KL divergence, weighted by the teacher's confidence like
    its box loss. Measured (BENCHMARKS.md): in QAT, distilled from the float model, it recovered all of PTQ's loss
    on yolo11n-bccd and cost yolov8n-bccd 0.3 to 0.6 points (quant.qat.distill); recovering a pruned model it tied
    with no distillation after 5 epochs, so finetune.distill stays off. Subclassing keeps Ultralytics' trainer, EMA
    and checkpoints treating it as their distillation model; the parent's feature hooks and projector go unused.
    """

    def loss(self, batch, preds=None):
        if not self.training:
            return super().loss(batch, preds)
        with torch.no_grad():
            _, teacher = self.teacher_model(batch["img"])  # in eval mode: (decoded, raw outputs)
        preds = self.student_model(batch["img"])
        regular, items = self.student_model.loss(batch, preds)
        distill = self.dis * sum(_output_distillation(s, t) for s, t in zip(_branches(preds), _branches(teacher)))
        items["dis_loss"] = distill.detach().reshape(1)
        return torch.cat([regular, (distill * batch["img"].shape[0]).reshape(1)]), items


def _branches(raw: dict[str, Any]) -> list[dict[str, torch.Tensor]]:
    """The raw output dicts of a head: one, or an end-to-end head's one-to-many and one-to-one."""
    return [raw["one2many"], raw["one2one"]] if "one2many" in raw else [raw]


def _output_distillation(student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor]) -> torch.Tensor:
    probs = teacher["scores"].sigmoid()  # (B, classes, anchors)
    weight = probs.amax(1)  # (B, anchors)
    cls = F.binary_cross_entropy_with_logits(student["scores"], probs, reduction="sum") / probs.sum().clamp(min=1)
    b, channels, anchors = teacher["boxes"].shape
    if channels == 4:  # no DFL (YOLO26): the box regressions themselves
        per_anchor = F.smooth_l1_loss(student["boxes"], teacher["boxes"], reduction="none").sum(1)
    else:
        bins = (b, 4, channels // 4, anchors)
        per_anchor = F.kl_div(student["boxes"].view(bins).log_softmax(2), teacher["boxes"].view(bins).log_softmax(2),
                              log_target=True, reduction="none").sum((1, 2))
    return cls + (per_anchor * weight).sum() / weight.sum().clamp(min=1)


class KeepModelTrainer(DetectionTrainer):
    """A DetectionTrainer that trains the module in its checkpoint as it is (no rebuild from yaml).

    `regulariser`, when given, is called with the trained module and returns a function applied to it after
    each backward pass, before the optimizer step (torch-pruning's sparsity regularisation).
    `qat_batches` > 0 (with the trainer argument quantize=8): Ultralytics' quantization-aware training, its
    fake quantizers' ranges calibrated on that many train batches before the first step.
    """

    regulariser: Callable[[nn.Module], Callable[[nn.Module], None]] | None = None
    qat_batches: int = 0
    freeze_bn: bool = False

    def get_model(self, cfg=None, weights=None, verbose=True):
        if not isinstance(weights, nn.Module):
            raise TypeError("KeepModelTrainer trains the module of a checkpoint; pass model=<path to .pt>")
        return weights

    def _setup_train(self):
        # Ultralytics calls prepare_qat with its fixed 8 calibration batches; pass ours instead
        calibrate = partial(_ul_trainer.prepare_qat, batches=self.qat_batches)
        with mock.patch.object(_ul_trainer, "prepare_qat", calibrate) if self.qat_batches else nullcontext(), \
                mock.patch.object(_ul_trainer, "DistillationModel", OutputDistillation):
            super()._setup_train()
        module = unwrap_model(self.model)
        self._regularise = type(self).regulariser(module) if type(self).regulariser else None

    def _model_train(self):
        super()._model_train()
        if self.freeze_bn:
            for m in self.model.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()

    def optimizer_step(self):
        if self._regularise:
            self._regularise(unwrap_model(self.model))
        super().optimizer_step()


def finetune(model: DetectionModel, config: FinetuneConfig, data: str, imgsz: int, device: str, workdir: Path,
             reference: DetectionModel | None = None,
             regulariser: Callable[[nn.Module], Callable[[nn.Module], None]] | None = None,
             qat_batches: int = 0) -> tuple[DetectionModel, dict]:
    """Train `model` for `config.epochs`; returns the best epoch's model (by val fitness) and a JSON-able info.

    `reference` is the unpruned model: the yardstick of schedule auto, and the teacher when `config.distill`.
    `qat_batches` > 0 trains with INT8 fake quantization (see KeepModelTrainer); the returned model then carries
    its quantizers and their ranges (edgecompress.pipeline.quantize.qat exports it)."""
    workdir = Path(workdir).resolve()  # Ultralytics files a relative project under ./runs/detect
    if config.epochs == 0:
        return model, {"epochs": 0}
    workdir.mkdir(parents=True, exist_ok=True)
    schedule, chosen = _choose_schedule(model, config, reference, data, imgsz, device, workdir)
    settings = config.settings(schedule)
    start = workdir / "start.pt"
    save_checkpoint(model, start, half=False)
    overrides = {
        "model": str(start), "data": str(data), "imgsz": imgsz, "epochs": config.epochs,
        "device": device, "workers": config.workers, "project": str(workdir), "name": "train", "exist_ok": True,
        **{k: v for k, v in settings.items() if k != "freeze_bn"}, "mosaic": config.mosaic,
        "close_mosaic": config.close_mosaic, "seed": config.seed, "plots": False, "amp": False, "verbose": False,
        "val": True,
    }
    if config.distill:
        require(reference is not None, "finetune.distill needs the unpruned model as teacher; set finetune.distill: 0")
        save_checkpoint(reference, workdir / "teacher.pt", half=False)
        overrides.update(distill_model=str(workdir / "teacher.pt"), dis=config.distill)
    if qat_batches:
        overrides["quantize"] = 8
    trainer_cls = type("Trainer", (KeepModelTrainer,), {"regulariser": staticmethod(regulariser),
                                                        "qat_batches": qat_batches, "freeze_bn": settings["freeze_bn"]})
    trainer = trainer_cls(overrides=overrides)
    t0 = time.time()
    trainer.train()
    best, _ = load_checkpoint(trainer.best if trainer.best.exists() else trainer.last)
    best = getattr(best, "student_model", best)  # a distillation checkpoint holds the student inside
    info = {"config": asdict(config), "schedule": {**chosen, "settings": settings},
            "seconds": round(time.time() - t0, 1), "epochs_log": _results(trainer.csv)}
    return best.float().eval(), info


def _choose_schedule(model: DetectionModel, config: FinetuneConfig, reference: DetectionModel | None, data: str,
                     imgsz: int, device: str, workdir: Path) -> tuple[str, dict[str, Any]]:
    if config.schedule != "auto":
        return config.schedule, {"name": config.schedule}
    require(reference is not None, "finetune.schedule auto compares the model with the unpruned one, and none was "
                                   "given; set finetune.schedule: recover (after pruning) or preserve")
    ref = evaluate_model(reference, data, imgsz, device, workdir / "eval_reference")["map50_95"]
    now = ref if reference is model else evaluate_model(model, data, imgsz, device, workdir / "eval_start")["map50_95"]
    below = round(100 * (ref - now), 2)
    name = "preserve" if below <= config.preserve_within else "recover"
    return name, {"name": name, "auto": {"reference_map50_95": ref, "start_map50_95": now, "points_below": below}}


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
