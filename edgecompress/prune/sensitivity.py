"""Pruning sensitivity: how much mAP each channel group costs when it alone is pruned, measured on the eval split
(the allocation 'sensitivity' reads it as per-group ratio weights), and its plot."""

from __future__ import annotations

import copy
from pathlib import Path

from ultralytics.nn.tasks import DetectionModel

from edgecompress import progress
from edgecompress.plots import pyplot, save
from edgecompress.prune.config import PruneConfig
from edgecompress.prune.graph import enable_grads
from edgecompress.prune.planner import Planner
from edgecompress.yolo.blocks import split_blocks
from edgecompress.yolo.model import Evaluator


def sensitivity(model: DetectionModel, config: PruneConfig, evaluate: Evaluator, workdir: Path) -> dict[str, float]:
    """mAP50-95 points lost on the first `sensitivity_images` images of the eval split when each group alone loses
    `sensitivity_ratio` of its channels (no fine-tuning): which layers the detector can spare."""
    work = enable_grads(copy.deepcopy(model))
    split_blocks(work)
    plan = Planner(work, config, evaluate.dataset, evaluate.imgsz)
    images = config.sensitivity_images
    base = evaluate(work, workdir, images)["map50_95"]
    drops: dict[str, float] = {}
    measured = plan.units()
    with progress.task("sensitivity", total=len(measured), unit="group") as groups:
        for roots in measured:
            n = {r: int(config.sensitivity_ratio * r.out_channels) for r in roots}
            probe = plan.prune_counts(n, dry_run=True)
            drop = round(100 * (base - evaluate(probe, workdir, images)["map50_95"]), 3)
            drops.update({plan.names[r]: drop for r in roots})
            groups.advance(**{"group": plan.names[roots[0]], "points lost": drop})
    return drops


def sensitivity_weights(drops: dict[str, float], saved: dict[str, float] | None = None) -> dict[str, float]:
    """Per-group ratio multipliers with mean 1: a group that costs twice the mAP loses about half as much. With
    `saved` (each group's latency cost, prune.latency): weighted by latency saved per mAP point lost, and a group
    whose cut saves nothing is left alone."""
    value = {name: (max(saved.get(name, 0.0), 0.0) if saved is not None else 1.0) / (max(d, 0.0) + 1.0)
             for name, d in drops.items()}  # +1 point: noise floor
    mean = sum(value.values()) / len(value)
    return {name: w / mean if mean > 0 else 1.0 for name, w in value.items()}


def plot_sensitivity(drops: dict[str, float], ratio: float, path: Path) -> None:
    plt = pyplot()

    names = sorted(drops, key=lambda n: [int(t) if t.isdigit() else t for t in n.split(".")])  # network order
    fig, ax = plt.subplots(figsize=(max(6, 0.18 * len(names)), 4))
    ax.bar(range(len(names)), [drops[n] for n in names])
    ax.set_xticks(range(len(names)), [n.removeprefix("model.") for n in names], rotation=90, fontsize=6)
    ax.set_ylabel(f"mAP50-95 points lost at {int(ratio * 100)}% channels")
    ax.set_title("Pruning sensitivity per channel group (eval split, no fine-tuning)")
    save(fig, path)
