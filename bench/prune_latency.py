"""Latency-targeted pruning against FLOPs-targeted pruning cut to the same measured latency (issue 18).

For each model and seed: route `latency` prunes with `prune: {latency: L}` (each group's cost measured in the whole
model in OpenVINO, ratios by latency saved per mAP point lost, timed and corrected); route `flops` prunes with the
FLOPs-targeted sensitivity allocation, its FLOPs amount searched until the pruned model's measured latency matches
what route `latency` measured (timed taking turns with the unpruned model, as the product times). Both are then
fine-tuned alike and evaluated (PyTorch, val split, the pipeline's protocol), and every finished model is exported
and timed side by side with the unpruned one in OpenVINO FP32 (CPU). Finished steps are kept in --out and skipped
on a rerun (resumable).

    nohup nice -n 10 .venv/bin/python bench/prune_latency.py > bench/results/prune_latency.log 2>&1 &   # the
    #   issue's setting: 640, seeds 0 and 1, 5 epochs, latency 0.4
    nice -n 10 .venv/bin/python bench/prune_latency.py --imgsz 320 --seeds 0 --epochs 1   # a reduced run
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

from common import data_path, evaluator, model_path, time_interleaved

import edgecompress.yolo.model as yolo
from edgecompress.prune import latency
from edgecompress.prune.config import PruneConfig
from edgecompress.prune.graph import enable_grads
from edgecompress.prune.pruner import next_amount, prune, prune_step
from edgecompress.prune.sensitivity import sensitivity, sensitivity_weights
from edgecompress.yolo.blocks import fold_blocks
from edgecompress.yolo.config import FinetuneConfig
from edgecompress.yolo.train import finetune

ROUND_TO = 16  # the x86 target's channel multiple
TRIES = 4  # FLOPs amounts tried to match route latency's measured latency


def cached(path: Path, make: Any) -> dict:
    """The JSON at `path`, made by `make()` first when missing (what makes the bench resumable)."""
    if path.is_file():
        return json.loads(path.read_text())
    result = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    return result


def latency_route(name: str, amount: float, imgsz: int, folder: Path) -> dict:
    evaluate = evaluator(data_path(name), imgsz)
    t = time.time()
    pruned, info = prune(yolo.load_model(model_path(name)), PruneConfig(latency=amount, round_to=ROUND_TO), evaluate,
                         folder / "work", "openvino")
    yolo.save_checkpoint(pruned, folder / "pruned.pt", half=False)
    lat = info["latency"]
    best = min(lat["tries"], key=lambda x: abs(x["error"]))
    return {"removed": best["removed"], "tries": lat["tries"], "reached": lat["reached"],
            "flops_removed": info["flops_removed"], "gflops": info["after"]["gflops"],
            "seconds": round(time.time() - t)}


def flops_route(name: str, target_removed: float, start: float, imgsz: int, turns: int, folder: Path) -> dict:
    """FLOPs-targeted sensitivity pruning, its amount rescaled until its measured latency matches `target_removed`."""
    evaluate = evaluator(data_path(name), imgsz)
    t = time.time()
    model = enable_grads(yolo.load_model(model_path(name)))
    base_gflops = yolo.describe(model, imgsz)["gflops"]
    probe_config = PruneConfig(flops=start, round_to=ROUND_TO)
    weights = sensitivity_weights(sensitivity(model, probe_config, evaluate, folder / "work"))  # once: FLOPs-free
    meter = latency.meter("openvino", model, imgsz, folder / "work" / "latency", turns)
    amount, tries, best = start, [], None
    for _ in range(TRIES):
        work = copy.deepcopy(model)
        pruned, _ = prune_step(work, PruneConfig(flops=amount, round_to=ROUND_TO), evaluate, base_gflops, 1.0, weights)
        fold_blocks(pruned)
        timing = meter.compare(pruned)
        removed = timing.saved / timing.base
        tries.append({"flops": round(amount, 4), "removed": round(removed, 4)})
        if best is None or abs(removed - target_removed) < abs(best[1] - target_removed):
            best = (pruned, removed, amount)
        if abs((1 - removed) / (1 - target_removed) - 1) <= 0.02:
            break
        amount = min(0.9, next_amount([(t["flops"], t["removed"]) for t in tries], target_removed))
    yolo.save_checkpoint(best[0].eval(), folder / "pruned.pt", half=False)
    return {"removed": best[1], "flops": best[2], "tries": tries, "gflops": yolo.describe(best[0], imgsz)["gflops"],
            "seconds": round(time.time() - t)}


def tuned(name: str, seed: int, epochs: int, imgsz: int, folder: Path) -> dict:
    evaluate = evaluator(data_path(name), imgsz)
    pruned = yolo.load_model(folder / "pruned.pt")
    before = evaluate(pruned, folder / "eval_pruned")
    model, _ = finetune(pruned, FinetuneConfig(epochs=epochs, seed=seed), evaluate, folder / f"ft{seed}",
                        reference=yolo.load_model(model_path(name)))
    yolo.save_checkpoint(model, folder / f"tuned{seed}.pt", half=False)
    after = evaluate(model, folder / "eval_tuned")
    return {"map50_95_pruned": before["map50_95"], "map50_95": after["map50_95"], "map50": after["map50"]}


def unpruned(name: str, imgsz: int, folder: Path) -> dict:
    metrics = evaluator(data_path(name), imgsz)(yolo.load_model(model_path(name)), folder / "eval_unpruned")
    return {"map50_95": metrics["map50_95"], "map50": metrics["map50"]}


def timing(name: str, imgsz: int, turns: int, checkpoints: dict[str, Path]) -> dict:
    """The unpruned model and each route's fine-tuned one, OpenVINO FP32, taking turns."""
    with tempfile.TemporaryDirectory() as tmp:
        models = {"unpruned": model_path(name), **checkpoints}
        artifacts = {k: (latency.export(yolo.load_model(v), imgsz, Path(tmp) / f"{k}.onnx"), "openvino")
                     for k, v in models.items()}
        return time_interleaved(artifacts, turns, imgsz)


def bench_model(name: str, args: argparse.Namespace, seeds: list[int]) -> dict:
    root = args.out / f"{name}-{args.imgsz}-L{args.latency}"
    lat = cached(root / "latency" / "prune.json", partial(latency_route, name, args.latency, args.imgsz,
                                                          root / "latency"))
    flo = cached(root / "flops" / "prune.json", partial(flops_route, name, lat["removed"], lat["flops_removed"],
                                                        args.imgsz, args.turns, root / "flops"))
    rows: dict[str, Any] = {"unpruned": cached(root / "unpruned.json", partial(unpruned, name, args.imgsz, root)),
                            "latency": {"prune": lat}, "flops": {"prune": flo}}
    for route in ("latency", "flops"):
        for seed in seeds:
            rows[route][f"seed{seed}"] = cached(root / route / f"tuned{seed}.json",
                                                partial(tuned, name, seed, args.epochs, args.imgsz, root / route))
    rows["timing_openvino_fp32"] = cached(root / "timing.json", partial(
        timing, name, args.imgsz, args.final_turns,
        {route: root / route / f"tuned{seeds[0]}.pt" for route in ("latency", "flops")}))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="yolov8n-bccd,yolo11n-bccd")
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--latency", type=float, default=0.4, help="prune.latency: the fraction of latency to remove")
    p.add_argument("--turns", type=int, default=60, help="turns of each timing while matching latencies")
    p.add_argument("--final-turns", type=int, default=300, help="turns of the closing side-by-side timing")
    p.add_argument("--out", type=Path, default=Path("bench/results/prune_latency"))
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    summary = {}
    for name in args.models.split(","):
        summary[name] = bench_model(name, args, seeds)
        print(json.dumps({name: summary[name]}, indent=1), flush=True)
    (args.out / f"summary-{args.imgsz}-L{args.latency}.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
