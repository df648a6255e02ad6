"""The ncnn target beside onnxruntime on the same CPU: mAP50-95 of each artifact in its runtime (Ultralytics'
validator) and inference latency, all artifacts of a model taking turns in one process.

    YOLO_OFFLINE=1 .venv/bin/python bench/ncnn_compare.py [--models demo yolov8n-bccd yolo11n-bccd]
        [--out bench/results/ncnn_compare]

Each model runs the pipeline twice into one output folder (`--target ncnn --quant none` and `--target onnx
--quant none`, sharing their load stage), then its ncnn FP32, ncnn FP16 and onnxruntime FP32 artifacts are timed
interleaved. Writes <out>/results.json and prints a Markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import MODELS, data_path, model_path, time_interleaved

from edgecompress.api import compress
from edgecompress.pipeline.runner import demo_paths

QUICK_BENCH = {"warmup": 1, "runs": 3, "max_seconds": 5.0}  # the pipeline's own timing: the closing one counts


def run(name: str, out: Path, turns: int) -> dict:
    checkpoint, data = demo_paths() if name == "demo" else (model_path(name), data_path(name))
    folder = out / name
    rows = {}
    for target in ("ncnn", "onnx"):
        report = compress(checkpoint, data, target=target, quant={"mode": "none"}, bench=QUICK_BENCH, out=folder)
        for s in report.stages[1:]:
            if s["benchmark"]["takes"] != "tensor":  # the onnx target's frame artifact: timed by frame_compare.py
                continue
            rows[s["name"]] = {"runtime": s["runtime"], "artifact": s["artifact"], "precision": s["precision"],
                               "map50_95": s["accuracy"]["map50_95"], "file_mb": s["benchmark"]["file_mb"],
                               "execution_precision": s["benchmark"]["execution_precision"]}
    timing = time_interleaved({k: (Path(r["artifact"]), r["runtime"]) for k, r in rows.items()}, runs=turns)
    for key, row in rows.items():
        row.update(timing[key])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=["demo", *MODELS], default=["demo", "yolov8n-bccd",
                                                                                    "yolo11n-bccd"])
    parser.add_argument("--turns", type=int, default=300)
    parser.add_argument("--out", type=Path, default=Path("bench/results/ncnn_compare"))
    args = parser.parse_args()
    results = {}
    for name in args.models:
        results[name] = run(name, args.out.resolve(), args.turns)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(results, indent=1))
    print("| model | artifact | runtime | mAP50-95 | size MB | p50 ms | p90 ms | p50 / onnxruntime FP32 |")
    print("|---|---|---|---|---|---|---|---|")
    for name, rows in results.items():
        base = rows["onnx-fp32"]["p50_ms"]
        for key, row in rows.items():
            print(f"| {name} | {key} | {row['runtime']} ({row['execution_precision'] or 'f32'}) | "
                  f"{row['map50_95']:.4f} | {row['file_mb']:.1f} | {row['p50_ms']:.1f} | {row['p90_ms']:.1f} | "
                  f"{row['p50_ms'] / base:.2f}x |")


if __name__ == "__main__":
    main()
