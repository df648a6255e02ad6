"""Fine-tuning of a (pruned) model through Ultralytics' DetectionTrainer, keeping the pruned architecture.

`YOLO(pt).train()` rebuilds the model from its yaml and copies only tensors whose shapes match, so a pruned
model grows back to full width. Here the trainer starts from a checkpoint file of the pruned module and its
`get_model` returns that module as loaded: nothing is rebuilt. Because the trainer's input is a file, the same
holds when Ultralytics re-creates the trainer in a DDP subprocess. The schedules are in edgecompress.yolo.config.
"""

from __future__ import annotations

import copy
import csv
import errno
import resource
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from ultralytics.engine.trainer import prepare_qat
from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.nn.distill_model import DistillationModel
from ultralytics.nn.tasks import DetectionModel, load_checkpoint
from ultralytics.utils.torch_utils import unwrap_model

from edgecompress import progress
from edgecompress.config import require
from edgecompress.errors import UserError, causes
from edgecompress.yolo.config import FinetuneConfig
from edgecompress.yolo.model import Evaluator, save_checkpoint

Regulariser = Callable[[nn.Module], Callable[[nn.Module], None]]


class OutputDistillation(DistillationModel):
    """Ultralytics' DistillationModel with its loss on the head's outputs instead of the neck's features.

    Ultralytics distils neck features through a projector that starts untrained, and a short fine-tune spends its
    few steps fitting it (BENCHMARKS.md, "QAT distilled from the float model"). A pruned or fake-quantized student
    keeps its teacher's head layout (classes, DFL bins, anchors), so the raw outputs compare directly: the class
    logits against the teacher's probabilities as soft targets, normalised like Ultralytics' class loss, and the box
    distributions by KL divergence, weighted by the teacher's confidence like its box loss. Subclassing keeps
    Ultralytics' trainer, EMA and checkpoints treating it as their distillation model; the parent's feature hooks
    and projector go unused.
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
    `qat_batches` > 0: Ultralytics' quantization-aware training (its `prepare_qat`, as `train(quantize=8)` does),
    the fake quantizers' ranges calibrated on that many train batches rather than its fixed 8.
    With the `distill_model` argument, the model is wrapped in OutputDistillation here, so Ultralytics (which wraps
    only a model that is not a DistillationModel yet) keeps it.
    """

    regulariser: Regulariser | None = None
    qat_batches: int = 0
    freeze_bn: bool = False

    def get_model(self, cfg=None, weights=None, verbose=True):
        if not isinstance(weights, nn.Module):
            raise TypeError("KeepModelTrainer trains the module of a checkpoint; pass model=<path to .pt>")
        for name, p in weights.named_parameters():  # checkpoints load frozen; train all but the fixed DFL decode
            p.requires_grad_(".dfl" not in name)
        return weights

    def setup_model(self):
        ckpt = super().setup_model()
        self.set_model_attributes()  # the student's own args (its loss reads them), before anything wraps it
        if self.qat_batches:
            loader = self.get_dataloader(self.data["train"], batch_size=self.batch_size, rank=-1, mode="train")
            self.model = self.model.to(self.device)  # calibration batches are moved there
            self.model = prepare_qat(self.model, loader, self.preprocess_batch, batches=self.qat_batches)
        if self.args.distill_model is not None:
            self.model = OutputDistillation(student_model=self.model, teacher_model=self.args.distill_model)
        return ckpt

    def _setup_train(self):
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


def finetune(model: DetectionModel, config: FinetuneConfig, evaluate: Evaluator, workdir: Path,
             reference: DetectionModel | None = None, regulariser: Regulariser | None = None,
             qat_batches: int = 0) -> tuple[DetectionModel, dict]:
    """Train `model` for `config.epochs` (or until recovered: `epochs: auto`) on the train split of the evaluator's
    dataset, at its image size and on its device; returns the best epoch's model (by val fitness) and a JSON-able info.
    Where the schedule measured the starting model (auto schedule or epochs), the best epoch is measured too and the
    starting model returned when it is better (info["kept_start"]): a warm-up can damage a model beyond what a few
    epochs on a small dataset repair.

    `reference` is the unpruned model: the yardstick of schedule auto and of epochs auto (measured with `evaluate`),
    and the teacher when `config.distill`. `qat_batches` > 0 trains with INT8 fake quantization (see
    KeepModelTrainer); the returned model then carries its quantizers and their ranges (edgecompress.quantize.qat
    exports it)."""
    workdir = Path(workdir).resolve()  # Ultralytics files a relative project under ./runs/detect
    if config.epochs == 0:
        return model, {"epochs": 0}
    workdir.mkdir(parents=True, exist_ok=True)
    schedule, chosen = _choose_schedule(model, config, reference, evaluate, workdir)
    settings = config.settings(schedule)
    start = workdir / "start.pt"
    save_checkpoint(model, start, half=False)
    overrides = {
        "model": str(start), "data": str(evaluate.dataset.yaml), "imgsz": evaluate.imgsz, "epochs": config.ceiling,
        "device": evaluate.device, "workers": config.workers, "project": str(workdir), "name": "train",
        "exist_ok": True,
        **{k: v for k, v in settings.items() if k != "freeze_bn"}, "mosaic": config.mosaic,
        "close_mosaic": config.close_mosaic, "seed": config.seed, "plots": False, "amp": False, "verbose": False,
        "val": True, **({"patience": config.patience} if config.epochs == "auto" else {}),
    }
    if config.distill:
        require(reference is not None, "finetune.distill needs the unpruned model as teacher; set finetune.distill: 0")
        save_checkpoint(reference, workdir / "teacher.pt", half=False)
        overrides.update(distill_model=str(workdir / "teacher.pt"), dis=config.distill)
    trainer_cls = type("Trainer", (KeepModelTrainer,), {"regulariser": staticmethod(regulariser),
                                                        "qat_batches": qat_batches, "freeze_bn": settings["freeze_bn"]})
    trainer = trainer_cls(overrides=overrides)
    stop = _Recovered(chosen["reference_map50_95"] - config.recovered_within / 100, evaluate, workdir) \
        if config.epochs == "auto" else None
    t0 = time.time()
    name = "QAT" if qat_batches else "fine-tune"
    with progress.task(name, total=config.ceiling, unit="epoch", each=True) as epochs:
        def epoch_end(t: Any) -> None:
            if stop:
                stop(t)
            epochs.advance(**{"loss": round(float(sum(t.tloss.values())), 3),
                              "val mAP50-95": round(t.metrics.get("metrics/mAP50-95(B)", 0), 4)})

        trainer.add_callback("on_fit_epoch_end", epoch_end)
        try:
            trainer.train()
        except Exception as e:
            if not isinstance(e, UserError) and (memory := _ran_out_of(e)):
                key = "quant.qat.batch" if qat_batches else "finetune.batch"
                smaller = f"set {key}: {trainer.batch_size // 2} in the recipe" if trainer.batch_size > 1 else \
                    "use a smaller imgsz"
                what = "QAT" if qat_batches else "fine-tuning"
                raise UserError(f"{what} ran out of {memory} at batch {trainer.batch_size} ({key}); {smaller} and "
                                f"rerun: the stages finished before it are reused") from e
            raise
    best, _ = load_checkpoint(trainer.best if trainer.best.exists() else trainer.last)
    best = getattr(best, "student_model", best).float().eval()  # a distillation checkpoint holds the student inside
    log = _results(trainer.csv)
    info = {"config": asdict(config), "schedule": {**chosen, "settings": settings},
            "seconds": round(time.time() - t0, 1), "epochs_log": log}
    if stop:
        info["stopped"] = stop.reason or (f"no new best in {config.patience} epochs" if len(log) < config.ceiling
                                          else f"the ceiling, {config.ceiling} epochs")
    if "start_map50_95" in chosen and not qat_batches:  # a QAT model must keep its quantizers
        reached = evaluate(best, workdir / "eval_best")["map50_95"]
        if reached < chosen["start_map50_95"]:
            info["kept_start"] = f"no epoch beat the starting model ({reached:.4f} < {chosen['start_map50_95']:.4f})"
            return model, info
    return best, info


class _Recovered:
    """An epoch-end callback that stops the trainer once its model reaches `goal` (epochs: auto). Ultralytics'
    validator during training scores the EMA weights in batches whose letterbox padding differs from the pipeline's
    batch 1, by a few tenths of a point either way; so when it says the goal is reached, the pipeline's evaluator
    measures the EMA weights, and only its figure stops the training."""

    def __init__(self, goal: float, evaluate: Evaluator, workdir: Path) -> None:
        self.goal, self.evaluate, self.workdir, self.reason = goal, evaluate, workdir, ""

    def __call__(self, trainer: Any) -> None:
        if self.reason or trainer.metrics.get("metrics/mAP50-95(B)", 0.0) < self.goal:
            return
        model = copy.deepcopy(trainer.ema.ema)
        model = getattr(model, "student_model", model).float().eval()  # a distillation wrapper holds the student
        reached = self.evaluate(model, self.workdir / f"eval_epoch{trainer.epoch + 1}")["map50_95"]
        if reached >= self.goal:
            self.reason = f"recovered at epoch {trainer.epoch + 1} ({reached:.4f} >= {self.goal:.4f})"
            trainer.stop = True


def _ran_out_of(error: BaseException) -> str | None:
    """Which memory ran out, if that is what ended `error`: the GPU's (torch.OutOfMemoryError), or the machine's:
    MemoryError, ENOMEM, PyTorch's or OpenCV's allocation failures (RuntimeErrors), or any error while the memory
    this process may use is (nearly) exhausted: oneDNN, which runs PyTorch's CPU convolutions, reports its failed
    allocations as "could not create a primitive"."""
    for e in causes(error):
        if isinstance(e, torch.OutOfMemoryError):
            return "GPU memory"
        if isinstance(e, MemoryError) or (isinstance(e, OSError) and e.errno == errno.ENOMEM) or \
                any(words in str(e) for words in ("can't allocate memory", "Insufficient memory")):
            return "memory"
    return "memory" if _memory_nearly_exhausted() else None


def _memory_nearly_exhausted() -> bool:
    """Less than a tenth of this process's address-space limit (ulimit -v), or a twentieth of the machine's memory, is
    left (Linux; elsewhere this cannot tell)."""
    status, meminfo = Path("/proc/self/status"), Path("/proc/meminfo")
    if not status.is_file():
        return False
    sizes = {line.split(":")[0]: int(line.split()[1]) * 1024 for path in (status, meminfo)
             for line in path.read_text().splitlines() if line.endswith(" kB")}
    limit, _ = resource.getrlimit(resource.RLIMIT_AS)
    if limit != resource.RLIM_INFINITY and limit - sizes["VmSize"] < limit / 10:
        return True
    return sizes["MemAvailable"] < sizes["MemTotal"] / 20


def _choose_schedule(model: DetectionModel, config: FinetuneConfig, reference: DetectionModel | None,
                     evaluate: Evaluator, workdir: Path) -> tuple[str, dict[str, Any]]:
    """The schedule, and what chose it: schedule auto and epochs auto both measure the unpruned reference."""
    if config.schedule != "auto" and config.epochs != "auto":
        return config.schedule, {"name": config.schedule}
    require(reference is not None, "finetune.schedule auto and finetune.epochs auto compare the model with the "
                                   "unpruned one, and none was given; set finetune.schedule: recover (after pruning) "
                                   "or preserve, and finetune.epochs to a number")
    ref = evaluate(reference, workdir / "eval_reference")["map50_95"]
    now = ref if reference is model else evaluate(model, workdir / "eval_start")["map50_95"]
    below = round(100 * (ref - now), 2)
    name = config.schedule if config.schedule != "auto" else "preserve" if below <= config.preserve_within else \
        "recover"
    return name, {"name": name, "reference_map50_95": ref, "start_map50_95": now, "points_below": below}


def _results(path: Path) -> list[dict[str, float]]:
    if not path.exists():
        return []
    with open(path) as f:
        return [{k.strip(): float(v) for k, v in row.items()} for row in csv.DictReader(f)]
