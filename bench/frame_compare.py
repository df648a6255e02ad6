"""The whole frame (issue 22, BENCHMARKS.md "The whole frame"): end-to-end latency against the network alone, and
accuracy, with the letterbox and NMS on the host or inside the artifact.

For each model, target and input size it runs the pipeline (INT8 for the target, the recipe's defaults, `frame`
at the target's default), then wraps the same INT8 network every other way (`frame.input` frame, letterboxed,
tensor; NMS inside) and times, all loaded in this one process and taking turns at every call
(edgecompress.device.timing.interleaved, the product's timer):

- `inference`: the INT8 network alone on a fixed input (what the report's inference column times);
- `host`: the network with the host doing the rest, as a device without our artifacts would (OpenCV letterbox,
  numpy conversion and NMS; edgecompress.device.detector);
- one row per wrapped artifact, fed as a device feeds it (edgecompress.device.detector).

The end-to-end rows cycle through the eval split's first 16 images, decoded once before any timing at their native
sizes (bccd: 640x480), NMS at the deployed thresholds (conf 0.25, iou 0.7, 300 detections). Accuracy: the network
by Ultralytics' validator (the report's figure), and every variant and the network fed the eval images as a
device feeds them (Evaluator.frames), at the eval thresholds (conf 0.001). Run it on a quiet machine:

    YOLO_OFFLINE=1 .venv/bin/python bench/frame_compare.py --out bench/results/frame
    # smoke test (the embedded demo, tiny): --models demo --imgsz 160 --turns 20 --targets onnx x86
    # accuracy only (the same runs, reused from --out): --turns 0

Writes <out>/results.json and prints the tables for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

os.environ.setdefault("YOLO_OFFLINE", "1")

from common import MODELS, data_path, evaluator, model_path  # noqa: E402

from edgecompress.api import compress  # noqa: E402
from edgecompress.device.bench import BENCH_IMAGES  # noqa: E402
from edgecompress.device.detector import Detector  # noqa: E402
from edgecompress.device.host import host_info  # noqa: E402
from edgecompress.device.images import read_images  # noqa: E402
from edgecompress.device.postprocess import Thresholds  # noqa: E402
from edgecompress.device.runtime import RUNTIMES  # noqa: E402
from edgecompress.device.timing import interleaved  # noqa: E402
from edgecompress.pipeline.runner import demo_paths  # noqa: E402
from edgecompress.targets import get_target  # noqa: E402
from edgecompress.targets.frame import INPUTS, FrameConfig  # noqa: E402

EVAL = Thresholds(conf=0.001, iou=0.7)  # the recipe's eval defaults: Ultralytics' validator's


def percentiles(times: list[float]) -> dict[str, float]:
    return {f"p{q}_ms": round(float(np.percentile(times, q)), 3) for q in (50, 90, 99)}


def measure(name: str, target_name: str, imgsz: int, turns: int, out: Path) -> dict:
    """One model, target and size: the pipeline's run, every variant wrapped, timed and evaluated."""
    checkpoint, data = demo_paths() if name == "demo" else (model_path(name), data_path(name))
    target = get_target(target_name)
    run_dir = out / f"{name}-{target_name}-{imgsz}"
    report = compress(checkpoint, data, target=target_name, imgsz=imgsz, out=run_dir,
                      bench={"warmup": 1, "runs": 5, "max_seconds": 5.0})  # the timing that counts is below
    frame_row = report.stages[-1]
    if "frame" not in frame_row["info"]:
        raise SystemExit(f"{run_dir}: the run made no frame artifact (its last stage is {frame_row['name']})")
    network_row = report.stage(frame_row["info"]["network"])
    network, runtime = Path(network_row["artifact"]), network_row["runtime"]
    default = report.data["recipe"]["frame"]  # the target's, filled in by the run
    variants = {f"{inp}+nms": FrameConfig(input=inp) for inp in INPUTS}
    folder = run_dir / "variants"
    artifacts = {label: target.wrap(network, config, folder) for label, config in variants.items()}

    evaluate = evaluator(data, imgsz)  # the run's protocol, on the same split
    accuracy = {"validator": network_row["accuracy"]["map50_95"],  # the network, by Ultralytics' validator
                "host": evaluate.frames(Detector(RUNTIMES[runtime].load(network), imgsz, EVAL), folder)["map50_95"]}
    for label, config in variants.items():
        twin = target.wrap(network, config.with_thresholds(EVAL.conf, EVAL.iou), folder / "twins")
        accuracy[label] = evaluate.frames(Detector(RUNTIMES[runtime].load(twin), imgsz, EVAL), folder)["map50_95"]

    frames, broken = read_images(evaluate.dataset.images("val")[:BENCH_IMAGES])
    sessions = {"host": RUNTIMES[runtime].load(network, shared=True),
                **{label: RUNTIMES[runtime].load(path, shared=True) for label, path in artifacts.items()}}
    x = np.random.default_rng(0).random((1, 3, imgsz, imgsz), dtype=np.float32)
    counters = dict.fromkeys(sessions, 0)

    def end_to_end(label: str):
        detect = Detector(sessions[label], imgsz)  # the deployed thresholds (Ultralytics' predict defaults)

        def step() -> None:
            counters[label] += 1
            detect(frames[counters[label] % len(frames)])

        return step

    steps = {"inference": lambda: sessions["host"].infer(x), **{label: end_to_end(label) for label in sessions}}
    times = interleaved(steps, turns) if turns else {}
    base = float(np.median(times["inference"])) if times else 1.0
    timing = {label: {**percentiles(t), "over_inference": round(float(np.median(t)) / base, 3)}
              for label, t in times.items()}
    return {"model": name, "target": target_name, "runtime": runtime, "imgsz": imgsz, "turns": turns,
            "frames": [f.shape[:2] for f in frames][:3], "skipped": [str(p) for p in broken],
            "default": default, "network": str(network), "execution_precision": network_row["benchmark"][
                "execution_precision"], "timing": timing, "map50_95": accuracy,
            "report": {"frame_stage": frame_row["name"], "change_points": frame_row["accuracy"]["change_points"],
                       "map50_95": frame_row["accuracy"]["map50_95"]}}


def table(results: list[dict]) -> str:
    lines = ["| model | target | imgsz | path | p50 (ms) | p90 (ms) | x inference | mAP50-95 (frames) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        default = f"{r['default']['input']}+nms" if r["default"]["nms"] else None
        for label in ("inference", "host", *(f"{inp}+nms" for inp in INPUTS)):
            shown = f"**{label}** (default)" if label == default else label
            t, acc = r["timing"].get(label), r["map50_95"].get(label)
            times = f"{t['p50_ms']:.2f} | {t['p90_ms']:.2f} | {t['over_inference']:.2f}" if t else " | | "
            lines.append(f"| {r['model']} | {r['target']} | {r['imgsz']} | {shown} | {times} "
                         f"| {'' if acc is None else f'{acc:.4f}'} |")
        lines.append(f"| | | | network, Ultralytics' validator | | | | {r['map50_95']['validator']:.4f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["yolov8n-bccd", "yolo11n-bccd"], choices=[*MODELS, "demo"])
    ap.add_argument("--targets", nargs="+", default=["x86", "onnx"])
    ap.add_argument("--imgsz", nargs="+", type=int, default=[640, 448])
    ap.add_argument("--turns", type=int, default=300,
                    help="calls of each path, taking turns; 0: accuracy only, no timing")
    ap.add_argument("--out", type=Path, default=Path("bench/results/frame"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for name in args.models:
        for target in args.targets:
            for imgsz in args.imgsz:
                results.append(measure(name, target, imgsz, args.turns, args.out.resolve()))
                print(json.dumps({k: results[-1][k] for k in ("timing", "map50_95")}), flush=True)
                (args.out / "results.json").write_text(json.dumps({"host": host_info(), "results": results},
                                                                  indent=1))
    print(table(results))


if __name__ == "__main__":
    main()
