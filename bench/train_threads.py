"""Fine-tuning on the CPU with Ultralytics' thread count (cpu_count - 1) against every core (the product's patch):
seconds per epoch, the two settings taking turns in one process.

    python bench/train_threads.py [--model yolov8n-raccoon] [--imgsz 320] [--rounds 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import ultralytics.utils.torch_utils as torch_utils
from common import data_path, evaluator, model_path

from edgecompress.yolo import patches
from edgecompress.yolo.config import FinetuneConfig
from edgecompress.yolo.model import load_model
from edgecompress.yolo.train import finetune


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="yolov8n-raccoon")
    p.add_argument("--imgsz", type=int, default=320)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    evaluate = evaluator(data_path(args.model), args.imgsz)
    config = FinetuneConfig(epochs=1, schedule="recover", workers=0)
    settings = {"ultralytics (cpu_count - 1)": max(1, patches.cpu_threads() - 1),
                "edgecompress (every core)": patches.cpu_threads()}
    seconds: dict[str, list[float]] = {name: [] for name in settings}
    for _ in range(args.rounds):
        for name, threads in settings.items():
            torch_utils.NUM_THREADS = threads
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                finetune(load_model(model_path(args.model)), config, evaluate, Path(tmp))
                seconds[name].append(time.perf_counter() - t0)
    base = min(seconds["ultralytics (cpu_count - 1)"])
    for name, times in seconds.items():
        print(f"{name:<30} threads {settings[name]}  one epoch + val: {min(times):6.1f} s "
              f"(all {', '.join(f'{t:.1f}' for t in times)})  speed-up {base / min(times):.2f}x")


if __name__ == "__main__":
    main()
