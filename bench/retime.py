"""Time artifacts side by side again, with more alternating rounds, when a machine was too noisy the first time.

    python bench/retime.py --rounds 7 ours=PATH:openvino ultralytics=PATH:openvino
    python bench/retime.py --interleaved 400 ours=PATH:openvino ultralytics=PATH:openvino

`--rounds`: fresh processes taking turns (`time_alternating`); `--interleaved N`: N turns of one inference each,
all artifacts in one process (`time_interleaved`), the steadier of the two for ratios of close artifacts.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import time_alternating, time_interleaved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("artifacts", nargs="+", metavar="NAME=PATH:RUNTIME")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--interleaved", type=int, metavar="N", help="N interleaved turns in one process instead")
    args = ap.parse_args()
    artifacts = {}
    for spec in args.artifacts:
        name, _, rest = spec.partition("=")
        path, _, runtime = rest.rpartition(":")
        artifacts[name] = (Path(path), runtime)
    timing = (time_interleaved(artifacts, runs=args.interleaved) if args.interleaved
              else time_alternating(artifacts, rounds=args.rounds))
    first = next(iter(timing.values()))["p50_ms"]
    print(json.dumps({name: {**t, "p50_vs_first": round(t["p50_ms"] / first, 3)} for name, t in timing.items()},
                     indent=2))


if __name__ == "__main__":
    main()
