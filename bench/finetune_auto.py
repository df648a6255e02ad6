"""Fine-tuning until recovered (`finetune.epochs: auto`): each model pruned by a FLOPs fraction with the pipeline's
pruning, then fine-tuned with the default settings, for each seed; the mAP50-95 of the fine-tuned model against the
unpruned one (the pipeline's evaluator, batch 1), the epochs it took and why it stopped. Finished points are kept in
--out/results.json and skipped on a rerun; the pruned model of a (model, amount) is kept too.

    python bench/finetune_auto.py [--models yolo11n-bccd yolov8n-raccoon] [--flops 0.35] [--seeds 0 1]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import Points, data_path, evaluator, model_path

import edgecompress.yolo.model as yolo
from edgecompress.prune.config import PruneConfig
from edgecompress.prune.pruner import prune
from edgecompress.yolo.config import FinetuneConfig
from edgecompress.yolo.train import finetune


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--models", nargs="+", default=["yolo11n-bccd", "yolov8n-raccoon"])
    p.add_argument("--flops", type=float, default=0.35)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--out", type=Path, default=Path("bench/results/finetune_auto"))
    args = p.parse_args()
    points = Points(args.out)
    for name in args.models:
        evaluate = evaluator(data_path(name), args.imgsz)
        unpruned = yolo.load_model(model_path(name))
        pruned_path = args.out / f"{name}-{args.flops}.pt"
        if not pruned_path.is_file():
            pruned, _ = prune(yolo.load_model(model_path(name)), PruneConfig(flops=args.flops), evaluate,
                              args.out / f"work-prune-{name}")
            yolo.save_checkpoint(pruned, pruned_path, half=False)
        for seed in args.seeds:
            key = f"{name} flops {args.flops} seed {seed}"
            if key in points:
                continue
            tuned, info = finetune(yolo.load_model(pruned_path), FinetuneConfig(seed=seed), evaluate,
                                   args.out / f"work-{name}-{seed}", reference=unpruned)
            after = evaluate(tuned, args.out / f"work-eval-{name}-{seed}")["map50_95"]
            before = info["schedule"]["reference_map50_95"]
            points.add(key, {"unpruned": before, "pruned": info["schedule"]["start_map50_95"], "finetuned": after,
                             "points": round(100 * (after - before), 2), "epochs": len(info["epochs_log"]),
                             "stopped": info["stopped"], "seconds": info["seconds"],
                             "val_curve": [round(e["metrics/mAP50-95(B)"], 4) for e in info["epochs_log"]]})


if __name__ == "__main__":
    main()
