"""INT8 side by side with Ultralytics' own int8 exports: mAP50-95 in each artifact's runtime and batch-1 latency.

    YOLO_OFFLINE=1 nice -n 10 .venv/bin/python bench/quant_compare.py [--models yolov8n-bccd ...]
        [--targets onnx x86 jetson] [--x86 nncf qdq auto] [--pruned PT] [--out runs/quant_compare]

Writes <out>/results.json and prints a Markdown table for BENCHMARKS.md. Latency: median of timed runs after
warm-up, through edgecompress.targets.runtimes (the runtime's default threads), on a constant 640x640 input.
`--targets x86` measures only the OpenVINO rows (ours and Ultralytics'); `--x86` picks our x86 quantizers
(`quant.openvino_quantizer`), each a row `ours_x86_<quantizer>`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")

from edgecompress.pipeline.quantize import QuantConfig, quantize  # noqa: E402
from edgecompress.pipeline.yolo import evaluate, export_onnx, load_model  # noqa: E402
from edgecompress.targets import TARGETS  # noqa: E402
from edgecompress.targets.runtimes import convert_onnx  # noqa: E402
from common import SHARED, time_alternating  # noqa: E402

MODELS = {"yolov8n-bccd": "bccd", "yolo11n-bccd": "bccd", "yolov8n-raccoon": "raccoon"}
TARGETS_COMPARED = ("onnx", "x86", "jetson")
# Ultralytics' exports: row -> (format, quantize, the target whose rows it is compared with)
ULTRALYTICS = {"ul_ov_fp32": ("openvino", None, "x86"), "ul_ov_int8": ("openvino", 8, "x86"),
               "ul_onnx_int8": ("onnx", 8, "onnx")}


def shown(info: dict) -> dict:
    """The part of quantize()'s info that a results row keeps."""
    keys = ("method", "scheme", "calibration_images", "float_layers", "fallback_steps", "openvino_quantizer",
            "timings")
    return {k: info[k] for k in keys if k in info}


def ultralytics_exports(pt: Path, data: str, folder: Path, keys: list[str]) -> dict[str, Path]:
    """Ultralytics' own FP32/INT8 exports `keys` (of ULTRALYTICS: onnxruntime quantize_static and NNCF),
    beside a copy of the .pt."""
    from ultralytics import YOLO

    local = folder / "ultralytics" / pt.name
    local.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(pt, local)
    out = {}
    for key in keys:
        fmt, q, _ = ULTRALYTICS[key]
        args = {"format": fmt, "imgsz": 640, "batch": 1, "device": "cpu", "data": data}
        if q:
            args["quantize"] = q
        out[key] = Path(YOLO(str(local)).export(**args))
        if fmt == "onnx":  # the next export would overwrite the same file name
            moved = out[key].with_name(f"{out[key].stem}_ul_int8.onnx")
            out[key].rename(moved)
            out[key] = moved
    return out


def run(name: str, out: Path, targets: list[str], x86: list[str], pruned: Path | None = None) -> dict:
    data = str(SHARED / "datasets" / MODELS[name] / "data.yaml")
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    onnx_fp32, metadata = export_onnx(load_model(SHARED / "models" / f"{name}.pt").float().eval(), 640, folder, name)

    def map_of(artifact: Path) -> float:
        return evaluate(artifact, data, 640, "val", 0.001, 0.7, "cpu", folder / "val")["map50_95"]

    saved = folder / "results.json"  # rows measured by an earlier, interrupted run are kept, not re-measured
    rows: dict[str, dict] = json.loads(saved.read_text()) if saved.is_file() else {}

    def record(key: str, runtime: str, artifact: Path, extra: dict | None = None) -> None:
        rows[key] = {"runtime": runtime, "artifact": str(artifact), "map50_95": map_of(artifact), **(extra or {})}
        print(name, key, rows[key], flush=True)
        (folder / "results.json").write_text(json.dumps(rows, indent=1))

    onnxruntime = bool({"onnx", "jetson"} & set(targets))  # jetson's accuracy proxy runs in onnxruntime
    if onnxruntime and "ort_fp32" not in rows:
        record("ort_fp32", "onnxruntime", onnx_fp32)
    if "x86" in targets and "ov_fp32" not in rows:
        ov_fp32 = folder / f"{name}_openvino_model"
        convert_onnx("openvino", onnx_fp32, ov_fp32, metadata)
        record("ov_fp32", "openvino", ov_fp32)
    missing = [key for key, (_, _, target) in ULTRALYTICS.items() if target in targets and key not in rows]
    for key, path in ultralytics_exports(SHARED / "models" / f"{name}.pt", data, folder, missing).items():
        record(key, "onnxruntime" if key == "ul_onnx_int8" else "openvino", path)
    ours = [  # each with the accuracy goal as its fallback budget (points of mAP50-95 against FP32)
        ("ours_onnx", "onnx", QuantConfig("ptq", max_map_drop=0.5)),
        *[(f"ours_x86_{q}", "x86", QuantConfig("ptq", openvino_quantizer=q, max_map_drop=0.5)) for q in x86],
        ("ours_jetson_proxy", "jetson", QuantConfig("ptq", max_map_drop=0.7)),
    ]
    for key, target, config in ours:
        if key in rows or target not in targets:
            continue
        t = TARGETS[target] if target in TARGETS else TARGETS["jetson-orin-nano"]
        runtime = "onnxruntime" if t.runtime == "tensorrt" else t.runtime  # jetson: accuracy proxy on the CPU
        baseline = rows[{"openvino": "ov_fp32", "onnxruntime": "ort_fp32"}[runtime]]["map50_95"]
        artifact, info = quantize(onnx_fp32, config, t, data, 640, folder / key, map_of, baseline)
        record(key, runtime, artifact, {"info": shown(info)})
    if pruned and "x86" in targets and "pruned_ov_fp32" not in rows:  # prune + INT8, against the unpruned rows
        (folder / "pruned").mkdir(exist_ok=True)
        pruned_onnx, pruned_meta = export_onnx(load_model(pruned).float().eval(), 640, folder / "pruned", "pruned")
        convert_onnx("openvino", pruned_onnx, folder / "pruned" / "pruned_openvino_model", pruned_meta)
        record("pruned_ov_fp32", "openvino", folder / "pruned" / "pruned_openvino_model", {"checkpoint": str(pruned)})
        artifact, info = quantize(pruned_onnx, QuantConfig("ptq", max_map_drop=0.5), TARGETS["x86"], data, 640,
                                  folder / "pruned_x86", map_of, rows["pruned_ov_fp32"]["map50_95"])
        record("pruned_x86_int8", "openvino", artifact, {"info": shown(info)})
    # all artifacts timed at the end, taking turns, so that each ratio is measured side by side (rows an
    # earlier run kept for other targets too)
    timing = time_alternating({key: (Path(row["artifact"]), row["runtime"]) for key, row in rows.items()}, runs=50)
    for key, row in rows.items():
        row["latency_ms"] = timing[key]["p50_ms"]
    (folder / "results.json").write_text(json.dumps(rows, indent=1))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--targets", nargs="+", choices=TARGETS_COMPARED, default=list(TARGETS_COMPARED),
                        help="the targets whose rows to measure (x86: the OpenVINO rows)")
    parser.add_argument("--x86", nargs="+", choices=["nncf", "qdq", "auto"], default=["nncf", "qdq", "auto"],
                        help="our x86 quantizers (quant.openvino_quantizer), a row each")
    parser.add_argument("--pruned", type=Path, help="also a pruned checkpoint of the first --models, as FP32 and "
                        "x86 INT8 rows (pruned_*) timed with the rest")
    parser.add_argument("--out", type=Path, default=Path("runs/quant_compare"))
    args = parser.parse_args()
    machine = f"{platform.machine()} {os.cpu_count()} CPUs, {platform.processor() or platform.platform()}"
    results = {"machine": machine, "models": {}}
    for name in args.models:
        results["models"][name] = run(name, args.out, args.targets, args.x86,
                                      args.pruned if name == args.models[0] else None)
        (args.out / "results.json").write_text(json.dumps(results, indent=1))
    for name, rows in results["models"].items():
        print(f"\n### {name}\n\n| artifact | runtime | mAP50-95 | Δ vs FP32 (points) | latency ms "
              f"| speed-up vs FP32 | time / Ultralytics INT8's |")
        print("|---|---|---|---|---|---|---|")
        for key, row in rows.items():
            base = rows["ov_fp32" if row["runtime"] == "openvino" else "ort_fp32"]
            ul = rows.get("ul_ov_int8" if row["runtime"] == "openvino" else "ul_onnx_int8")
            vs_ul = f"{row['latency_ms'] / ul['latency_ms']:.2f}x" if ul else "—"
            print(f"| {key} | {row['runtime']} | {row['map50_95']:.4f} | {100 * (row['map50_95'] - base['map50_95']):+.2f}"
                  f" | {row['latency_ms']:.1f} | {base['latency_ms'] / row['latency_ms']:.2f}x | {vs_ul} |")
        for key, row in rows.items():
            if choice := row.get("info", {}).get("openvino_quantizer"):
                print(f"\n{key}: {choice['reason']}")


if __name__ == "__main__":
    main()
