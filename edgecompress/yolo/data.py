"""The user's dataset: parsed once, by Ultralytics, and checked up front (a bad dataset fails in a second, not
mid-run), then handed to every stage as one `Dataset`: splits, images, train batches, subsets, calibration
images, fingerprint.

Images that cannot be used (truncated, not an image, unreadable) are found once, by the check Ultralytics' own
datasets make (`verify_image_label`), and left out of every split here, so every stage skips the same ones the
validator and the trainer skip.

Never writes into the dataset and never downloads (Ultralytics would, for a YAML with a `download:` key).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from functools import cached_property, lru_cache
from itertools import repeat
from multiprocessing.pool import ThreadPool
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from ultralytics.data.utils import check_det_dataset, img2label_paths, verify_image_label
from ultralytics.utils import NUM_THREADS

from edgecompress.device.images import list_images
from edgecompress.errors import UserError
from edgecompress.files import digest, file_digest

LOG = logging.getLogger("edgecompress")
SPLITS = ("train", "val", "test")
# Activation ranges (minmax above all) are set by rare extremes; below a few hundred images they depend on
# which images happened to be drawn. 300 is also NNCF's default subset size.
RECOMMENDED_CALIBRATION_IMAGES = 300
MIN_CALIBRATION_IMAGES = 8  # below this the ranges are little more than one image's: refuse rather than ship blind
NAMED = 5  # unusable images named in one message; the rest are counted


class Dataset:
    """A checked detection dataset (see `check`): Ultralytics' parse of its YAML, and what the stages draw from it."""

    def __init__(self, yaml_file: Path, info: dict[str, Any], unusable: dict[Path, str]) -> None:
        self.yaml = yaml_file
        self.info = info
        self.unusable = unusable  # image -> why it cannot be used; left out of every split

    @classmethod
    def check(cls, data: str | Path, classes: int, eval_split: str = "val") -> Dataset:
        """Parse and check a detection dataset YAML against a model with `classes` classes.

        Every split present must hold images whose labels are well formed, with class ids below `classes`, and at
        least one image that can be used; the split used for evaluation must also have a labelled one. Images that
        cannot be used are left out, with one warning that names them.
        """
        info = _parse_and_check(Path(data), classes)
        unusable: dict[Path, str] = {}
        for split in SPLITS:
            if info.get(split):
                unusable |= _check_split(info, split, classes, split == eval_split, Path(data))
        if unusable:
            LOG.warning("skipping %d image(s) that cannot be used, in every stage, as Ultralytics' validator and "
                        "trainer do: %s", len(unusable), _named([f"{p} ({why})" for p, why in unusable.items()]))
        return cls(Path(data).resolve(), info, unusable)

    @property
    def names(self) -> dict[int, str]:
        return self.info["names"]

    def images(self, split: str) -> list[Path]:
        """The usable image files of one split, sorted."""
        return [p for p in _split_images(self.info, split) if p not in self.unusable]

    def labels(self, split: str) -> list[tuple[Path, np.ndarray]]:
        """Each usable image of a split with its labels as Ultralytics' datasets read them: (n, 5) class, x, y, w, h
        normalized to the image (segments as their boxes, duplicates dropped)."""
        images = self.images(split)
        labels = img2label_paths([str(p) for p in images])
        classes = len(self.names)
        with ThreadPool(NUM_THREADS) as pool:
            checked = pool.map(verify_image_label, zip(map(str, images), labels, repeat(""), repeat(False),
                                                       repeat(classes), repeat(0), repeat(0), repeat(False)))
        return [(image, result[1]) for image, result in zip(images, checked)]

    def unusable_note(self, split: str) -> str:
        """For a message about too few images in a split: " (N more cannot be used: a.jpg, ...)", or ""."""
        return _unusable_note([p for p in _split_images(self.info, split) if p in self.unusable])

    @cached_property
    def fingerprint(self) -> str:
        """A hash of the YAML and of every image and label file's name and content: changes when they do, and
        survives a copy of the dataset to the same place (new mtimes, as CI's checkouts and synced folders make)."""
        files: list[Path] = []
        for split in SPLITS:
            if self.info.get(split):
                images = self.images(split)
                files += [*images, *map(Path, img2label_paths([str(i) for i in images]))]
        with ThreadPool(NUM_THREADS) as pool:  # hashlib releases the GIL
            hashes = pool.map(_content_digest, files)
        return digest({"yaml": self.yaml.read_text(), "files": [(str(p), h) for p, h in zip(files, hashes)]})

    def subset(self, split: str, count: int, folder: Path) -> Path:
        """A dataset YAML whose val split is the first `count` images of `split` (labels found beside them)."""
        folder = folder.resolve()  # Ultralytics reads a relative path in a dataset YAML against the YAML's folder
        folder.mkdir(parents=True, exist_ok=True)
        listing = folder / f"{split}-{count}.txt"
        listing.write_text("\n".join(str(p) for p in self.images(split)[:count]) + "\n")
        subset = folder / f"{split}-{count}.yaml"
        subset.write_text(yaml.safe_dump({"train": str(listing), "val": str(listing), "names": self.names}))
        return subset

    def train_batches(self, imgsz: int, count: int, batch: int = 8, seed: int = 0) -> Iterator[dict[str, Any]]:
        """`count` preprocessed, un-augmented batches of the train split (for importance scoring), the same ones in
        every process: Ultralytics seeds its shuffle from torch's initial seed, which differs per process unless set,
        and a different sample prunes a different model."""
        import torch
        from ultralytics.cfg import get_cfg
        from ultralytics.data import build_dataloader, build_yolo_dataset

        cfg = get_cfg(overrides={"imgsz": imgsz, "data": str(self.yaml)})
        dataset = build_yolo_dataset(cfg, self.info["train"], batch, self.info, mode="val", stride=32)
        with torch.random.fork_rng(devices=[]):  # the caller's random state is left as it was
            torch.manual_seed(seed)
            loader = build_dataloader(dataset, batch, workers=0, shuffle=True)
        for i, b in enumerate(loader):
            if i >= count:
                return
            b["img"] = b["img"].float() / 255
            yield b

    def calibration_images(self, count: int, seed: int = 0) -> list[Path]:
        """A seeded uniform sample of `count` train images (all of them when there are fewer), warning below
        RECOMMENDED_CALIBRATION_IMAGES: calibration data comes from the train split, never the eval split."""
        images = self.images("train")
        if len(images) < MIN_CALIBRATION_IMAGES:
            raise UserError(f"the train split of {self.yaml} has {len(images)} images{self.unusable_note('train')}, "
                            f"too few to calibrate INT8 ranges (at least {MIN_CALIBRATION_IMAGES}, "
                            f"{RECOMMENDED_CALIBRATION_IMAGES} recommended); add images or use --quant none")
        chosen = sorted(random.Random(seed).sample(images, count)) if count < len(images) else images
        if len(chosen) < RECOMMENDED_CALIBRATION_IMAGES:
            LOG.warning(
                "calibrating on %d images (fewer than %d): activation ranges are set by rare extremes, so with few "
                "images they depend on which images were drawn and INT8 accuracy varies from run to run%s",
                len(chosen), RECOMMENDED_CALIBRATION_IMAGES,
                "" if count <= len(images) else f"; the train split has only {len(images)}",
            )
        return chosen


def _parse_and_check(data: Path, classes: int) -> dict[str, Any]:
    """Ultralytics' parse of the YAML, its class count checked against the model's."""
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
    return info


def _check_split(info: dict[str, Any], split: str, classes: int, evaluated: bool, data: Path) -> dict[Path, str]:
    """Check one split's labels (a malformed one is an error) and images; return its unusable images and why."""
    images = _split_images(info, split)
    labels = [Path(p) for p in img2label_paths([str(p) for p in images])]
    labelled = {image for image, label in zip(images, labels) if _check_label_file(label, classes)}
    with ThreadPool(NUM_THREADS) as pool:  # what Ultralytics' datasets run on every image and label before use
        checked = pool.map(verify_image_label, zip(map(str, images), map(str, labels), repeat(""), repeat(False),
                                                   repeat(classes), repeat(0), repeat(0), repeat(False)))
    unusable = {image: result[-1].rpartition("ignoring corrupt image/label: ")[2].replace(f" '{image}'", "")
                for image, result in zip(images, checked) if result[0] is None}  # Ultralytics' message: its reason
    usable = [p for p in images if p not in unusable]
    if not usable:
        raise UserError(f"none of the {len(images)} images of the '{split}' split of {data} can be used "
                        f"({_named(images)}); replace them or fix the split's entry in the YAML")
    if evaluated and not labelled.intersection(usable):
        raise UserError(f"the '{split}' split of {data} has no labels{_unusable_note(list(unusable))}: put one "
                        f".txt per image in the 'labels' folder beside 'images' (YOLO layout), or evaluate on "
                        f"another split")
    return unusable


def _unusable_note(images: list[Path]) -> str:
    return f" ({len(images)} more cannot be used: {_named(images)})" if images else ""


def _named(items: list[Any]) -> str:
    """The first NAMED items, and how many more (report.json's data.unusable lists every unusable image)."""
    more = f" and {len(items) - NAMED} more" if len(items) > NAMED else ""
    return ", ".join(map(str, items[:NAMED])) + more


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


def _check_label_file(label: Path, classes: int) -> bool:
    """Check one image's label file, if it has one (an image without is a background image, which YOLO allows);
    return whether it holds a box."""
    if not label.is_file():
        return False
    try:
        text = label.read_text(errors="replace")
    except OSError as e:
        raise UserError(f"label file {label} cannot be read ({e.strerror}); fix its permissions or remove it") from None
    boxes = 0
    for number, line in enumerate(text.splitlines(), 1):
        if fields := line.split():
            _check_label_line(label, number, fields, classes)
            boxes += 1
    return boxes > 0


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


def _split_images(info: dict[str, Any], split: str) -> list[Path]:
    """The image files of one split of a checked dataset, sorted (folders, list files or lists of either)."""
    entries = info.get(split)
    if not entries:
        raise UserError(f"the dataset has no '{split}' split; add '{split}: images/{split}' to its YAML")
    return list_images([Path(e) for e in (entries if isinstance(entries, list) else [entries])],
                       f"the dataset's '{split}' split")


def _content_digest(path: Path) -> str:
    """A file's content hash ("" where it is missing), hashed once per process while its size and mtime stay: every
    trial of a search checks the same dataset."""
    stat = path.stat() if path.exists() else None
    return _hashed(str(path), stat.st_size, stat.st_mtime_ns) if stat else ""


@lru_cache(maxsize=None)
def _hashed(path: str, _size: int, _mtime_ns: int) -> str:
    return file_digest(Path(path))
