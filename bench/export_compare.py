"""edgecompress's FP32 export (`--quant none`) against Ultralytics' own exporter, side by side in one run.

For each target (x86 = OpenVINO, onnx = onnxruntime) it runs `compress`, exports the same checkpoint with
Ultralytics, and then measures both artifacts the same way: mAP50-95 by Ultralytics' validator (batch 1) and
latency taking turns in one process (edgecompress.device.timing). It also times a second identical run
(cache reuse) and a run killed in the middle of export, then resumed.

    python bench/export_compare.py --model ../shared/models/yolov8n-bccd.pt \
        --data ../shared/datasets/bccd/data.yaml --out bench/results/export
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")

from common import SHARED, time_interleaved  # noqa: E402

def compress(model: Path, data: Path, target: str, out: Path) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "edgecompress.cli", "--model", str(model),
                           "--data", str(data), "--target", target, "--out", str(out), "--quant", "none"],
                          capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"compress --target {target} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start, proc


def killed_in_export(model: Path, data: Path, target: str, out: Path) -> dict:
    """Kill a fresh run with SIGKILL as soon as its export stage starts, then resume it."""
    command = [sys.executable, "-m", "edgecompress.cli", "--model", str(model), "--data", str(data),
               "--target", target, "--out", str(out), "--quant", "none"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not list((out / "stages").glob(".tmp-export-*")) and proc.poll() is None:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    seconds, resumed = compress(model, data, target, out)
    report = json.loads((out / "report.json").read_text())
    return {"resumed_s": round(seconds, 1), "removed_unfinished": "removed 1 unfinished" in resumed.stderr,
            "stages": {s["name"]: {"map50_95": s["accuracy"]["map50_95"],
                                   "p50_ms": s["benchmark"]["inference"]["p50_ms"]} for s in report["stages"]}}


def ultralytics_export(model: Path, fmt: str, folder: Path) -> Path:
    from ultralytics import YOLO

    folder.mkdir(parents=True, exist_ok=True)
    copy = folder / model.name  # Ultralytics writes beside the checkpoint: keep the user's folder untouched
    shutil.copyfile(model, copy)
    return Path(YOLO(str(copy)).export(format=fmt, imgsz=640, batch=1, simplify=True))


def ultralytics_val(artifact: Path, data: Path) -> dict:
    from ultralytics import YOLO

    r = YOLO(str(artifact), task="detect").val(data=str(data), imgsz=640, batch=1, device="cpu", plots=False,
                                               verbose=False, project=str(artifact.parent), name="val")
    return {"map50_95": round(float(r.box.map), 4), "val_inference_ms": round(r.speed["inference"], 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=SHARED / "models" / "yolov8n-bccd.pt")
    ap.add_argument("--data", type=Path, default=SHARED / "datasets" / "bccd" / "data.yaml")
    ap.add_argument("--out", type=Path, default=Path("bench/results/export"))
    ap.add_argument("--targets", nargs="+", default=["x86", "onnx"])
    args = ap.parse_args()
    model, data, out = args.model.resolve(), args.data.resolve(), args.out.resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    formats = {"x86": ("openvino", "openvino"), "onnx": ("onnx", "onnxruntime")}
    results = {}
    for target in args.targets:
        fmt, runtime = formats[target]
        first_s, _ = compress(model, data, target, out / f"run-{target}")
        second_s, _ = compress(model, data, target, out / f"run-{target}")
        report = json.loads((out / f"run-{target}" / "report.json").read_text())
        ours = out / f"run-{target}" / report["final"]["artifact"]
        theirs = ultralytics_export(model, fmt, out / f"ultralytics-{target}")
        timing = time_interleaved({"edgecompress": (ours, runtime), "ultralytics": (theirs, runtime)})
        results[target] = {
            "edgecompress": {"map50_95_report": report["stages"][-1]["accuracy"]["map50_95"],
                             **ultralytics_val(ours, data), **timing["edgecompress"]},
            "ultralytics": {**ultralytics_val(theirs, data), **timing["ultralytics"]},
            "first_run_s": round(first_s, 1), "second_run_s": round(second_s, 1),
            "second_over_first": round(second_s / first_s, 3),
            "killed_in_export": killed_in_export(model, data, target, out / f"killed-{target}"),
            "uninterrupted": {s["name"]: {"map50_95": s["accuracy"]["map50_95"],
                                          "p50_ms": s["benchmark"]["inference"]["p50_ms"]}
                              for s in report["stages"]},
        }
        print(json.dumps({target: results[target]}, indent=2), flush=True)
    from edgecompress.device.host import host_info

    (out / "results.json").write_text(json.dumps({"host": host_info(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
