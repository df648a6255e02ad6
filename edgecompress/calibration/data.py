"""Calibration data: a seeded sample of the train split, preprocessed exactly like Ultralytics inference.

numpy + OpenCV only, so calibration runs wherever the ONNX/OpenVINO runtimes do.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import yaml

from edgecompress.errors import UserError

LOG = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
# Activation ranges (minmax above all) are set by rare extremes; below a few hundred images they depend on
# which images happened to be drawn. 300 is also NNCF's default subset size.
RECOMMENDED_IMAGES = 300


def train_images(data_yaml: str | Path) -> list[Path]:
    """Every image of the dataset's train split (a folder, a list of folders, or a .txt list of files)."""
    data_yaml = Path(data_yaml)
    spec = yaml.safe_load(data_yaml.read_text())
    root = Path(spec.get("path") or data_yaml.parent)
    if not root.is_absolute():
        root = (data_yaml.parent / root).resolve()
    entries = spec.get("train")
    if entries is None:
        raise UserError(f"dataset YAML {data_yaml} has no 'train' split; calibration images come from it")
    images: list[Path] = []
    for entry in entries if isinstance(entries, list) else [entries]:
        source = root / entry
        if source.is_dir():
            images += [p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES]
        elif source.suffix == ".txt" and source.is_file():
            images += [(source.parent / line.strip()).resolve() for line in source.read_text().splitlines() if line]
        else:
            raise UserError(f"train split '{entry}' of {data_yaml} is neither a folder nor a .txt list of images")
    if not images:
        raise UserError(f"train split of {data_yaml} holds no images; calibration needs some")
    return sorted(images)


def select_images(data_yaml: str | Path, count: int, seed: int = 0) -> list[Path]:
    """A seeded uniform sample of `count` train images (all of them when there are fewer), warning below 300."""
    images = train_images(data_yaml)
    chosen = sorted(random.Random(seed).sample(images, count)) if count < len(images) else images
    if len(chosen) < RECOMMENDED_IMAGES:
        LOG.warning(
            "calibrating on %d images (fewer than %d): activation ranges are set by rare extremes, so with few "
            "images they depend on which images were drawn and INT8 accuracy varies from run to run%s",
            len(chosen), RECOMMENDED_IMAGES,
            "" if count <= len(images) else f"; the train split has only {len(images)}",
        )
    return chosen


def letterbox(image: np.ndarray, imgsz: int) -> np.ndarray:
    """Ultralytics' inference LetterBox for a static square input: scale to fit, centre, pad with 114."""
    h, w = image.shape[:2]
    r = min(imgsz / h, imgsz / w)
    new_w, new_h = max(round(w * r), 1), max(round(h * r), 1)
    if (new_w, new_h) != (w, h):
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    dw, dh = (imgsz - new_w) / 2, (imgsz - new_h) / 2
    top, bottom = round(dh - 0.1), round(dh + 0.1)  # the same rounding as Ultralytics, pixel for pixel
    left, right = round(dw - 0.1), round(dw + 0.1)
    return cv2.copyMakeBorder(image, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(114, 114, 114))


def preprocess(path: str | Path, imgsz: int) -> np.ndarray:
    """One image as the exported model's input: letterboxed, RGB, /255, NCHW float32 of batch 1."""
    image = cv2.imread(str(path))
    if image is None:
        raise UserError(f"calibration image {path} cannot be read")
    rgb = letterbox(image, imgsz)[..., ::-1]
    return np.ascontiguousarray(rgb.transpose(2, 0, 1)[None], dtype=np.float32) / 255.0


class Batches(Sequence[np.ndarray]):
    """The preprocessed inputs, one image a batch (the exported models have batch 1), read when indexed; a
    sequence rather than a generator so that calibration can pass over it more than once."""

    def __init__(self, images: Sequence[Path], imgsz: int):
        self.images, self.imgsz = list(images), imgsz

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return Batches(self.images[index], self.imgsz)
        return preprocess(self.images[index], self.imgsz)


batches = Batches
