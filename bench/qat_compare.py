"""PTQ against QAT on one model, per INT8 scheme: mAP50-95 of each artifact in onnxruntime, and its latency.

    YOLO_OFFLINE=1 nice -n 10 .venv/bin/python bench/qat_compare.py [--model yolov8n-bccd] [--epochs 2]

The jetson artifacts (symmetric int8, TensorRT's scheme) are evaluated in onnxruntime on the CPU, their accuracy
proxy. PTQ runs without the accuracy-aware fallback (max_float_layers 0), since QAT has none: the rows compare
the two ways of reaching INT8, not the fallback. QAT is trained once per setting (qat_train) and exported
per target (qat_export), which is what qat() does for each target. Rows are saved to <out>/results.json as they finish,
and a rerun skips the finished ones.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")

from edgecompress.pipeline.yolo import evaluate, export_onnx, load_model  # noqa: E402  (first: no label caches)
from edgecompress.pipeline.quantize import QATConfig, QuantConfig, qat_export, qat_train, quantize  # noqa: E402
from edgecompress.targets import TARGETS  # noqa: E402
from common import SHARED, time_alternating  # noqa: E402

SCHEMES = {"jetson": "jetson-orin-nano", "onnx": "onnx"}
IMGSZ = 640


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="yolov8n-bccd")
    parser.add_argument("--data", default="bccd")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr0", type=float, default=QATConfig.lr0)
    parser.add_argument("--nbs", type=int, default=QATConfig.nbs, help="QATConfig.nbs")
    parser.add_argument("--freeze-bn", action=argparse.BooleanOptionalAction, default=QATConfig.freeze_bn,
                        help="QATConfig.freeze_bn")
    parser.add_argument("--distill", type=float, default=QATConfig.distill, help="QATConfig.distill")
    parser.add_argument("--out", type=Path, default=Path("bench/results/qat_compare"))
    args = parser.parse_args()
    data = str(SHARED / "datasets" / args.data / "data.yaml")
    folder = args.out / args.model
    folder.mkdir(parents=True, exist_ok=True)
    saved = folder / "results.json"
    rows: dict[str, dict] = json.loads(saved.read_text()) if saved.is_file() else {}
    model = load_model(SHARED / "models" / f"{args.model}.pt")
    onnx_fp32, _ = export_onnx(model, IMGSZ, folder, args.model)

    def map_of(artifact: Path) -> float:
        if artifact == onnx_fp32 and "fp32" in rows:  # quantize() asks for the baseline measured above
            return rows["fp32"]["map50_95"]
        return evaluate(artifact, data, IMGSZ, "val", 0.001, 0.7, "cpu", folder / "val")["map50_95"]

    def record(key: str, artifact: Path, info: dict | None = None) -> None:
        rows[key] = {"artifact": str(artifact), "map50_95": map_of(artifact), "info": info or {}}
        print(key, rows[key]["map50_95"], flush=True)
        saved.write_text(json.dumps(rows, indent=1))

    if "fp32" not in rows:
        record("fp32", onnx_fp32)
    # QAT first: the longest and least certain part of the run
    config = QuantConfig("qat", qat=QATConfig(epochs=args.epochs, lr0=args.lr0, nbs=args.nbs,
                                                 freeze_bn=args.freeze_bn, distill=args.distill))
    # QAT rows of several settings share one results file
    # (rows named without _nbs were made with nbs 64, the former default)
    run = (f"qat_e{args.epochs}_lr{args.lr0:g}_nbs{args.nbs}" + ("_freeze_bn" if args.freeze_bn else "")
           + (f"_distill{args.distill:g}" if args.distill else ""))
    if not all(f"{run}_{scheme}" in rows for scheme in SCHEMES):
        trained, trained_info = qat_train(model, config, data, IMGSZ, "cpu", folder / run)
        rows[f"{run}_train"] = trained_info
        for scheme, target in SCHEMES.items():
            artifact, info = qat_export(trained, config, TARGETS[target], data, IMGSZ, folder / f"{run}_{scheme}")
            record(f"{run}_{scheme}", artifact, info)
    ptq = QuantConfig("ptq", max_float_layers=0)
    for scheme, target in SCHEMES.items():
        if f"ptq_{scheme}" not in rows:
            artifact, info = quantize(onnx_fp32, ptq, TARGETS[target], data, IMGSZ, folder / f"ptq_{scheme}",
                                      map_of)
            record(f"ptq_{scheme}", artifact, {k: info[k] for k in ("scheme", "calibration_images", "timings")})
    # this run's rows, timed side by side with the baselines (FP32, PTQ); earlier rows keep their own run's timings
    timed = ["fp32", *(f"ptq_{scheme}" for scheme in SCHEMES), *(f"{run}_{scheme}" for scheme in SCHEMES)]
    artifacts = {key: (Path(rows[key]["artifact"]), "onnxruntime") for key in timed}
    for key, timing in time_alternating(artifacts, runs=30).items():
        rows[key]["latency_ms"] = timing["p50_ms"]
    rows["machine"] = f"{platform.machine()} {os.cpu_count()} CPUs, {platform.processor() or platform.platform()}"
    saved.write_text(json.dumps(rows, indent=1))

    base = rows["fp32"]
    print(f"\n| artifact | mAP50-95 | vs FP32 (points) | latency ms (onnxruntime) |\n|---|---|---|---|")
    for key, row in rows.items():
        if isinstance(row, dict) and "map50_95" in row:
            print(f"| {key} | {row['map50_95']:.4f} | {100 * (row['map50_95'] - base['map50_95']):+.2f} "
                  f"| {row.get('latency_ms', float('nan')):.1f} |")


if __name__ == "__main__":
    main()
