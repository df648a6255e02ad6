"""OpenVINO's per-node profile of IRs, summed by (node type, kernel): where an INT8 IR spends its time, and which
ops run in INT8, bf16 or FP32 (BENCHMARKS.md, "x86 QDQ with NNCF's whole placement").

    .venv/bin/python bench/ov_profile.py ul=PATH/model_int8_openvino_model ours=PATH/other_openvino_model
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path

import numpy as np


def profile(path: Path, runs: int, warmup: int = 10) -> tuple[collections.Counter, collections.Counter]:
    """Mean ms per inference and node count per (node type, kernel), over `runs` inferences after `warmup`."""
    import openvino as ov

    xml = next(path.glob("*.xml")) if path.is_dir() else path
    compiled = ov.Core().compile_model(str(xml), "CPU", {"PERF_COUNT": True, "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    x = np.random.default_rng(0).random((1, 3, 640, 640), dtype=np.float32)
    ms, nodes = collections.Counter(), collections.Counter()
    for i in range(warmup + runs):
        request.infer({0: x})
        if i < warmup:
            continue
        for p in request.profiling_info:
            if p.status == p.Status.EXECUTED:
                ms[(p.node_type, p.exec_type)] += p.real_time.total_seconds() * 1e3 / runs
                nodes[(p.node_type, p.exec_type)] += 1 / runs
    return ms, nodes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("artifacts", nargs="+", metavar="NAME=PATH")
    ap.add_argument("--runs", type=int, default=100)
    args = ap.parse_args()
    names, results = [], []
    for spec in args.artifacts:
        name, _, path = spec.partition("=")
        names.append(name)
        results.append(profile(Path(path), args.runs))
    keys = sorted(set().union(*(ms for ms, _ in results)), key=lambda k: -sum(ms[k] for ms, _ in results))
    print(f"| node type, kernel | {' | '.join(f'{n} ms | {n} nodes' for n in names)} |")
    print("|---|" + "---|---|" * len(names))
    for key in keys:
        cells = " | ".join(f"{ms[key]:.2f} | {nodes[key]:.0f}" for ms, nodes in results)
        print(f"| {key[0]}, {key[1]} | {cells} |")
    print("| total | " + " | ".join(f"{sum(ms.values()):.2f} | " for ms, _ in results) + "|")


if __name__ == "__main__":
    main()
