"""The prune stage: structured pruning of an Ultralytics detector with torch-pruning.

The flow of `prune()`:
  1. copy the model, switch gradients on (Ultralytics loads them off, and torch-pruning traces autograd);
  2. optionally drop whole bottleneck blocks (depth pruning) and train with group sparsity (criterion group_norm);
  3. split C2f/C3k2 into two convs (yolo.blocks) and build torch-pruning's DependencyGraph;
  4. score every channel group with the criterion, choose how many channels each group loses (the allocation;
     rounded to the target's channel multiple; a split block's halves kept equal), searching the one knob that
     meets the FLOPs target; for a latency target (latency_step), each group's latency cost is measured in the
     whole model in the target's runtime, the ratios weigh latency saved against mAP lost, and the pruned model
     is timed and the amount corrected until it lands within tolerance;
  5. for iterative schedules, fine-tune between steps and stop early when the mAP budget is spent;
  6. fold the split blocks back, so the model holds only stock Ultralytics classes.

Blocks that cannot be pruned safely are left alone and named in the info dict: the Detect head's final convs
(their outputs are box/class channels), the DFL, and attention (heads of fixed width reshape the channels).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch_pruning as tp
from torch import nn
from ultralytics.nn.tasks import DetectionModel
from ultralytics.utils.torch_utils import get_flops

from edgecompress import progress
from edgecompress.prune import latency
from edgecompress.prune.allocation import ALLOCATIONS
from edgecompress.prune.config import PruneConfig
from edgecompress.prune.depth import remove_blocks
from edgecompress.prune.graph import enable_grads, flat_tensors, protected_layers, traceable
from edgecompress.prune.planner import Planner
from edgecompress.prune.sensitivity import plot_sensitivity, sensitivity, sensitivity_weights
from edgecompress.yolo.blocks import fold_blocks, split_blocks
from edgecompress.yolo.config import FinetuneConfig
from edgecompress.yolo.model import Evaluator
from edgecompress.yolo.train import finetune

# the regulariser pulls whole groups towards zero only where the weights move; the settings the group-regularised
# iterative experiment was measured with (BENCHMARKS.md, "Pruning")
SPARSE_TRAINING = {"schedule": "recover", "optimizer": "AdamW", "lr0": 1e-4, "lrf": 0.1, "warmup_epochs": 0.0,
                   "freeze_bn": False, "batch": 16, "nbs": 64}


LATENCY_TRIES = 4  # timings of the pruned model, each correcting the amount, for a latency target
KNOBS = [i / 200 for i in range(199)]  # the allocation knob values a latency target is searched among


def prune(model: DetectionModel, config: PruneConfig, evaluate: Evaluator, workdir: Path,
          runtime: str = "openvino") -> tuple[DetectionModel, dict]:
    """Returns the pruned (and, for iterative schedules, step-wise fine-tuned) model and a JSON-able info dict.
    Data, image size and device are the evaluator's; every accuracy it decides by is the evaluator's too.
    `runtime`: the target's (device.runtime.RUNTIMES), which a latency target is measured in."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    imgsz = evaluate.imgsz
    unpruned, model = model, enable_grads(copy.deepcopy(model).float().cpu())
    base = _size(model, imgsz)
    info: dict[str, Any] = {"before": base, "config": {"criterion": config.criterion,
                                                        "allocation": config.allocation}}
    if config.depth:
        info["depth_removed"] = remove_blocks(model, config.depth)
    if config.criterion == "group_norm" and config.sparse_epochs:
        model, info["sparse_training"] = _sparse_train(model, config, evaluate, workdir / "sparse")

    weights, drops = None, {}
    if config.sensitivity or ALLOCATIONS[config.allocation].uses_sensitivity:
        drops = sensitivity(model, config, evaluate, workdir / "sensitivity")
        info["sensitivity"] = {"map_drop_points": drops, "plot": "sensitivity.png"}  # in workdir
        plot_sensitivity(drops, config.sensitivity_ratio, workdir / "sensitivity.png")
        weights = sensitivity_weights(drops)
    track = config.max_map_drop is not None and config.steps > 1
    base_map = evaluate(model, workdir / "eval_base")["map50_95"] if track else None
    steps, best = [], None
    for step in range(1, config.steps + 1):
        fraction = step / config.steps
        model, step_info = (latency_step(model, config, evaluate, drops, runtime, workdir) if config.latency else
                            prune_step(model, config, evaluate, base["gflops"], fraction, weights))
        if step < config.steps and config.step_finetune.epochs:
            model, ft = finetune(model, config.step_finetune, evaluate, workdir / f"step{step}", unpruned)
            step_info["finetune"] = ft
        if track:
            metrics = evaluate(model, workdir / f"eval{step}")
            step_info.update(map50=metrics["map50"], map50_95=metrics["map50_95"])
            step_info["map_drop_points"] = round(100 * (base_map - step_info["map50_95"]), 3)
        steps.append(step_info)
        if track and step_info["map_drop_points"] > config.max_map_drop:
            info["stopped_early"] = f"step {step} lost {step_info['map_drop_points']} points > {config.max_map_drop}"
            break
        best = copy.deepcopy(model) if track else model  # the next step prunes `model` in place
    model = best if best is not None else model  # a first step over budget is still returned, and flagged
    fold_blocks(model)
    if config.latency:  # one step: its measurements are the stage's
        info["latency"] = steps[0].pop("latency")
    info["steps"] = steps
    info["after"] = _size(model, imgsz)
    info["flops_removed"] = round(1 - info["after"]["gflops"] / base["gflops"], 4)
    (workdir / "prune_info.json").write_text(json.dumps(info, indent=1))
    return model.eval(), info


def prune_step(model: DetectionModel, config: PruneConfig, evaluate: Evaluator, base_gflops: float,
               fraction: float, weights: dict[str, float] | None = None) -> tuple[DetectionModel, dict]:
    """One pruning step reaching `fraction` of the configured amount (measured against the unpruned model)."""
    imgsz = evaluate.imgsz
    enable_grads(model)  # a model back from fine-tuning is loaded from its checkpoint with grads off
    split_blocks(model)
    plan = Planner(model, config, evaluate.dataset, imgsz, weights)
    if config.flops:
        target = base_gflops * (1 - config.flops * fraction)
        knob = _search(lambda k: _size(plan.apply(k, dry_run=True), imgsz)["gflops"], target,
                       config.flops_tolerance * target)
    elif config.threshold:
        knob = config.threshold
    else:  # `ratio` counts channels of the unpruned model; earlier steps already removed ratio * done of them
        done = fraction - 1 / config.steps
        knob = 1 - (1 - config.ratio * fraction) / (1 - config.ratio * done)
    return _applied(plan, knob, imgsz)


def latency_step(model: DetectionModel, config: PruneConfig, evaluate: Evaluator, drops: dict[str, float],
                 runtime: str, workdir: Path) -> tuple[DetectionModel, dict]:
    """Prune to remove `config.latency` of the model's latency in `runtime`: each group's cost measured in the
    whole model (latency.costs), ratios weighted by latency saved per mAP point lost (sensitivity_weights), the
    amount searched on the costs' linear prediction, then the pruned model timed against the unpruned one and the
    predicted amount corrected by what was measured (next_amount), up to LATENCY_TRIES times; the try closest to
    the target is kept."""
    imgsz = evaluate.imgsz
    enable_grads(model)
    split_blocks(model)
    plan = Planner(model, config, evaluate.dataset, imgsz)
    meter = latency.meter(runtime, model, imgsz, workdir / "latency", config.latency_turns)
    base, costs = latency.costs(plan, meter, config.round_to)
    latency.plot_costs(costs, meter.unit, meter.proxy, workdir / "latency.png")
    plan.weights = sensitivity_weights(drops, {name: c.cost for name, c in costs.items()})
    per_channel = {g.root: costs[plan.names[g.root]] for g in plan.groups}

    def predicted(knob: float) -> float:
        counts = plan.counts(knob)
        return base - sum(c.cost * counts[root] / c.channels for root, c in per_channel.items() if c.channels)

    amount, tries, points, best = config.latency, [], [], None
    with progress.task("latency correction", total=LATENCY_TRIES, unit="try") as bar:
        for _ in range(LATENCY_TRIES):
            # the prediction is a step function of the knob (channel multiples) and costs no pruning to evaluate:
            # the closest point of a fine grid, where a root-finder would stop on the far side of a step
            knob = min(KNOBS, key=lambda k: abs(predicted(k) - base * (1 - amount)))
            timing = meter.compare(plan.apply(knob, dry_run=True))
            removed = timing.saved / timing.base
            error = (1 - removed) / (1 - config.latency) - 1  # the measured latency against the target's
            tries.append({"amount": round(amount, 4), "knob": round(knob, 5), "predicted": round(predicted(knob), 4),
                          "unpruned": round(timing.base, 4), "measured": round(timing.value, 4),
                          "removed": round(removed, 4), "error": round(error, 4)})
            bar.advance(removed=round(removed, 3), error=round(error, 3))
            if best is None or abs(error) < abs(best[1]):
                best = (knob, error, removed)
            if abs(error) <= config.latency_tolerance:
                break
            # what the costs predicted at this knob (the search stops short of `amount` where the prediction never
            # reaches it), against what was measured
            points.append((1 - predicted(knob) / base, removed))
            amount = next_amount(points, config.latency)
    pruned, info = _applied(plan, best[0], imgsz)
    info["latency"] = {
        "unit": meter.unit, **meter.identity(), "unpruned": round(base, 4), "target_removed": config.latency,
        "tolerance": config.latency_tolerance, "reached": abs(best[1]) <= config.latency_tolerance,
        "removed": round(best[2], 4),  # measured, of the try kept (the closest to the target)
        "tries": tries, "plot": "latency.png", "costs": {name: asdict(c) for name, c in costs.items()},
        **({"note": f"{runtime} does not run here: each group's cost is the FLOPs it saves at the target's channel "
                    f"multiple ({config.round_to}), a proxy for its latency"} if meter.proxy else {})}
    return pruned, info


def next_amount(tries: list[tuple[float, float]], target: float) -> float:
    """The amount to ask for next, from the tries so far as (amount asked or predicted, fraction measured): between
    the two closest tries on either side of the target, interpolated; else the last one's scaled by target over
    measured. A correction from the last try alone swings back and forth where latency moves in steps."""
    below, above = [t for t in tries if t[1] < target], [t for t in tries if t[1] >= target]
    if below and above:
        (a0, m0), (a1, m1) = max(below, key=lambda t: t[1]), min(above, key=lambda t: t[1])
        if m1 > m0:
            return a0 + (target - m0) * (a1 - a0) / (m1 - m0)
    amount, measured = tries[-1]
    return min(0.95, max(amount, 0.01) * target / max(measured, 0.01))


def _applied(plan: Planner, knob: float, imgsz: int) -> tuple[DetectionModel, dict]:
    pruned = plan.apply(knob)
    return pruned, {"knob": round(knob, 5), **_size(pruned, imgsz), "groups": plan.report(),
                    "skipped": plan.skipped, "scored_by_l2": plan.rescored}


def _search(gflops_at: Callable[[float], float], target: float, tolerance: float) -> float:
    """The allocation knob (more knob, fewer FLOPs) whose FLOPs are within tolerance of target.

    Regula falsi (Illinois) on the monotone FLOPs curve: each evaluation prunes a copy of the model, so the
    few evaluations it needs (about 4, against about 8 for bisection) are what make the search fast.
    """
    lo, hi = (0.0, gflops_at(0.0)), (0.99, gflops_at(0.99))
    side = 0
    with progress.task("amount search", unit="try", each=True) as tries:
        for _ in range(12):
            (k0, g0), (k1, g1) = lo, hi
            k = k0 + (g0 - target) * (k1 - k0) / (g0 - g1) if g0 != g1 else (k0 + k1) / 2
            g = gflops_at(k)
            tries.advance(knob=round(k, 4), reached=round(g, 3), target=round(target, 3))
            if abs(g - target) <= tolerance:
                return k
            if g > target:  # not pruned enough yet
                lo, hi = (k, g), (hi if side != -1 else (hi[0], (hi[1] + target) / 2))
                side = -1
            else:
                hi, lo = (k, g), (lo if side != 1 else (lo[0], (lo[1] + target) / 2))
                side = 1
    return hi[0]  # rounding to a channel multiple can make the target unreachable: err on fewer FLOPs


def _sparse_train(model: DetectionModel, config: PruneConfig, evaluate: Evaluator,
                  workdir: Path) -> tuple[DetectionModel, dict]:
    """Torch-pruning's GroupNormPruner regularisation during training: unimportant groups shrink toward zero."""
    split_blocks(model)

    def regulariser(trained: nn.Module) -> Callable[[nn.Module], None]:
        with traceable(trained):
            example = torch.zeros(1, 3, 64, 64, device=next(trained.parameters()).device)
            pruner = tp.pruner.GroupNormPruner(
                trained, example, importance=tp.importance.GroupMagnitudeImportance(p=2), reg=config.sparse_reg,
                ignored_layers=list(protected_layers(trained, config.ignore)), output_transform=flat_tensors,
                pruning_ratio=0.0)
        return pruner.regularize

    return finetune(model, FinetuneConfig(epochs=config.sparse_epochs, **SPARSE_TRAINING), evaluate, workdir,
                    regulariser=regulariser)


def _size(model: nn.Module, imgsz: int) -> dict[str, float]:
    return {"gflops": round(get_flops(model, imgsz), 4), "parameters": sum(p.numel() for p in model.parameters())}
