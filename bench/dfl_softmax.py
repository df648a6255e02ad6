"""The DFL decode's softmax on the last axis instead of axis 1 (edgecompress.calibration.graph.dfl_softmax_last_axis,
what the onnxruntime targets' export does), in the FP32 export and in the onnx target's QDQ INT8 (whose decode is
float): outputs compared, then all timed taking turns in onnxruntime, and the FP32 pair in OpenVINO (the product's
timer).

    python bench/dfl_softmax.py [--models yolo11n-bccd yolov8n-bccd] [--turns 400]

Reads the FP32 exports of bench/quant_compare.py's runs (bench/results/quant_compare/<model>/run-<model>/stages).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
from pathlib import Path

import numpy as np
from common import RUNTIMES, interleaved

from edgecompress.calibration.graph import dfl_softmax_last_axis


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--models", nargs="+", default=["yolo11n-bccd", "yolov8n-bccd"])
    p.add_argument("--turns", type=int, default=400)
    p.add_argument("--out", type=Path, default=Path("bench/results/dfl_softmax"))
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    x = np.random.default_rng(0).random((1, 3, 640, 640), dtype=np.float32)
    for name in args.models:
        stages = Path(f"bench/results/quant_compare/{name}/run-{name}/stages")
        sources = {"fp32": next(stages.glob("export-*/model.onnx")),
                   "int8": next(stages.glob("quantize-onnx-*/model_int8.onnx"))}  # its decode is float: the same
        graphs: dict[str, Path] = {}
        for kind, source in sources.items():
            graphs[f"{kind} axis 1"] = source
            graphs[f"{kind} last axis"] = shutil.copy2(source, args.out / f"{name}-{kind}-dfl-last-axis.onnx")
            assert dfl_softmax_last_axis(graphs[f"{kind} last axis"]), f"{name}: no DFL of Ultralytics' layout"
        for runtime, kinds in (("onnxruntime", ("fp32", "int8")), ("openvino", ("fp32",))):
            sessions = {k: RUNTIMES[runtime].load(path, shared=True) for k, path in graphs.items()
                        if k.split()[0] in kinds}
            outputs = {k: s.infer(x)[0] for k, s in sessions.items()}
            times = interleaved({k: (lambda s=s: s.infer(x)) for k, s in sessions.items()}, args.turns)
            p50 = {k: round(statistics.median(t), 2) for k, t in times.items()}
            print(json.dumps({"model": name, "runtime": runtime, "p50_ms": p50, **{
                f"{kind} last/axis1": round(p50[f"{kind} last axis"] / p50[f"{kind} axis 1"], 3) for kind in kinds},
                **{f"{kind} max_abs_diff": float(np.abs(outputs[f"{kind} axis 1"] - outputs[f"{kind} last axis"]).max())
                   for kind in kinds}}), flush=True)

if __name__ == "__main__":
    main()
