"""One scale per group of tensors that a Concat, Split, MaxPool or Resize joins, in the onnx target's QDQ (the
`outputs` placement), against the ranges as calibrated: onnxruntime's QLinearConcat copies its inputs when each
has the output's scale and zero point, and requantizes each through a lookup table otherwise.

For each model: the pipeline's FP32 export for the onnx target (DFL decode on the last axis), its calibration
statistics on the recipe's calibration images, then two INT8 QDQ graphs from the same method's ranges, with and
without the groups unified (no layer in float); both evaluated (Ultralytics' validator, val split, 640) and timed
with the FP32 graph taking turns in onnxruntime (the product's timer).

    python bench/concat_scales.py yolo11n-bccd:percentile yolov8n-bccd:mse yolov8n-raccoon:minmax [--turns 300]

(the method after each model: the one `quant.method: auto` kept for it, BENCHMARKS.md "INT8 with calibration
chosen by measurement").
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

import numpy as np

os.environ.setdefault("YOLO_OFFLINE", "1")

from common import RUNTIMES, data_path, evaluator, interleaved, model_path  # noqa: E402

from edgecompress.api import compress  # noqa: E402
from edgecompress.calibration.graph import shared_scale_groups  # noqa: E402
from edgecompress.quantize.config import QuantConfig  # noqa: E402
from edgecompress.quantize.qdq import quantize_qdq  # noqa: E402
from edgecompress.quantize.quantizers import Job  # noqa: E402
from edgecompress.quantize.scheme import Scheme  # noqa: E402
from edgecompress.targets import get_target  # noqa: E402


def measure(name: str, method: str, turns: int, out: Path) -> dict:
    data = data_path(name)
    compress(model_path(name), data, target="onnx", imgsz=640, out=out / "run", quant={"mode": "none"},
             bench={"warmup": 1, "runs": 3, "max_seconds": 3.0})
    fp32 = next((out / "run" / "stages").glob("export-*/model.onnx"))
    target, config, evaluate = get_target("onnx"), QuantConfig(method=method), evaluator(data, 640)
    images = evaluate.dataset.calibration_images(config.calibration_images, config.seed)
    job = Job(fp32, fp32, target, config, Scheme.of(target, config), images, 640)
    ranges = job.ranges(method)
    groups = shared_scale_groups(job.proto, job.decode)
    graphs = {"fp32": fp32,
              "int8": quantize_qdq(fp32, ranges, out / "int8.onnx", job.scheme, job.decode),
              "int8 unified": quantize_qdq(fp32, ranges.unified(groups), out / "int8u.onnx", job.scheme, job.decode)}
    accuracy = {k: evaluate(path, out / "eval")["map50_95"] for k, path in graphs.items()}
    sessions = {k: RUNTIMES["onnxruntime"].load(path, shared=True) for k, path in graphs.items()}
    x = np.random.default_rng(0).random((1, 3, 640, 640), dtype=np.float32)
    times = interleaved({k: (lambda s=s: s.infer(x)) for k, s in sessions.items()}, turns)
    p50 = {k: round(statistics.median(t), 2) for k, t in times.items()}
    return {"model": name, "method": method, "groups": len(groups), "p50_ms": p50, "map50_95": accuracy,
            **{f"fp32/{k}": round(p50["fp32"] / p50[k], 3) for k in ("int8", "int8 unified")}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", metavar="MODEL:METHOD")
    ap.add_argument("--turns", type=int, default=300)
    ap.add_argument("--out", type=Path, default=Path("bench/results/concat_scales"))
    args = ap.parse_args()
    for run in args.runs:
        name, _, method = run.partition(":")
        print(json.dumps(measure(name, method, args.turns, (args.out / name).resolve())), flush=True)


if __name__ == "__main__":
    main()
