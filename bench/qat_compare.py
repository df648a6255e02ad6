"""PTQ against QAT on one model, per INT8 scheme: mAP50-95 of each artifact in its runtime, and its latency.

    YOLO_OFFLINE=1 nice -n 10 .venv/bin/python bench/qat_compare.py [--model yolov8n-bccd] [--epochs 2]
        [--schemes jetson,onnx | x86]

The onnx artifacts run in onnxruntime. x86's run in OpenVINO, exported by both of its quantizers (NNCF, and our
QDQ ONNX, which `auto` takes for QAT), each held to OpenVINO's FP32. The jetson artifacts (symmetric int8,
TensorRT's scheme) are evaluated in onnxruntime on the CPU, their accuracy proxy. PTQ runs without the
accuracy-aware fallback (max_float_layers 0), since QAT has none: the rows compare the two ways of reaching INT8,
not the fallback. QAT is trained once per setting and --schemes run (qat_train) and exported per target
(qat_export), which is what qat() does for each target. Rows are saved to <out>/results.json as they finish, and
a rerun skips the finished ones.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")

from common import SHARED, evaluator, time_interleaved  # noqa: E402

from edgecompress.quantize.config import QATConfig, QuantConfig  # noqa: E402
from edgecompress.quantize.ptq import quantize  # noqa: E402
from edgecompress.quantize.qat import qat_export, qat_train  # noqa: E402
from edgecompress.targets import TARGETS  # noqa: E402
from edgecompress.yolo.model import export_onnx, load_model  # noqa: E402

SCHEMES = {"jetson": "jetson-orin-nano", "onnx": "onnx", "x86_nncf": "x86", "x86_qdq": "x86"}
IMGSZ = 640


def for_scheme(config: QuantConfig, scheme: str) -> QuantConfig:
    """x86 rows name their quantizer (x86_nncf, x86_qdq)."""
    return replace(config, quantizer=scheme.removeprefix("x86_")) if scheme.startswith("x86_") else config


def runtime(key: str) -> str:
    """Where a row's artifact runs: OpenVINO for x86 rows and OpenVINO's FP32, else onnxruntime."""
    return "openvino" if "x86" in key or key == "fp32_openvino" else "onnxruntime"


def fp32_row(key: str) -> str:
    """The FP32 row a row is held to: the same model in the same runtime."""
    return "fp32_openvino" if runtime(key) == "openvino" else "fp32"


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
    parser.add_argument("--schemes", default="jetson,onnx", help="jetson, onnx and x86 (both its quantizers)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/qat_compare"))
    args = parser.parse_args()
    schemes = [s for name in args.schemes.split(",") for s in SCHEMES if s == name or s.startswith(f"{name}_")]
    evaluate = evaluator(SHARED / "datasets" / args.data / "data.yaml", IMGSZ)
    folder = args.out / args.model
    folder.mkdir(parents=True, exist_ok=True)
    saved = folder / "results.json"
    rows: dict[str, dict] = json.loads(saved.read_text()) if saved.is_file() else {}
    model = load_model(SHARED / "models" / f"{args.model}.pt")
    onnx_fp32 = export_onnx(model, IMGSZ, folder, args.model)
    ir = TARGETS["x86"].convert(onnx_fp32, folder, args.model)

    def map_of(artifact: Path) -> float:
        return evaluate(artifact, folder / "val")["map50_95"]

    def record(key: str, artifact: Path, info: dict | None = None) -> None:
        rows[key] = {"artifact": str(artifact), "map50_95": map_of(artifact), "info": info or {}}
        print(key, rows[key]["map50_95"], flush=True)
        saved.write_text(json.dumps(rows, indent=1))

    if "fp32" not in rows:
        record("fp32", onnx_fp32)
    if any(s.startswith("x86") for s in schemes) and "fp32_openvino" not in rows:
        record("fp32_openvino", ir)
    # QAT first: the longest and least certain part of the run
    config = QuantConfig("qat", qat=QATConfig(epochs=args.epochs, lr0=args.lr0, nbs=args.nbs,
                                                 freeze_bn=args.freeze_bn, distill=args.distill))
    # QAT rows of several settings share one results file
    # (rows named without _nbs were made with nbs 64, the former default)
    run = (f"qat_e{args.epochs}_lr{args.lr0:g}_nbs{args.nbs}" + ("_freeze_bn" if args.freeze_bn else "")
           + (f"_distill{args.distill:g}" if args.distill else ""))
    if not all(f"{run}_{scheme}" in rows for scheme in schemes):
        trained, trained_info = qat_train(model, config, evaluate, folder / run)
        rows[f"{run}_train_{args.schemes}"] = trained_info  # one training per --schemes run
        for scheme in schemes:
            artifact, info = qat_export(trained, for_scheme(config, scheme), TARGETS[SCHEMES[scheme]], evaluate,
                                        folder / f"{run}_{scheme}")
            record(f"{run}_{scheme}", artifact, info)
    ptq = QuantConfig("ptq", max_float_layers=0)
    for scheme in schemes:
        if f"ptq_{scheme}" not in rows:
            fp32 = ir if runtime(scheme) == "openvino" else onnx_fp32
            artifact, info = quantize(onnx_fp32, fp32, for_scheme(ptq, scheme), TARGETS[SCHEMES[scheme]], evaluate,
                                      folder / f"ptq_{scheme}", rows[fp32_row(scheme)]["map50_95"])
            record(f"ptq_{scheme}", artifact, {k: info[k] for k in ("scheme", "calibration_images", "timings")})
    # this run's rows, timed side by side with the baselines (FP32, PTQ); earlier rows keep their own run's timings
    fp32_rows = ["fp32", *(["fp32_openvino"] if "fp32_openvino" in rows else [])]
    timed = [*fp32_rows, *(f"ptq_{scheme}" for scheme in schemes), *(f"{run}_{scheme}" for scheme in schemes)]
    artifacts = {key: (Path(rows[key]["artifact"]), runtime(key)) for key in timed}
    for key, timing in time_interleaved(artifacts).items():
        rows[key]["latency_ms"] = timing["p50_ms"]
    rows["machine"] = f"{platform.machine()} {os.cpu_count()} CPUs, {platform.processor() or platform.platform()}"
    saved.write_text(json.dumps(rows, indent=1))

    print("\n| artifact | mAP50-95 | vs FP32 in its runtime (points) | latency ms |\n|---|---|---|---|")
    for key, row in rows.items():
        if isinstance(row, dict) and "map50_95" in row:
            base = rows[fp32_row(key)]
            print(f"| {key} | {row['map50_95']:.4f} | {100 * (row['map50_95'] - base['map50_95']):+.2f} "
                  f"| {row.get('latency_ms', float('nan')):.1f} |")


if __name__ == "__main__":
    main()
