"""Time artifacts side by side again, when a machine was too noisy the first time: all artifacts loaded in one
process, taking turns (the product's timer, edgecompress.device.timing.interleaved).

    python bench/retime.py --turns 400 ours=PATH:openvino ultralytics=PATH:openvino
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import time_interleaved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("artifacts", nargs="+", metavar="NAME=PATH:RUNTIME")
    ap.add_argument("--turns", type=int, default=400, help="inferences per artifact, taking turns")
    ap.add_argument("--imgsz", type=int, default=640)
    args = ap.parse_args()
    artifacts = {}
    for spec in args.artifacts:
        name, _, rest = spec.partition("=")
        path, _, runtime = rest.rpartition(":")
        artifacts[name] = (Path(path), runtime)
    timing = time_interleaved(artifacts, runs=args.turns, imgsz=args.imgsz)
    first = next(iter(timing.values()))["p50_ms"]
    print(json.dumps({name: {**t, "p50_vs_first": round(t["p50_ms"] / first, 3)} for name, t in timing.items()},
                     indent=2))


if __name__ == "__main__":
    main()
