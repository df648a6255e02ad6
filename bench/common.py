"""What the bench scripts share: where the shared models and datasets are, and side-by-side timing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

# ../shared beside the checkout; EDGECOMPRESS_SHARED points elsewhere (a copy carried to the lent GPU machine)
SHARED = Path(os.environ.get("EDGECOMPRESS_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def time_alternating(artifacts: dict[str, tuple[Path, str]], rounds: int = 3, runs: int = 100,
                     imgsz: int = 640) -> dict[str, dict[str, float]]:
    """Median over `rounds` of each artifact's p50/p99 inference latency, the artifacts taking turns in fresh
    processes (edgecompress.bench's worker), so that the noise of a shared machine hits all of them alike."""
    results: dict[str, list[dict]] = {name: [] for name in artifacts}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for name, (path, runtime) in artifacts.items():
                spec, out = Path(tmp) / "spec.json", Path(tmp) / f"{r}.json"
                spec.write_text(json.dumps({"artifact": str(path), "runtime": runtime, "imgsz": imgsz, "images": [],
                                            "config": {"warmup": 10, "runs": runs, "max_seconds": 60}}))
                subprocess.run([sys.executable, "-m", "edgecompress.bench", str(spec), str(out)], check=True)
                results[name].append(json.loads(out.read_text())["inference"])

    def median(values: list[float]) -> float:
        return sorted(values)[len(values) // 2]

    return {name: {"p50_ms": median([x["p50_ms"] for x in runs_]), "p99_ms": median([x["p99_ms"] for x in runs_])}
            for name, runs_ in results.items()}
