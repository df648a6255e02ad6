"""What the bench scripts share: where the shared models and datasets are, and side-by-side timing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
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


def time_interleaved(artifacts: dict[str, tuple[Path, str]], runs: int = 400,
                     imgsz: int = 640) -> dict[str, dict[str, float]]:
    """p50/p90/p99 of each artifact's inference latency, all loaded in this one process and taking turns at every
    inference (the order reversed every other turn). Slower drifts of a shared machine then hit each artifact
    alike, which fresh processes per round do not quite do: there, a gap of 3 to 4% between two IRs moved
    between rounds, here it repeats within about half a percent (BENCHMARKS.md, x86)."""
    import numpy as np

    from edgecompress.targets.runtimes import RUNTIMES

    sessions = {name: RUNTIMES[runtime].load(path) for name, (path, runtime) in artifacts.items()}
    x = np.random.default_rng(0).random((1, 3, imgsz, imgsz), dtype=np.float32)
    for session in sessions.values():
        for _ in range(10):
            session.infer(x)
    times: dict[str, list[float]] = {name: [] for name in sessions}
    order = list(sessions)
    for turn in range(runs):
        for name in order if turn % 2 == 0 else reversed(order):
            start = time.perf_counter()
            sessions[name].infer(x)
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: {f"p{q}_ms": round(float(np.percentile(t, q)), 3) for q in (50, 90, 99)}
            for name, t in times.items()}
