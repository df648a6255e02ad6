"""Fine-tuning an unpruned model at a smaller image size than it was trained at: its mAP50-95 at that size before and
after a few epochs of each schedule (the pipeline's evaluator, batch 1). This is the case `compress search` meets for
an unpruned candidate below the trained size. Finished points are kept in --out/results.json and skipped on a rerun.

    python bench/resolution_finetune.py [--models yolov8n-bccd yolo11n-bccd] [--imgsz 448] [--epochs 5]
        [--schedules preserve recover]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import Points, data_path, evaluator, model_path

import edgecompress.yolo.model as yolo
from edgecompress.yolo.config import FinetuneConfig
from edgecompress.yolo.train import finetune


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--models", nargs="+", default=["yolov8n-bccd", "yolo11n-bccd"])
    p.add_argument("--imgsz", type=int, default=448)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--schedules", nargs="+", default=["preserve", "recover"])
    p.add_argument("--out", type=Path, default=Path("bench/results/resolution_finetune"))
    args = p.parse_args()
    points = Points(args.out)
    for name in args.models:
        evaluate = evaluator(data_path(name), args.imgsz)
        for schedule in args.schedules:
            key = f"{name} {args.imgsz} px {schedule} {args.epochs} epochs"
            if key in points:
                continue
            work = args.out / f"work-{name}-{args.imgsz}-{schedule}"
            before = evaluate(yolo.load_model(model_path(name)), work / "eval-before")["map50_95"]
            tuned, info = finetune(yolo.load_model(model_path(name)),
                                   FinetuneConfig(epochs=args.epochs, schedule=schedule), evaluate, work)
            after = evaluate(tuned, work / "eval-after")["map50_95"]
            points.add(key, {"before": before, "after": after, "points": round(100 * (after - before), 2),
                             "seconds": info["seconds"],
                             "val_curve": [round(e["metrics/mAP50-95(B)"], 4) for e in info["epochs_log"]]})


if __name__ == "__main__":
    main()
