"""Each runtime's channel multiple, measured: a model pruned to the same channel ratio with its channel counts
rounded to 1, 8 and 16, timed in onnxruntime and in OpenVINO (FP32, CPU), all taking turns with the unpruned
model in one process per runtime (the product's timer). A runtime whose kernels block channels runs the rounded
models faster per FLOP; the targets' `channel_multiple` follows what this finds (BENCHMARKS.md, "Channel
multiple per runtime").

    nice -n 10 .venv/bin/python bench/channel_multiple.py --model yolov8n-bccd --imgsz 640 --turns 300
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from common import data_path, evaluator, model_path, time_interleaved

import edgecompress.yolo.model as yolo
from edgecompress.prune.config import PruneConfig
from edgecompress.prune.latency import export
from edgecompress.prune.pruner import prune

MULTIPLES = (1, 8, 16)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="yolov8n-bccd", help="a checkpoint in shared/models (default %(default)s)")
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--ratio", type=float, default=0.35, help="channels every group loses (uniform, L2)")
    p.add_argument("--turns", type=int, default=300)
    p.add_argument("--runtimes", default="onnxruntime,openvino")
    p.add_argument("--out", type=Path, default=Path("bench/results/channel_multiple.json"))
    args = p.parse_args()

    evaluate = evaluator(data_path(args.model), args.imgsz)
    model = yolo.load_model(model_path(args.model))
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        artifacts = {"unpruned": export(model, args.imgsz, Path(tmp) / "unpruned.onnx")}
        gflops = {"unpruned": yolo.describe(model, args.imgsz)["gflops"]}
        for m in MULTIPLES:
            config = PruneConfig(ratio=args.ratio, criterion="l2", allocation="uniform", round_to=m)
            pruned, info = prune(model, config, evaluate, Path(tmp) / f"x{m}")
            artifacts[f"x{m}"] = export(pruned, args.imgsz, Path(tmp) / f"x{m}.onnx")
            gflops[f"x{m}"] = info["after"]["gflops"]
        for runtime in args.runtimes.split(","):
            timed = time_interleaved({k: (v, runtime) for k, v in artifacts.items()}, args.turns, args.imgsz)
            base = timed["unpruned"]["p50_ms"]
            rows[runtime] = {k: {**t, "gflops": gflops[k], "latency_ratio": round(t["p50_ms"] / base, 4),
                                 "flops_ratio": round(gflops[k] / gflops["unpruned"], 4),
                                 "ms_per_gflop": round(t["p50_ms"] / gflops[k], 4)} for k, t in timed.items()}
    result = {"model": args.model, "imgsz": args.imgsz, "ratio": args.ratio, "turns": args.turns, "runtimes": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    for runtime, table in rows.items():
        print(f"\n{runtime}  ({args.model}, imgsz {args.imgsz}, -{args.ratio:.0%} channels, {args.turns} turns)")
        print(f"  {'model':<9} {'GFLOPs':>7} {'p50 ms':>8} {'latency':>8} {'FLOPs':>7} {'ms/GFLOP':>9}")
        for name, r in table.items():
            print(f"  {name:<9} {r['gflops']:7.2f} {r['p50_ms']:8.2f} {r['latency_ratio']:8.3f} "
                  f"{r['flops_ratio']:7.3f} {r['ms_per_gflop']:9.3f}")


if __name__ == "__main__":
    main()
