"""The one place that talks to Ultralytics: load a checkpoint, check a dataset, evaluate, export to ONNX."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

os.environ.setdefault("YOLO_OFFLINE", "1")  # nothing may reach the network: no AMP check, font or asset download

import torch  # noqa: E402
import ultralytics.data.dataset as _ul_dataset  # noqa: E402
from ultralytics.data.utils import check_det_dataset  # noqa: E402
from ultralytics.engine.exporter import Exporter  # noqa: E402
from ultralytics.models.yolo.detect import DetectionValidator  # noqa: E402
from ultralytics.nn.tasks import DetectionModel, load_checkpoint  # noqa: E402
from ultralytics.utils import YAML  # noqa: E402
from ultralytics.utils.torch_utils import get_flops  # noqa: E402

from edgecompress.errors import UserError  # noqa: E402


def _no_cache_write(_prefix: str, _path: Path, x: dict[str, Any], version: str) -> None:
    """Ultralytics writes labels/*.cache beside a dataset's labels; the user's dataset is never modified."""
    x["version"] = version  # the one side effect its callers rely on


_ul_dataset.save_dataset_cache_file = _no_cache_write

UNSUPPORTED = {"SegmentationModel": "segmentation", "PoseModel": "pose", "OBBModel": "oriented-box",
               "ClassificationModel": "classification", "RTDETRDetectionModel": "RT-DETR"}


def load_model(path: str | Path) -> DetectionModel:
    """Load an Ultralytics detection checkpoint as an FP32 eval-mode model, or raise a UserError saying why not."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; pass the path of your trained best.pt with --model")
    if path.suffix != ".pt":
        raise UserError(f"checkpoint {path} is not a .pt file; pass an Ultralytics PyTorch checkpoint (best.pt)")
    if path.stat().st_size == 0:
        raise UserError(f"checkpoint {path} is empty; re-copy or re-export it from training")
    try:
        model, _ = load_checkpoint(path)
    except (TypeError, ModuleNotFoundError, AttributeError, KeyError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"checkpoint {path} cannot be loaded as an Ultralytics model: {first}") from e
    if type(model) is not DetectionModel:  # subclasses (segment, pose, OBB, ...) have heads we do not handle
        kind = UNSUPPORTED.get(type(model).__name__, type(model).__name__)
        raise UserError(f"checkpoint {path} is a {kind} model; only detection models are supported yet")
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
    args = saved.args if isinstance(saved.args, dict) else vars(saved.args) if hasattr(saved, "args") else {}
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


def check_dataset(data: str | Path, classes: int) -> dict[str, Any]:
    """Parse and check a dataset YAML (never downloads); its class count must match the model's."""
    data = Path(data)
    if not data.is_file():
        raise UserError(f"dataset YAML {data} does not exist; pass the data.yaml the model was trained with")
    try:
        info = check_det_dataset(str(data), autodownload=False)
    except (FileNotFoundError, SyntaxError, KeyError, ValueError, TypeError, AttributeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"dataset YAML {data} is not usable: {first}") from e
    if info["nc"] != classes:
        raise UserError(
            f"dataset YAML {data} has {info['nc']} classes but the model has {classes}; "
            f"pass the dataset the model was trained on"
        )
    return info


def evaluate(weights: str | Path | DetectionModel, data: str | Path, imgsz: int, split: str, conf: float,
             iou: float, device: str, workdir: Path) -> dict[str, Any]:
    """mAP of `weights` run in its own runtime (chosen by Ultralytics' AutoBackend from the artifact's name).

    Batch 1 and square letterboxed input (rect=False) for every artifact, PyTorch included, so the baseline is
    measured exactly as the exported static-shape artifacts are.
    """
    args = {
        "task": "detect", "mode": "val", "data": str(data), "imgsz": imgsz, "batch": 1, "device": device,
        "split": split, "conf": conf, "iou": iou, "rect": False, "plots": False, "save_json": False,
        "verbose": False, "project": str(workdir), "name": "val", "exist_ok": True,
    }
    validator = DetectionValidator(args=args)
    model = weights if isinstance(weights, torch.nn.Module) else str(weights)
    stats = validator(model=model)
    return {
        "map50": round(float(stats["metrics/mAP50(B)"]), 5),
        "map50_95": round(float(stats["metrics/mAP50-95(B)"]), 5),
        "precision": round(float(stats["metrics/precision(B)"]), 5),
        "recall": round(float(stats["metrics/recall(B)"]), 5),
        "images": len(validator.dataloader.dataset),
        "val_speed_ms": {k: round(v, 3) for k, v in validator.speed.items() if k != "loss"},
    }


def export_onnx(model: DetectionModel, imgsz: int, folder: Path, stem: str) -> tuple[Path, Path]:
    """FP32 ONNX (batch 1, static shape, simplified with onnxslim) carrying Ultralytics' metadata.

    Returns the ONNX path and a metadata.yaml that conversions to other runtimes carry along.
    """
    model.pt_path = str(folder / f"{stem}.pt")  # Ultralytics writes the export beside pt_path: keep it in `folder`
    exporter = Exporter(overrides={"format": "onnx", "imgsz": imgsz, "batch": 1, "simplify": True,
                                   "dynamic": False, "device": "cpu", "verbose": False})
    onnx_path = Path(exporter(model=model))
    metadata = folder / "metadata.yaml"
    YAML.save(metadata, exporter.metadata)
    return onnx_path, metadata


def split_images(info: dict[str, Any], split: str) -> list[Path]:
    """The image files of one split of a checked dataset, sorted (folders, list files or lists of either)."""
    from ultralytics.data.utils import IMG_FORMATS

    entries = info.get(split)
    if not entries:
        raise UserError(f"the dataset has no '{split}' split; add '{split}: images/{split}' to its YAML")
    files: list[Path] = []
    for entry in entries if isinstance(entries, list) else [entries]:
        entry = Path(entry)
        if entry.is_dir():
            files += [p for p in entry.rglob("*") if p.suffix[1:].lower() in IMG_FORMATS]
        elif entry.is_file():
            files += [(entry.parent / line.strip()).resolve() for line in entry.read_text().splitlines() if line.strip()]
    if not files:
        raise UserError(f"the dataset's '{split}' split ({entries}) holds no images; point it at a folder of images")
    return sorted(files)


def dataset_fingerprint(info: dict[str, Any]) -> str:
    """A hash of the dataset's YAML and of every image and label file's name, size and mtime: changes when they do."""
    from ultralytics.data.utils import img2label_paths

    from edgecompress.pipeline.cache import digest

    listing = []
    for split in ("train", "val", "test"):
        if info.get(split):
            images = split_images(info, split)
            for p in [*images, *map(Path, img2label_paths([str(i) for i in images]))]:
                stat = p.stat() if p.exists() else None
                listing.append((str(p), stat.st_size if stat else -1, stat.st_mtime_ns if stat else -1))
    return digest({"yaml": Path(info["yaml_file"]).read_text(), "files": listing})
