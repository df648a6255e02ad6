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

from edgecompress.bench import dataset_images, letterbox, to_input
from edgecompress.errors import UserError

LOG = logging.getLogger(__name__)

# Activation ranges (minmax above all) are set by rare extremes; below a few hundred images they depend on
# which images happened to be drawn. 300 is also NNCF's default subset size.
RECOMMENDED_IMAGES = 300
MIN_IMAGES = 8  # below this the ranges are little more than one image's: refuse rather than ship a blind model


def select_images(data_yaml: str | Path, count: int, seed: int = 0) -> list[Path]:
    """A seeded uniform sample of `count` train images (all of them when there are fewer), warning below 300."""
    images = dataset_images(Path(data_yaml), "train")  # calibration data comes from the train split
    if len(images) < MIN_IMAGES:
        raise UserError(f"the train split of {data_yaml} has {len(images)} images, too few to calibrate INT8 "
                        f"ranges (at least {MIN_IMAGES}, {RECOMMENDED_IMAGES} recommended); add images or use "
                        f"--quant none")
    chosen = sorted(random.Random(seed).sample(images, count)) if count < len(images) else images
    if len(chosen) < RECOMMENDED_IMAGES:
        LOG.warning(
            "calibrating on %d images (fewer than %d): activation ranges are set by rare extremes, so with few "
            "images they depend on which images were drawn and INT8 accuracy varies from run to run%s",
            len(chosen), RECOMMENDED_IMAGES,
            "" if count <= len(images) else f"; the train split has only {len(images)}",
        )
    return chosen


def preprocess(path: str | Path, imgsz: int) -> np.ndarray:
    """One image as the exported model's input: letterboxed, RGB, /255, NCHW float32 of batch 1."""
    image = cv2.imread(str(path))
    if image is None:
        raise UserError(f"calibration image {path} cannot be read")
    return to_input(image, imgsz)


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
