"""Ultralytics models: load and save checkpoints safely, describe, evaluate (the one protocol) and export."""

from __future__ import annotations

import collections
import contextlib
import importlib
import os
import pathlib
import pickle
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ultralytics.engine.exporter import Exporter
from ultralytics.models.yolo.detect import DetectionValidator
from ultralytics.nn.tasks import DetectionModel, torch_safe_load
from ultralytics.utils import DEFAULT_CFG_DICT, YAML, IterableSimpleNamespace
from ultralytics.utils.torch_utils import get_flops

from edgecompress import logs, progress
from edgecompress.errors import UserError
from edgecompress.yolo.data import Dataset

UNSUPPORTED = {"SegmentationModel": "segmentation", "PoseModel": "pose", "OBBModel": "oriented-box",
               "ClassificationModel": "classification", "RTDETRDetectionModel": "RT-DETR"}


METADATA = "metadata.yaml"  # Ultralytics' metadata beside an exported ONNX, carried by what is converted from it
TRUST_ENV = "EDGECOMPRESS_TRUST_CHECKPOINT"  # "1": child processes (the benchmark) unpickle checkpoints fully too
MODEL_MODULES = ("torch.nn.modules.", "ultralytics.nn.modules.", "edgecompress.")
# The plain data, besides model classes, that Ultralytics pickles into checkpoints.
DATA_GLOBALS = {
    "ultralytics.utils.IterableSimpleNamespace": lambda: IterableSimpleNamespace,
    "collections.OrderedDict": lambda: collections.OrderedDict,
    "pathlib.PosixPath": lambda: pathlib.PosixPath,
    "pathlib.WindowsPath": lambda: pathlib.PosixPath,  # a checkpoint saved on Windows, read here
    "numpy.dtype": lambda: np.dtype,
    "numpy.core.multiarray.scalar": lambda: np.float64(0).__reduce__()[0],
    "numpy._core.multiarray.scalar": lambda: np.float64(0).__reduce__()[0],
}


def _allowed_global(name: str) -> object | None:
    """The object for a global a checkpoint names, if a detection checkpoint may hold it; else None."""
    if name in DATA_GLOBALS:
        return DATA_GLOBALS[name]()
    if name.startswith("numpy.dtypes.") and name.endswith("DType"):
        return getattr(np.dtypes, name.rpartition(".")[2], None)
    module, _, attr = name.rpartition(".")
    if module == "ultralytics.nn.tasks" or module.startswith(MODEL_MODULES):
        try:
            obj = getattr(importlib.import_module(module), attr, None)
        except ImportError:
            return None
        if isinstance(obj, type) and issubclass(obj, torch.nn.Module):
            return obj
    return None


def _read_checkpoint(path: Path, trust: bool) -> Any:
    """Unpickle a checkpoint: weights_only with exactly the globals a detection model needs, unless trusted."""
    if trust:
        return torch_safe_load(str(path), safe_only=False)[0]
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except (ValueError, RuntimeError) as e:
        raise UserError(f"checkpoint {path} is not a PyTorch checkpoint (truncated or another kind of file: "
                        f"{str(e).splitlines()[0]}); re-copy or re-export it from training") from None
    allowed = {name: _allowed_global(name) for name in names}
    refused = sorted(name for name, obj in allowed.items() if obj is None)
    if refused:
        raise UserError(
            f"checkpoint {path} references {', '.join(refused)}, which no Ultralytics detection checkpoint "
            f"holds; refusing to unpickle it, because unpickling can run code. Pass --trust-checkpoint only "
            f"if you trust where the file came from")
    with torch.serialization.safe_globals([(obj, name) for name, obj in allowed.items()]):
        return torch.load(str(path), map_location="cpu", weights_only=True)


def load_model(path: str | Path, trust: bool | None = None) -> DetectionModel:
    """Load an Ultralytics detection checkpoint as an FP32 eval-mode model, or raise a UserError saying why not.

    Untrusted (the default, unless `trust` or the TRUST_ENV variable says otherwise), the checkpoint is read with
    torch.load(weights_only=True) and an allow-list of model classes and plain data: a pickle that would run
    code on load is refused before anything in it runs.
    """
    path = Path(path)
    if trust is None:
        trust = os.environ.get(TRUST_ENV) == "1"
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; pass the path of your trained best.pt with --model")
    if path.suffix != ".pt":
        raise UserError(f"checkpoint {path} is not a .pt file; pass an Ultralytics PyTorch checkpoint (best.pt)")
    if path.stat().st_size == 0:
        raise UserError(f"checkpoint {path} is empty; re-copy or re-export it from training")
    try:
        ckpt = _read_checkpoint(path, trust)
    except (pickle.UnpicklingError, TypeError, ModuleNotFoundError, AttributeError, RuntimeError, EOFError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"checkpoint {path} cannot be loaded as an Ultralytics model: {first}") from None
    model = (ckpt.get("ema") or ckpt.get("model")) if isinstance(ckpt, dict) else None
    if not isinstance(model, torch.nn.Module):
        raise UserError(f"checkpoint {path} holds no Ultralytics model (no 'model' entry); pass the best.pt "
                        f"that Ultralytics' training wrote")
    if type(model) is not DetectionModel:  # subclasses (segment, pose, OBB, ...) have heads we do not handle
        kind = UNSUPPORTED.get(type(model).__name__, type(model).__name__)
        raise UserError(f"checkpoint {path} is a {kind} model; only detection models are supported yet")
    stored = {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(next(model.parameters()).dtype, "fp32")
    # What Ultralytics' load_checkpoint does after unpickling.
    model = model.float().eval()
    model.stored_precision = stored  # the checkpoint's weights, before the FP32 they are loaded in
    model.args = {**DEFAULT_CFG_DICT, **ckpt.get("train_args", {})}
    model.pt_path = str(path)
    model.task = "detect"
    if not hasattr(model, "stride"):
        model.stride = torch.tensor([32.0])
    return model


def save_checkpoint(model: DetectionModel, path: str | Path, half: bool = True) -> Path:
    """Save `model` as an Ultralytics checkpoint that `ultralytics.YOLO(path)` and `load_model` read back as is.

    The module itself is pickled (as Ultralytics does), so a pruned model keeps its pruned widths; FP16 like
    Ultralytics' own checkpoints unless `half` is False (exact weights for a checkpoint that is trained further).
    """
    from copy import deepcopy
    from datetime import datetime

    from ultralytics import __version__

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    saved = deepcopy(model).float()
    saved.criterion = None  # training-only state
    args = getattr(saved, "args", {})  # a model built from a yaml has none; a trained one a dict or namespace
    args = args if isinstance(args, dict) else vars(args)
    saved.args = {k: v for k, v in args.items() if isinstance(v, (str, int, float, bool, type(None)))}
    for p in saved.parameters():
        p.requires_grad_(False)
    torch.save({"date": datetime.now().isoformat(), "version": __version__, "model": saved.half() if half else saved,
                "train_args": saved.args}, path)
    return path


def describe(model: DetectionModel, imgsz: int) -> dict[str, Any]:
    """Architecture facts for the report: family, classes, parameters and GFLOPs at `imgsz`."""
    return {
        "architecture": Path(str(model.yaml.get("yaml_file", ""))).stem or "custom",
        "classes": len(model.names),
        "parameters": sum(p.numel() for p in model.parameters()),
        "gflops": round(get_flops(model, imgsz), 3),
        "stride": int(model.stride.max()),
    }


@dataclass(frozen=True)
class Evaluator:
    """The one evaluation protocol: the report's figures and every decision the pipeline makes (pruning
    sensitivity, the fine-tune schedule, the INT8 fallback) measure mAP this way, on the recipe's eval split.

    Ultralytics' validator, batch 1 and square letterboxed input (rect=False) for every artifact, PyTorch included,
    so the baseline is measured exactly as the exported static-shape artifacts are; each artifact runs in its own
    runtime (Ultralytics' AutoBackend picks it from the artifact's name)."""

    dataset: Dataset
    imgsz: int
    split: str = "val"
    conf: float = 0.001
    iou: float = 0.7
    device: str = "cpu"

    def __call__(self, weights: str | Path | DetectionModel, workdir: Path, images: int | None = None
                 ) -> dict[str, Any]:
        """mAP of `weights` on the split (its first `images` images only, when given)."""
        workdir = Path(workdir).resolve()  # Ultralytics files a relative project under ./runs/detect
        data = self.dataset.subset(self.split, images, workdir / "subset") if images else self.dataset.yaml
        args = {
            "task": "detect", "mode": "val", "data": str(data), "imgsz": self.imgsz, "batch": 1,
            "device": self.device, "split": "val" if images else self.split, "conf": self.conf, "iou": self.iou,
            "rect": False, "plots": False, "save_json": False, "verbose": False, "project": str(workdir),
            "name": "val", "exist_ok": True,
        }
        validator = DetectionValidator(args=args)
        model = weights if isinstance(weights, torch.nn.Module) else str(weights)
        with progress.task("evaluation", unit="image") as images_done:
            def advance(v: DetectionValidator) -> None:
                images_done.total = len(v.dataloader.dataset)
                images_done.advance()

            validator.add_callback("on_val_batch_end", advance)
            stats = validator(model=model)
        shutil.rmtree(workdir / "val", ignore_errors=True)  # Ultralytics' empty save_dir (plots are off)
        return {
            "map50": round(float(stats["metrics/mAP50(B)"]), 5),
            "map50_95": round(float(stats["metrics/mAP50-95(B)"]), 5),
            "precision": round(float(stats["metrics/precision(B)"]), 5),
            "recall": round(float(stats["metrics/recall(B)"]), 5),
            "images": len(validator.dataloader.dataset),
            "val_speed_ms": {k: round(v, 3) for k, v in validator.speed.items() if k != "loss"},
        }


    def frames(self, detect: Callable[[np.ndarray], np.ndarray], workdir: Path) -> dict[str, Any]:
        """mAP of a detector fed as a device feeds it: each image of the split decoded from its file, `detect(frame)`
        giving its detections (N, 6: x1 y1 x2 y2 score class, best first) in the frame's pixels
        (edgecompress.device.detector), matched to its labels by Ultralytics' own matching and metrics (its
        validator's match_predictions, DetMetrics), so the figures compare with `__call__`'s. For the artifacts
        Ultralytics' validator cannot feed: those with the letterbox or NMS inside."""
        from ultralytics.utils.metrics import DetMetrics, box_iou

        from edgecompress.device.images import read_image

        workdir = Path(workdir).resolve()
        validator = DetectionValidator(save_dir=workdir / "val", args={"task": "detect", "mode": "val"})
        metrics = DetMetrics(names=self.dataset.names)
        labelled = self.dataset.labels(self.split)
        with progress.task("evaluation", total=len(labelled), unit="image") as images_done:
            for image, labels in labelled:
                frame = read_image(image)
                det = torch.from_numpy(detect(frame)).float()
                height, width = frame.shape[:2]
                target_cls = labels[:, 0]
                target = torch.from_numpy(labels[:, 1:]).float() * torch.tensor([width, height, width, height])
                if len(det) and len(target_cls):
                    iou = box_iou(torch.cat([target[:, :2] - target[:, 2:] / 2, target[:, :2] + target[:, 2:] / 2],
                                            1), det[:, :4])
                    tp = validator.match_predictions(det[:, 5], torch.from_numpy(target_cls), iou).numpy()
                else:
                    tp = np.zeros((len(det), validator.niou), dtype=bool)
                metrics.update_stats({"tp": tp, "conf": det[:, 4].numpy(), "pred_cls": det[:, 5].numpy(),
                                      "target_cls": target_cls, "target_img": np.unique(target_cls),
                                      "im_name": image.name})
                images_done.advance()
        metrics.process(save_dir=workdir / "val", plot=False)
        shutil.rmtree(workdir / "val", ignore_errors=True)
        stats = metrics.results_dict
        return {
            "map50": round(float(stats["metrics/mAP50(B)"]), 5),
            "map50_95": round(float(stats["metrics/mAP50-95(B)"]), 5),
            "precision": round(float(stats["metrics/precision(B)"]), 5),
            "recall": round(float(stats["metrics/recall(B)"]), 5),
            "images": len(labelled),
            "protocol": "frames",
        }


def export(model: DetectionModel, fmt: str, imgsz: int, folder: Path, stem: str, **options: Any) -> Path:
    """Ultralytics' own exporter on `model` as it is (a pruned module keeps its widths: nothing is rebuilt from
    a yaml): batch 1, static shape, on the CPU, written into `folder`. Returns the exported file or folder.

    Nothing is written outside `folder`: the export runs with its working directory in a scratch folder inside
    it (pnnx drops debug files into the working directory, and Ultralytics deletes files of those names there),
    and a model folder keeps only the model and its metadata (pnnx leaves a torch script of the model beside)."""
    folder.mkdir(parents=True, exist_ok=True)
    model.pt_path = str(folder / f"{stem}.pt")  # Ultralytics writes the export beside pt_path: keep it in `folder`
    exporter = Exporter(overrides={"format": fmt, "imgsz": imgsz, "batch": 1, "dynamic": False, "device": "cpu",
                                   "verbose": False, **options})
    with tempfile.TemporaryDirectory(dir=folder, prefix=".export-") as scratch, contextlib.chdir(scratch), \
            logs.native_output():
        path = Path(exporter(model=model))
    if fmt == "onnx":  # conversions to other runtimes carry the metadata along
        YAML.save(folder / METADATA, exporter.metadata)
    for extra in path.glob("*.py") if path.is_dir() else []:
        extra.unlink()
    return path


def export_onnx(model: DetectionModel, imgsz: int, folder: Path, stem: str) -> Path:
    """FP32 ONNX (batch 1, static shape, simplified with onnxslim) carrying Ultralytics' metadata, with a
    metadata.yaml beside it (METADATA) for the artifacts converted from it."""
    return export(model, "onnx", imgsz, folder, stem, simplify=True)
