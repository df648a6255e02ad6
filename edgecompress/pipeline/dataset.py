"""The user's dataset YAML: checked once up front, so that a bad dataset fails in a second, not mid-run.

Never writes into the dataset and never downloads (Ultralytics would, for a YAML with a `download:` key).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from ultralytics.data.utils import check_det_dataset, img2label_paths

from edgecompress.bench import list_images
from edgecompress.errors import UserError
from edgecompress.pipeline.cache import digest

SPLITS = ("train", "val", "test")


def check_dataset(data: str | Path, classes: int, eval_split: str = "val") -> dict[str, Any]:
    """Parse and check a detection dataset YAML against a model with `classes` classes.

    Every split present must hold images whose labels are well formed, with class ids below `classes`;
    the split used for evaluation must also have at least one labelled image.
    """
    data = Path(data)
    if not data.is_file():
        raise UserError(f"dataset YAML {data} does not exist; pass the data.yaml the model was trained with")
    _check_declared_count(data, classes)
    try:
        info = check_det_dataset(str(data), autodownload=False)
    except Exception as e:  # Ultralytics raises a zoo of types for a bad YAML; all mean the same to the user
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"dataset YAML {data} is not usable: {first}") from e
    if info["nc"] != classes:
        raise UserError(f"dataset YAML {data} has {info['nc']} classes but the model has {classes}; "
                        f"pass the dataset the model was trained on")
    for split in SPLITS:
        if info.get(split):
            labelled = _check_labels(split_images(info, split), classes)
            if split == eval_split and not labelled:
                raise UserError(f"the '{split}' split of {data} has no labels: put one .txt per image in the "
                                f"'labels' folder beside 'images' (YOLO layout), or evaluate on another split")
    return info


def _check_declared_count(data: Path, classes: int) -> None:
    """Refuse an `nc` without `names` that differs from the model's class count, before Ultralytics reads it: it
    names such classes class_0 .. class_{nc-1}, so a huge `nc` (a typo, or 1e15) would fill the memory first."""
    try:
        spec = yaml.safe_load(data.read_text(errors="replace"))
    except yaml.YAMLError:
        return  # Ultralytics' loader says what is wrong with the YAML
    if not isinstance(spec, dict) or spec.get("names") is not None or "nc" not in spec:
        return
    try:
        count = float(spec["nc"])
    except (TypeError, ValueError):
        return  # not a number: Ultralytics' "must be an integer"
    if count != classes:
        raise UserError(f"dataset YAML {data} says nc: {spec['nc']} but the model has {classes} classes; pass the "
                        f"dataset the model was trained on, or write its class names under 'names'")


def _check_labels(images: list[Path], classes: int) -> int:
    """Check every label file of these images; return how many images have at least one box."""
    labelled = 0
    for label in map(Path, img2label_paths([str(p) for p in images])):
        if not label.is_file():
            continue  # an image without a label file is a background image, which YOLO allows
        boxes = 0
        for number, line in enumerate(label.read_text(errors="replace").splitlines(), 1):
            if fields := line.split():
                _check_label_line(label, number, fields, classes)
                boxes += 1
        labelled += boxes > 0
    return labelled


def _check_label_line(label: Path, number: int, fields: list[str], classes: int) -> None:
    where = f"label file {label}, line {number}"
    # a box is `class cx cy w h`; a polygon `class x1 y1 x2 y2 x3 y3 ...` (Ultralytics takes its bounding box)
    if len(fields) != 5 and (len(fields) < 7 or len(fields) % 2 == 0):
        raise UserError(f"{where}: expected 'class cx cy w h' (5 numbers), got {len(fields)} fields")
    try:
        cls, coords = float(fields[0]), [float(v) for v in fields[1:]]
    except ValueError:
        raise UserError(f"{where}: '{' '.join(fields)}' is not a list of numbers") from None
    if cls != int(cls) or not 0 <= cls < classes:
        raise UserError(f"{where}: class id {fields[0]} is outside the dataset's {classes} names "
                        f"(0..{classes - 1}); fix the label or add the class to 'names'")
    if not all(-0.01 <= v <= 1.01 for v in coords):
        raise UserError(f"{where}: coordinates must be normalized to 0..1 (divide pixels by the image size)")


def split_images(info: dict[str, Any], split: str) -> list[Path]:
    """The image files of one split of a checked dataset, sorted (folders, list files or lists of either)."""
    entries = info.get(split)
    if not entries:
        raise UserError(f"the dataset has no '{split}' split; add '{split}: images/{split}' to its YAML")
    return list_images([Path(e) for e in (entries if isinstance(entries, list) else [entries])],
                       f"the dataset's '{split}' split")


def dataset_fingerprint(info: dict[str, Any]) -> str:
    """A hash of the dataset's YAML and of every image and label file's name, size and mtime: changes when they do."""
    listing = []
    for split in SPLITS:
        if info.get(split):
            images = split_images(info, split)
            for p in [*images, *map(Path, img2label_paths([str(i) for i in images]))]:
                stat = p.stat() if p.exists() else None
                listing.append((str(p), stat.st_size if stat else -1, stat.st_mtime_ns if stat else -1))
    return digest({"yaml": Path(info["yaml_file"]).read_text(), "files": listing})
