"""Pruning sweep: Torch-Pruning's example recipe vs edgecompress, equal fine-tuning budget (BENCHMARKS.md, Pruning).

Each point prunes a checkpoint to a FLOPs reduction, fine-tunes it, and records mAP (PyTorch, val split, batch 1,
as the pipeline's evaluate stage), GFLOPs and parameters; a last phase exports every finished model and the
unpruned baselines to OpenVINO FP32 and times them side by side (on this machine: `--device` only moves the
training). Finished points are kept in --out and skipped on a rerun, so the sweep can be stopped and resumed; a
point's pruned model is kept too (--out/pruned), for runs that differ only in their fine-tuning settings.

    nohup nice -n 10 .venv/bin/python bench/prune_sweep.py > bench/results/prune_sweep.log 2>&1 &
    .venv/bin/python bench/prune_sweep.py --points yolov8n-bccd:0.35 --recipes best   # best ec-* at 35%
    .venv/bin/python bench/prune_sweep.py --finetune-check --ft optimizer=SGD,lr0=1e-4   # 1 epoch, unpruned
    .venv/bin/python bench/prune_sweep.py --iterative group_norm   # 70% of the channels in 6 steps
    bash bench/gpu_prune_runs.sh   # all of it on the lent GPU machine (see that script)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("YOLO_OFFLINE", "1")

from common import SHARED, evaluator, time_interleaved  # noqa: E402

import edgecompress.yolo.model as yolo  # noqa: E402
from edgecompress.plots import pyplot, save  # noqa: E402
from edgecompress.prune.config import PruneConfig  # noqa: E402
from edgecompress.prune.pruner import prune  # noqa: E402
from edgecompress.targets import TARGETS  # noqa: E402
from edgecompress.yolo.config import FinetuneConfig  # noqa: E402
from edgecompress.yolo.train import finetune  # noqa: E402

try:
    import polars  # noqa: F401
except ImportError:  # the lent GPU machine has no polars (nor a registry to get it); Ultralytics needs it only to
    # copy results.csv into its checkpoints, so read that csv with the standard library there
    import csv

    from ultralytics.engine.trainer import BaseTrainer

    def _read_results_csv(self: BaseTrainer) -> dict[str, list[str]]:
        with open(self.csv) as f:
            rows = list(csv.DictReader(f))
        return {k.strip(): [row[k] for row in rows] for k in (rows[0] if rows else {})}

    BaseTrainer.read_results_csv = _read_results_csv

MODELS = SHARED / "models"
DATA = SHARED / "datasets" / "bccd" / "data.yaml"
# Torch-Pruning's YOLOv8 example ported to Ultralytics 8.4: uniform L2 magnitude, Detect outputs kept, then
# Ultralytics' default training hyperparameters (optimizer auto, 3 warm-up epochs, lr0 0.01, lrf 0.01, mosaic
# closed for the last 10 epochs).
# Ultralytics' own batch and nominal batch (16, 64), which the recover schedule no longer uses; the rest as recover
PEER_FINETUNE = dict(schedule="recover", optimizer="auto", lr0=0.01, batch=16, nbs=64)
# AdamW at Ultralytics' 'auto' rate without its warm-up (which starts the biases at lr 0.1), mosaic closed for the
# last epoch; and the fine-tune stage's former defaults (AdamW 1e-4, no warm-up)
ADAMW_FINETUNE = dict(schedule="recover", optimizer="AdamW", lr0=1e-3, lrf=0.1, warmup_epochs=0.0, mosaic=1.0,
                      close_mosaic=1, freeze_bn=False, batch=16, nbs=64)
GENTLE_FINETUNE = dict(schedule="recover", optimizer="AdamW", lr0=1e-4, lrf=0.1, warmup_epochs=0.0, mosaic=1.0,
                       close_mosaic=1, freeze_bn=False, batch=16, nbs=64)
FINETUNES = {"peer": PEER_FINETUNE, "adamw": ADAMW_FINETUNE, "gentle": GENTLE_FINETUNE, "defaults": {}}
# edgecompress's candidates: the same fine-tuning, with what edgecompress adds to the pruning (other criteria
# and allocations, depth) or distillation from the unpruned model (finetune.OutputDistillation at weight 1; the
# BENCHMARKS.md ec-distill rows predate it: Ultralytics' own DistillationModel at its weight 6.0). `--recipes best`
# runs the candidate that scored highest at yolov8n-bccd -35% FLOPs. Channel counts are not rounded to 8 (as
# --target x86/jetson do) but in the -round8 recipe: on yolov8n's 16-channel
# layers that rounding moves the reachable FLOPs in steps of several percent, and the points must sit at the
# peer's FLOPs.
RECIPES = {
    "tp-example": (dict(criterion="l2", allocation="uniform"), PEER_FINETUNE),
    "ec-distill": (dict(criterion="l2", allocation="uniform"), dict(PEER_FINETUNE, distill=1.0)),
    "ec-sensitivity": (dict(criterion="l2", allocation="sensitivity"), PEER_FINETUNE),
    "ec-taylor": (dict(criterion="taylor", allocation="uniform"), PEER_FINETUNE),
    "ec-taylor-sensitivity": (dict(criterion="taylor", allocation="sensitivity"), PEER_FINETUNE),
    "ec-taylor-adamw": (dict(criterion="taylor", allocation="uniform"), ADAMW_FINETUNE),
    "ec-taylor-gentle": (dict(criterion="taylor", allocation="uniform"), GENTLE_FINETUNE),
    # as `--target x86` / `jetson` prune: channel counts rounded to 8
    "ec-taylor-sensitivity-round8": (dict(criterion="taylor", allocation="sensitivity", round_to=8), PEER_FINETUNE),
    # a multiple of 16: one AVX-512 register of FP32 values, OpenVINO's channel block on this CPU
    "ec-taylor-sensitivity-round16": (dict(criterion="taylor", allocation="sensitivity", round_to=16),
                                      PEER_FINETUNE),
    "ec-taylor-sensitivity-gentle": (dict(criterion="taylor", allocation="sensitivity"), GENTLE_FINETUNE),
    # -35% in two steps, 2 epochs of `recover` after the first: run with --epochs 3 for the 5-epoch budget
    "ec-taylor-sensitivity-2steps": (
        dict(criterion="taylor", allocation="sensitivity", steps=2,
             step_finetune=FinetuneConfig(epochs=2, schedule="recover")), PEER_FINETUNE),
    # sensitivity measured on 64 val images and Taylor scores over 16 batches (the defaults: 16 and 4)
    "ec-taylor-sensitivity-64img": (dict(criterion="taylor", allocation="sensitivity", sensitivity_images=64,
                                         batches=16), PEER_FINETUNE),
    # the Detect head left whole, as the peer leaves it (yolo11n's head is model.23)
    "ec-taylor-sensitivity-keephead": (dict(criterion="taylor", allocation="sensitivity", ignore=("model.23.*",)),
                                       PEER_FINETUNE),
    "ec-global": (dict(criterion="l2", allocation="global"), PEER_FINETUNE),
    "ec-depth": (dict(criterion="l2", allocation="uniform", depth=2), PEER_FINETUNE),
    # the point's amount is the share of OpenVINO CPU latency to remove (each group's cost measured in the whole
    # model, prune.latency), not of FLOPs
    "ec-latency": (dict(amount="latency", criterion="taylor", allocation="sensitivity"), PEER_FINETUNE),
}
DEFAULT_POINTS = "yolov8n-bccd:0.35,yolov8n-bccd:0.50,yolov8n-bccd:0.20,yolo11n-bccd:0.35"


def best_recipe(out: Path) -> str:
    """The edgecompress candidate with the highest mAP50-95 at yolov8n-bccd -35% FLOPs (run those first)."""
    scores = {r: json.loads(f.read_text())["map50_95"] for r in RECIPES if r.startswith("ec-")
              for f in [out / f"yolov8n-bccd-35-{r}" / "result.json"] if f.exists()}
    if not scores:
        raise SystemExit("--recipes best: no ec-* candidate has finished at yolov8n-bccd:0.35 yet")
    return max(scores, key=scores.get)


def _tag(settings: dict) -> str:
    """The folder-name suffix of fine-tuning settings: '-key1value1-key2value2', or '' for none."""
    return "".join(f"-{k}{v}" for k, v in settings.items())


def run_point(name: str, flops: float, recipe: str, epochs: int, imgsz: int, out: Path, device: str,
              workers: int, ft_extra: dict) -> dict:
    """One sweep point; `ft_extra` overrides the recipe's fine-tuning settings (and names the folder)."""
    folder = out / f"{name}-{int(round(flops * 100))}-{recipe}{_tag(ft_extra)}"
    result_file = folder / "result.json"
    if result_file.exists():
        return json.loads(result_file.read_text())
    base = yolo.load_model(MODELS / f"{name}.pt")
    t0 = time.time()
    pruned, info = pruned_point(base, name, flops, recipe, imgsz, out, device)
    ft_kw = RECIPES[recipe][1]
    before_ft = evaluator(DATA, imgsz, device)(pruned, folder / "eval_pruned")
    ft_config = FinetuneConfig(**{"epochs": epochs, "workers": workers, **ft_kw, **ft_extra})
    tuned, ft = finetune(pruned, ft_config, evaluator(DATA, imgsz, device), folder / "finetune", reference=base)
    after = evaluator(DATA, imgsz, device)(tuned, folder / "eval")
    yolo.save_checkpoint(tuned.cpu(), folder / "model.pt")
    result = {"model": name, "flops_target": flops, "recipe": recipe, "ft_extra": ft_extra, "epochs": epochs,
              "imgsz": imgsz,
              "gflops": info["after"]["gflops"], "parameters": info["after"]["parameters"],
              "flops_removed": info["flops_removed"], "map50_95_pruned": before_ft["map50_95"],
              "map50": after["map50"], "map50_95": after["map50_95"], "finetune": ft,
              "seconds": round(time.time() - t0), "checkpoint": str(folder / "model.pt")}
    result_file.write_text(json.dumps(result, indent=1))
    return result


def pruned_point(base: Any, name: str, flops: float, recipe: str, imgsz: int, out: Path,
                 device: str) -> tuple[Any, dict]:
    """The point's model (`base` pruned) before fine-tuning and its prune info: pruned once, then shared by every
    run of the point that differs only in its fine-tuning settings."""
    folder = out / "pruned" / f"{name}-{int(round(flops * 100))}-{recipe}-{imgsz}"
    if (folder / "model.pt").exists():
        return yolo.load_model(folder / "model.pt"), json.loads((folder / "prune" / "prune_info.json").read_text())
    prune_kw = RECIPES[recipe][0]
    config = PruneConfig(**{prune_kw.get("amount", "flops"): flops},
                         **{k: v for k, v in prune_kw.items() if k != "amount"})
    pruned, info = prune(base, config, evaluator(DATA, imgsz, device), folder / "prune")
    yolo.save_checkpoint(pruned, folder / "model.pt", half=False)
    return pruned, info


def baseline(name: str, imgsz: int, out: Path, device: str) -> dict:
    result_file = out / f"{name}-baseline.json"
    if result_file.exists():
        return json.loads(result_file.read_text())
    model = yolo.load_model(MODELS / f"{name}.pt")
    metrics = evaluator(DATA, imgsz, device)(model, out / f"{name}-baseline")
    d = yolo.describe(model, imgsz)
    result = {"model": name, "recipe": "unpruned", "gflops": d["gflops"], "parameters": d["parameters"],
              "map50": metrics["map50"], "map50_95": metrics["map50_95"], "checkpoint": str(MODELS / f"{name}.pt")}
    result_file.write_text(json.dumps(result, indent=1))
    return result


def finetune_check(name: str, imgsz: int, out: Path, settings: dict, device: str) -> dict:
    """Fine-tuning the unpruned model must not cost accuracy (issue 4: one epoch, at most 0.3 mAP50-95 points);
    `settings` may set other epochs."""
    folder = out / f"ftcheck-{name}-{imgsz}{_tag(settings) or '-defaults'}"
    model = yolo.load_model(MODELS / f"{name}.pt")
    before = evaluator(DATA, imgsz, device)(model, folder / "before")
    config = FinetuneConfig(**{"epochs": 1, **settings})
    tuned, ft = finetune(model, config, evaluator(DATA, imgsz, device), folder, reference=model)
    after = evaluator(DATA, imgsz, device)(tuned, folder / "after")
    result = {"model": name, "epochs": config.epochs, "imgsz": imgsz, "settings": settings,
              "before": before["map50_95"], "after": after["map50_95"],
              "lost_points": round(100 * (before["map50_95"] - after["map50_95"]), 2), "finetune": ft}
    (folder / "result.json").write_text(json.dumps(result, indent=1))
    return result


def iterative(criterion: str, schedule: str, imgsz: int, out: Path, device: str, workers: int, ft_extra: dict,
              upto: int, ratio: float = 0.7, steps: int = 6, epochs: int = 2) -> dict:
    """The seed worklog's experiment: `ratio` of the channels removed in `steps` equal steps (spread over the
    groups by the default allocation), `epochs` of fine-tuning (FINETUNES[schedule]) after each; mAP and
    parameters after every step's fine-tune. Only the first `upto` steps run."""
    folder = out / (f"iterative-{criterion}-{schedule}{_tag(ft_extra)}" + (f"-first{upto}" if upto < steps else ""))
    step_ft = FinetuneConfig(**{"epochs": epochs, "workers": workers, **FINETUNES[schedule], **ft_extra})
    config = PruneConfig(ratio=ratio * upto / steps, steps=upto, criterion=criterion, step_finetune=step_ft,
                         max_map_drop=100.0, sparse_epochs=epochs if criterion == "group_norm" else 0)
    model = yolo.load_model(MODELS / "yolov8n-bccd.pt")
    base = {**evaluator(DATA, imgsz, device)(model, folder / "eval_base"), **yolo.describe(model, imgsz)}
    pruned, info = prune(model, config, evaluator(DATA, imgsz, device), folder / "prune")
    # prune() leaves the last step to the fine-tune stage; give it the same short fine-tune as the others
    tuned, _ = finetune(pruned, step_ft, evaluator(DATA, imgsz, device), folder / "last", reference=model)
    info["steps"][-1].update({k: v for k, v in evaluator(DATA, imgsz, device)(tuned, folder / "eval_last")
                              .items() if k in ("map50", "map50_95")})
    rows = [{"step": 0, "channels_removed": 0.0, "parameters": base["parameters"], "gflops": base["gflops"],
             "map50": base["map50"], "map50_95": base["map50_95"]}]
    rows += [{"step": i, "channels_removed": round(ratio * i / steps, 3), "parameters": s["parameters"],
              "gflops": s["gflops"], "map50": s["map50"], "map50_95": s["map50_95"]}
             for i, s in enumerate(info["steps"], 1)]
    result = {"experiment": "iterative", "criterion": criterion, "schedule": schedule, "ft_extra": ft_extra,
              "epochs_per_step": epochs,
              "sparse_training": info.get("sparse_training", {}).get("config"), "rows": rows}
    (folder / "result.json").write_text(json.dumps(result, indent=1))
    return result


def measure_latency(results: list[dict], imgsz: int, out: Path) -> None:
    """OpenVINO FP32 p50 of every model, taking turns (so load from other work hits all alike)."""
    artifacts = {}
    for i, r in enumerate(results):
        folder = out / "latency" / Path(r["checkpoint"]).parent.name / Path(r["checkpoint"]).stem
        ir = folder / "model_openvino_model"
        if not ir.exists():
            folder.mkdir(parents=True, exist_ok=True)
            onnx_path = yolo.export_onnx(yolo.load_model(r["checkpoint"]), imgsz, folder, "model")
            TARGETS["x86"].convert(onnx_path, folder, "model")
        artifacts[str(i)] = (ir, "openvino")
    timing = time_interleaved(artifacts, runs=200, imgsz=imgsz)
    for i, r in enumerate(results):
        r["openvino_fp32_ms"] = timing[str(i)]["p50_ms"]


def report(results: list[dict], out: Path) -> None:
    plt = pyplot()
    bases = {r["model"]: r for r in results if r["recipe"] == "unpruned"}
    lines = ["| model | recipe | FLOPs target | GFLOPs | params | mAP50-95 pruned (no FT) | mAP50 | mAP50-95 | "
             "points lost | OpenVINO FP32 p50 ms | latency cut / FLOPs cut |", "|" + "---|" * 11]
    for r in sorted(results, key=lambda r: (r["model"], r.get("flops_target", 0), r["recipe"])):
        b = bases[r["model"]]
        lat = r.get("openvino_fp32_ms")
        flops_cut = 1 - r["gflops"] / b["gflops"]
        lat_ratio = f"{(1 - lat / b['openvino_fp32_ms']) / flops_cut:.2f}" if lat and flops_cut > 0 else ""
        lines.append(f"| {r['model']} | {r['recipe']} | {r.get('flops_target', 0):.2f} | {r['gflops']:.2f} | "
                     f"{r['parameters'] / 1e6:.2f}M | {r.get('map50_95_pruned', '')} | {r['map50']:.3f} | "
                     f"{r['map50_95']:.3f} | {100 * (b['map50_95'] - r['map50_95']):.1f} | {lat or ''} | {lat_ratio} |")
    host = f"{platform.node()}: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}"
    (out / "summary.md").write_text("\n".join(lines) + f"\n\nmachine: {host}\n")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, key, label in ((axes[0], "gflops", "GFLOPs (640)"), (axes[1], "openvino_fp32_ms", "OpenVINO FP32 p50 ms")):
        for (model, recipe) in sorted({(r["model"], r["recipe"]) for r in results}):
            pts = sorted((r[key], r["map50_95"]) for r in results
                         if r["model"] == model and r["recipe"] in (recipe, "unpruned") and r.get(key))
            ax.plot(*zip(*pts), marker="o", label=f"{model} {recipe}") if pts else None
        ax.set_xlabel(label)
        ax.set_ylabel("mAP50-95 (val)")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    save(fig, out / "pareto.png")


def _number(text: str) -> float | int | bool | str:
    if text in ("true", "false"):
        return text == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", default=DEFAULT_POINTS, help="name:flops,... (checkpoints in shared/models)")
    parser.add_argument("--recipes", default="tp-example,ec-taylor-sensitivity",
                        help=f"comma-separated, of: best, {', '.join(RECIPES)}")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--out", type=Path, default=Path("bench/results/prune_sweep"))
    parser.add_argument("--finetune-check", action="store_true", help="only: 1 epoch on the unpruned model")
    parser.add_argument("--model", default="yolov8n-bccd", help="the unpruned checkpoint of --finetune-check")
    parser.add_argument("--ft", action="append", default=[],
                        help="FinetuneConfig settings, key=value,...: each one a --finetune-check run (repeat for "
                             "several); otherwise one, over every point's or iterative step's fine-tuning")
    parser.add_argument("--iterative", choices=("l2", "group_norm"), help="only: the 70%%-in-6-steps experiment")
    parser.add_argument("--iterative-finetune", choices=tuple(FINETUNES), default="peer")
    parser.add_argument("--iterative-steps", type=int, default=6, help="run only the first N of the 6 steps")
    parser.add_argument("--device", default="cpu", help="where pruning scores, fine-tuning and mAP run")
    parser.add_argument("--workers", type=int, default=2, help="dataloader workers while fine-tuning")
    parser.add_argument("--jsonl", type=Path, help="also append every finished result to this file, one line each")
    parser.add_argument("--no-latency", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    def emit(result: dict) -> dict:
        line = json.dumps({k: v for k, v in result.items() if k != "finetune"})
        print(line, flush=True)
        if args.jsonl:
            with open(args.jsonl, "a") as f:
                f.write(line + "\n")
        return result

    ft_settings = [{k: _number(v) for k, v in (kv.split("=") for kv in ft.split(",") if kv)} for ft in args.ft]
    if args.finetune_check:
        for settings in ft_settings or [{}]:
            emit(finetune_check(args.model, args.imgsz, args.out, settings, args.device))
        return
    if len(ft_settings) > 1:
        raise SystemExit("--ft: give it once outside --finetune-check (it applies to every fine-tune of the run)")
    ft_extra = ft_settings[0] if ft_settings else {}
    if args.iterative:
        emit(iterative(args.iterative, args.iterative_finetune, args.imgsz, args.out, args.device, args.workers,
                       ft_extra, args.iterative_steps))
        return
    points = [(p.split(":")[0], float(p.split(":")[1])) for p in args.points.split(",")]
    recipes = [best_recipe(args.out) if r == "best" else r for r in args.recipes.split(",")]
    results = [baseline(n, args.imgsz, args.out, args.device) for n in dict.fromkeys(n for n, _ in points)]
    for name, flops in points:
        for recipe in recipes:
            results.append(emit(run_point(name, flops, recipe, args.epochs, args.imgsz, args.out, args.device,
                                          args.workers, ft_extra)))
    if not args.no_latency:
        measure_latency(results, args.imgsz, args.out)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    report(results, args.out)


if __name__ == "__main__":
    main()
