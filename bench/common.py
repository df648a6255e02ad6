"""What the bench scripts share: where the shared models and datasets are, the pipeline and its evaluation as the
product runs them, and side-by-side timing (the product's one turn-taking timer)."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import numpy as np

os.environ.setdefault("YOLO_OFFLINE", "1")

from edgecompress.device.runtime import RUNTIMES  # noqa: E402
from edgecompress.device.timing import interleaved  # noqa: E402
from edgecompress.yolo import patches  # noqa: E402

patches.apply()  # as every run does: Ultralytics writes no label caches into the shared datasets

# ../shared beside the checkout; EDGECOMPRESS_SHARED points elsewhere (a copy carried to the lent GPU machine)
SHARED = Path(os.environ.get("EDGECOMPRESS_SHARED", Path(__file__).resolve().parents[2] / "shared"))
MODELS = {"yolov8n-bccd": "bccd", "yolo11n-bccd": "bccd", "yolov8n-raccoon": "raccoon"}  # checkpoint: dataset


def model_path(name: str) -> Path:
    return SHARED / "models" / f"{name}.pt"


def data_path(name: str) -> Path:
    """The dataset YAML of a shared model (by its name) or of a shared dataset."""
    return SHARED / "datasets" / MODELS.get(name, name) / "data.yaml"


class Points:
    """A benchmark's finished points, by key, in `out`/results.json: written after each, so a rerun skips them."""

    def __init__(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.path = out / "results.json"
        self.rows: dict[str, dict] = json.loads(self.path.read_text()) if self.path.is_file() else {}

    def __contains__(self, key: str) -> bool:
        return key in self.rows

    def add(self, key: str, row: dict) -> None:
        self.rows[key] = row
        self.path.write_text(json.dumps(self.rows, indent=1))
        print(key, json.dumps(row), flush=True)


@functools.cache
def evaluator(data: Path, imgsz: int = 640, device: str = "cpu"):
    """The pipeline's evaluation protocol (edgecompress.yolo.model.Evaluator) on a dataset, checked once."""
    import yaml

    from edgecompress.yolo.data import Dataset
    from edgecompress.yolo.model import Evaluator

    classes = len(yaml.safe_load(Path(data).read_text())["names"])
    return Evaluator(Dataset.check(data, classes), imgsz, device=device)


def time_interleaved(artifacts: dict[str, tuple[Path, str]], runs: int = 400,
                     imgsz: int = 640) -> dict[str, dict[str, float]]:
    """p50/p90/p99 of each artifact's inference latency, all loaded in this one process and taking turns
    (edgecompress.device.timing.interleaved, the timer the product chooses candidates with)."""
    sessions = {name: RUNTIMES[runtime].load(path, shared=True) for name, (path, runtime) in artifacts.items()}
    x = np.random.default_rng(0).random((1, 3, imgsz, imgsz), dtype=np.float32)
    times = interleaved({name: (lambda s=s: s.infer(x)) for name, s in sessions.items()}, runs)
    return {name: {f"p{q}_ms": round(float(np.percentile(t, q)), 3) for q in (50, 90, 99)}
            for name, t in times.items()}
