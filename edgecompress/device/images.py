"""Images as a detector's input: listing a dataset split, decoding, letterboxing exactly like Ultralytics."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgecompress.errors import UserError

IMAGE_SUFFIXES = {".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp"}  # what cv2.imread reads


@dataclass(frozen=True)
class Geometry:
    """Where a frame sits in the square input: resized by `gain` to `size` (width, height), then padded by `top`,
    `bottom`, `left` and `right` pixels."""

    gain: float
    size: tuple[int, int]
    top: int
    bottom: int
    left: int
    right: int


def geometry(height: int, width: int, imgsz: int) -> Geometry:
    """Ultralytics' inference LetterBox for a static square input: scale to fit, centre, the same rounding pixel for
    pixel (the artifacts that letterbox inside compute the same, edgecompress.targets.frame)."""
    r = min(imgsz / height, imgsz / width)
    new_w, new_h = max(round(width * r), 1), max(round(height * r), 1)
    dw, dh = (imgsz - new_w) / 2, (imgsz - new_h) / 2
    return Geometry(r, (new_w, new_h), round(dh - 0.1), round(dh + 0.1), round(dw - 0.1), round(dw + 0.1))


def letterbox(image: np.ndarray, imgsz: int) -> np.ndarray:
    """The image letterboxed into the square input: scaled to fit (bilinear), centred, padded with 114."""
    import cv2

    g = geometry(*image.shape[:2], imgsz)
    if g.size != (image.shape[1], image.shape[0]):
        image = cv2.resize(image, g.size, interpolation=cv2.INTER_LINEAR)
    return cv2.copyMakeBorder(image, g.top, g.bottom, g.left, g.right, cv2.BORDER_CONSTANT, value=(114, 114, 114))


def to_input(image: np.ndarray, imgsz: int) -> np.ndarray:
    """A decoded BGR image as the exported model's input: letterboxed, RGB, /255, NCHW float32 of batch 1."""
    rgb = letterbox(image, imgsz)[..., ::-1]
    return np.ascontiguousarray(rgb.transpose(2, 0, 1)[None], dtype=np.float32) / 255.0


def read_image(path: Path) -> np.ndarray | None:
    """The decoded BGR image, or None when the file is missing, truncated or not an image."""
    import cv2

    return cv2.imread(str(path))


def read_images(paths: list[Path]) -> tuple[list[np.ndarray], list[Path]]:
    """The images that decode, and the paths of those that do not (a truncated JPEG now and then is normal)."""
    decoded, broken = [], []
    for path in paths:
        image = read_image(path)
        if image is None:
            broken.append(path)
        else:
            decoded.append(image)
    return decoded, broken


def list_images(entries: list[Path], where: str) -> list[Path]:
    """The sorted image files of a split's entries: folders (searched recursively) and list files (one image path
    a line, relative to the list's folder). `where` names the split in errors."""
    files: list[Path] = []
    for entry in entries:
        if entry.is_dir():
            files += [p for p in entry.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES]
        elif entry.is_file():
            lines = [line.strip() for line in entry.read_text().splitlines()]
            files += [(entry.parent / line).resolve() for line in lines if line]
        else:
            raise UserError(f"{where}: {entry} does not exist; fix the YAML's 'path' or the split's entry")
    if not files:
        raise UserError(f"{where} holds no images; point it at a folder of images")
    return sorted(files)


def dataset_images(data_yaml: Path, split: str = "val") -> list[Path]:
    """The sorted image files of one split of an Ultralytics dataset YAML, read with pyyaml alone (the device has no
    Ultralytics): `path` (the root; relative to the working folder, else to the YAML) joined with the split's
    folders or list files. The pipeline itself reads datasets through Ultralytics (edgecompress.yolo.data)."""
    import yaml

    try:
        info = yaml.safe_load(data_yaml.read_text())
    except OSError as e:
        raise UserError(f"dataset YAML {data_yaml} cannot be read ({e.strerror}); check the --data path") from None
    entries = info.get(split) if isinstance(info, dict) else None
    if not entries:
        raise UserError(f"dataset YAML {data_yaml} has no '{split}' split; add '{split}: images/{split}' to it")
    root = Path(info.get("path") or ".")
    if not root.is_absolute():
        root = root.resolve() if info.get("path") and root.exists() else (data_yaml.parent / root).resolve()
    entries = [root / e for e in (entries if isinstance(entries, list) else [entries])]
    return list_images(entries, f"dataset YAML {data_yaml}: its '{split}' split")
