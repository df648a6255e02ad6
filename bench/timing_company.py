"""Does an artifact's latency, timed taking turns, depend on the company it keeps? The INT8 networks of a search's
trials, alone in pairs and taking turns with the FP32 reference and Ultralytics' exports, timed on the first call
after each switch (block 1) and on the calls after it (block 10, the first untimed).

    python bench/timing_company.py [--search bench/results/search/yolo11n-bccd-x86] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgecompress.device.runtime import RUNTIMES


def artifacts(folder: Path) -> dict[str, tuple[Path, int]]:
    """Each candidate's INT8 network, the reference's FP32 network and Ultralytics' exports, with their input size."""
    found: dict[str, tuple[Path, int]] = {}
    for trial in (json.loads(p.read_text()) for p in folder.glob("trials/*/trial.json")):
        rows = {s["name"]: s for s in trial["stages"]}
        size = trial["candidate"]["imgsz"]
        if trial["kind"] == "candidate" and trial["rung"] == 0 and "openvino-int8" in rows:
            name = f"{size} px -{trial['candidate']['prune']:.0%}"
            found[name] = (Path(rows["openvino-int8"]["benchmark"]["artifact"]), size)
        elif trial["kind"] == "reference":
            found["reference fp32"] = (Path(rows["openvino-fp32"]["benchmark"]["artifact"]), size)
        elif trial["kind"] == "ultralytics":
            found.update({s["name"]: (Path(s["benchmark"]["artifact"]), size) for s in trial["stages"][1:]})
    return found


def turns(steps: dict[str, Callable[[], object]], rounds: int, block: int) -> dict[str, float]:
    """p50 ms of each step taking turns, `block` calls per turn, the first untimed where block > 1."""
    times: dict[str, list[float]] = {k: [] for k in steps}
    for step in steps.values():
        for _ in range(10):
            step()
    names = list(steps)
    for i in range(rounds):
        for name in names if i % 2 == 0 else names[::-1]:
            for call in range(block):
                start = time.perf_counter()
                steps[name]()
                if block == 1 or call > 0:
                    times[name].append(1e3 * (time.perf_counter() - start))
    return {k: round(statistics.median(v), 2) for k, v in times.items()}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--search", type=Path, default=Path("bench/results/search/yolo11n-bccd-x86"))
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    found = artifacts(args.search)
    steps = {}
    for name, (path, size) in found.items():
        session, x = RUNTIMES["openvino"].load(path, shared=True), np.random.default_rng(0).random(
            (1, 3, size, size), dtype=np.float32)
        steps[name] = lambda session=session, x=x: session.infer(x)
    small = dict(sorted(((k, v) for k, v in steps.items() if "-25%" in k)))
    for _ in range(args.rounds):
        print(json.dumps({"pruned INT8 pair, block 1": turns(small, 100, 1),
                          "all, block 1": turns(steps, 100, 1), "all, block 10": turns(steps, 20, 10)}))


if __name__ == "__main__":
    main()
