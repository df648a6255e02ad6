"""Shared fixtures: the embedded demo (a real checkpoint and dataset) and fast recipe settings."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from edgecompress.pipeline.runner import demo_paths
from edgecompress.yolo import patches

patches.apply()  # as every run does: Ultralytics writes no label caches into the datasets tests read

FAST_BENCH = {"warmup": 1, "runs": 3, "max_seconds": 5.0}


@pytest.fixture(scope="session")
def demo() -> tuple[Path, Path]:
    """(checkpoint, data.yaml) of the embedded demo; read-only, never modified by a run."""
    return demo_paths()


@pytest.fixture
def dataset_copy(tmp_path: Path, demo: tuple[Path, Path]) -> Path:
    """A writable copy of the demo dataset, for tests that break it on purpose."""
    dest = tmp_path / "data"
    shutil.copytree(demo[1].parent, dest)
    return dest / "data.yaml"


@pytest.fixture
def fast_recipe(tmp_path: Path):
    """Write a recipe file with a small image size and a short benchmark; returns a function of overrides."""

    def write(**overrides: object) -> Path:
        recipe = {"imgsz": 160, "bench": dict(FAST_BENCH), **overrides}
        path = tmp_path / "recipe.yaml"
        path.write_text(yaml.safe_dump(recipe))
        return path

    return write


def evaluator(data: Path, imgsz: int, split: str = "val"):
    """The run's evaluation protocol on a dataset (checked against its own class count), as stages receive it."""
    import yaml as _yaml

    from edgecompress.yolo.data import Dataset
    from edgecompress.yolo.model import Evaluator

    spec = _yaml.safe_load(Path(data).read_text())
    classes = len(spec["names"]) if "names" in spec else int(spec["nc"])
    return Evaluator(Dataset.check(data, classes, split), imgsz, split)
