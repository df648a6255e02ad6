"""INT8 side by side with Ultralytics' own int8 exports: mAP50-95 of each artifact in its runtime, and latency.

    YOLO_OFFLINE=1 nice -n 10 .venv/bin/python bench/quant_compare.py [--models yolov8n-bccd ...]
        [--targets onnx x86 jetson] [--quantizers nncf qdq auto] [--pruned PT] [--out bench/results/quant_compare]

Our rows are the pipeline's own runs (`compress --target T`, one output folder per model, so the stages targets
share are made once): the FP32 stage in the target's runtime and the INT8 stage, each with the issue's accuracy
goal as the fallback's budget. x86 runs once per quantizer (`quant.quantizer`), a row `ours_x86_<quantizer>`;
jetson's QDQ ONNX is evaluated in onnxruntime on the CPU (its accuracy proxy). At the end every artifact is timed
interleaved in this process (edgecompress.device.timing), so each ratio is measured side by side.
Writes <out>/results.json (rows of an interrupted run are kept and not re-measured) and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
from pathlib import Path

from common import MODELS, data_path, evaluator, model_path, time_interleaved

from edgecompress.api import compress

TARGETS_COMPARED = ("onnx", "x86", "jetson")
BUDGETS = {"onnx": 0.5, "x86": 0.5, "jetson": 0.7}  # points of mAP50-95 against FP32 (the issues' goals)
# Ultralytics' exports: row -> (format, quantize, the target whose rows it is compared with)
ULTRALYTICS = {"ul_ov_fp32": ("openvino", None, "x86"), "ul_ov_int8": ("openvino", 8, "x86"),
               "ul_onnx_int8": ("onnx", 8, "onnx")}
QUICK_BENCH = {"warmup": 1, "runs": 3, "max_seconds": 5.0}  # the pipeline's own timing: the closing one counts


def shown(info: dict) -> dict:
    """The part of a quantize stage's info that a results row keeps."""
    keys = ("quantizer", "method", "scheme", "calibration_images", "float_layers", "fallback_steps",
            "quantizer_choice", "timings")
    return {k: info[k] for k in keys if k in info}


def ultralytics_exports(pt: Path, data: Path, folder: Path, keys: list[str]) -> dict[str, Path]:
    """Ultralytics' own FP32/INT8 exports `keys` (of ULTRALYTICS: onnxruntime quantize_static and NNCF),
    beside a copy of the .pt."""
    from ultralytics import YOLO

    local = folder / "ultralytics" / pt.name
    local.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(pt, local)
    out = {}
    for key in keys:
        fmt, q, _ = ULTRALYTICS[key]
        args = {"format": fmt, "imgsz": 640, "batch": 1, "device": "cpu", "data": str(data)}
        if q:
            args["quantize"] = q
        out[key] = Path(YOLO(str(local)).export(**args))
        if fmt == "onnx":  # the next export would overwrite the same file name
            moved = out[key].with_name(f"{out[key].stem}_ul_int8.onnx")
            out[key].rename(moved)
            out[key] = moved
    return out


def run(name: str, out: Path, targets: list[str], quantizers: list[str], pruned: Path | None = None) -> dict:
    data = data_path(name)
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    saved = folder / "results.json"
    rows: dict[str, dict] = json.loads(saved.read_text()) if saved.is_file() else {}

    def record(key: str, row: dict) -> None:
        rows[key] = row
        print(name, key, {k: row[k] for k in ("runtime", "map50_95")}, flush=True)
        saved.write_text(json.dumps(rows, indent=1))

    def pipeline(key: str, checkpoint: Path, target: str, fp32_key: str, **quant: object) -> None:
        report = compress(checkpoint, data, target=target, out=folder / f"run-{checkpoint.stem}",
                          quant={"max_map_drop": BUDGETS[target], **quant}, bench=QUICK_BENCH)
        # the networks fed Ultralytics' tensor (the artifact with the frame inside follows them): FP32, then INT8
        fp32, int8 = [s for s in report.stages if s["benchmark"]["takes"] == "tensor"][-2:]
        if fp32_key not in rows:
            record(fp32_key, {"runtime": fp32["runtime"], "artifact": fp32["artifact"],
                              "map50_95": fp32["accuracy"]["map50_95"]})
        record(key, {"runtime": int8["runtime"], "artifact": int8["artifact"], "map50_95": int8["accuracy"]["map50_95"],
                     "fp32": fp32_key, "info": shown(int8["info"])})

    ours = [(f"ours_{t}", t, {}) for t in targets if t != "x86"]
    ours += [(f"ours_x86_{q}", "x86", {"quantizer": q}) for q in quantizers if "x86" in targets]
    for key, target, quant in ours:
        if key not in rows:
            pipeline(key, model_path(name), target, "ov_fp32" if target == "x86" else "ort_fp32", **quant)
    if pruned and "x86" in targets and "pruned_x86_int8" not in rows:  # prune + INT8, against the unpruned rows
        pipeline("pruned_x86_int8", pruned, "x86", "pruned_ov_fp32")
    missing = [key for key, (_, _, target) in ULTRALYTICS.items() if target in targets and key not in rows]
    evaluate = evaluator(data)
    for key, path in ultralytics_exports(model_path(name), data, folder, missing).items():
        runtime = "onnxruntime" if key == "ul_onnx_int8" else "openvino"
        record(key, {"runtime": runtime, "artifact": str(path),
                     "map50_95": evaluate(path, folder / "val")["map50_95"],
                     "fp32": "ov_fp32" if runtime == "openvino" else "ort_fp32"})
    # all artifacts timed at the end, taking turns, so that each ratio is measured side by side
    timing = time_interleaved({key: (Path(row["artifact"]), row["runtime"]) for key, row in rows.items()})
    for key, row in rows.items():
        row["latency_ms"] = timing[key]["p50_ms"]
    saved.write_text(json.dumps(rows, indent=1))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--targets", nargs="+", choices=TARGETS_COMPARED, default=list(TARGETS_COMPARED),
                        help="the targets whose rows to measure (x86: the OpenVINO rows)")
    parser.add_argument("--quantizers", nargs="+", choices=["nncf", "qdq", "auto"], default=["nncf", "qdq", "auto"],
                        help="our x86 quantizers (quant.quantizer), a row each")
    parser.add_argument("--pruned", type=Path, help="also a pruned checkpoint of the first --models, as FP32 and "
                        "x86 INT8 rows (pruned_*) timed with the rest")
    parser.add_argument("--out", type=Path, default=Path("bench/results/quant_compare"))
    args = parser.parse_args()
    machine = f"{platform.machine()} {os.cpu_count()} CPUs, {platform.processor() or platform.platform()}"
    results = {"machine": machine, "models": {}}
    for name in args.models:
        results["models"][name] = run(name, args.out.resolve(), args.targets, args.quantizers,
                                      args.pruned.resolve() if args.pruned and name == args.models[0] else None)
        (args.out / "results.json").write_text(json.dumps(results, indent=1))
    for name, rows in results["models"].items():
        print(f"\n### {name}\n\n| artifact | runtime | mAP50-95 | Δ vs FP32 (points) | latency ms "
              f"| speed-up vs FP32 | time / Ultralytics INT8's |")
        print("|---|---|---|---|---|---|---|")
        for key, row in rows.items():
            base = rows.get(row.get("fp32", key), row)
            ul = rows.get("ul_ov_int8" if row["runtime"] == "openvino" else "ul_onnx_int8")
            vs_ul = f"{row['latency_ms'] / ul['latency_ms']:.2f}x" if ul else "—"
            print(f"| {key} | {row['runtime']} | {row['map50_95']:.4f} "
                  f"| {100 * (row['map50_95'] - base['map50_95']):+.2f} | {row['latency_ms']:.1f} "
                  f"| {base['latency_ms'] / row['latency_ms']:.2f}x | {vs_ul} |")
        for key, row in rows.items():
            if choice := row.get("info", {}).get("quantizer_choice"):
                print(f"\n{key}: {choice['reason']}")


if __name__ == "__main__":
    main()
