"""Calibration inputs: images preprocessed exactly like Ultralytics inference (the dataset chooses which,
edgecompress.yolo.data.Dataset.calibration_images). numpy + OpenCV only."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgecompress.device.images import read_image, to_input
from edgecompress.errors import UserError


def preprocess(path: str | Path, imgsz: int) -> np.ndarray:
    """One image as the exported model's input: letterboxed, RGB, /255, NCHW float32 of batch 1."""
    image = read_image(Path(path))
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
