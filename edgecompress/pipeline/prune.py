"""Structured pruning of Ultralytics detectors with torch-pruning: real channel (and block) removal, never masks.

The flow of `prune()`:
  1. copy the model, switch gradients on (Ultralytics loads them off, and torch-pruning traces autograd);
  2. optionally drop whole bottleneck blocks (depth pruning);
  3. split C2f/C3k2 into two convs (yolo_blocks) and build torch-pruning's DependencyGraph;
  4. score every channel group with the chosen criterion, choose how many channels each group loses
     (uniform / global / threshold; rounded to the target's channel multiple; the two halves of a split
     block kept equal), searching the one knob that meets the FLOPs target;
  5. for iterative schedules, fine-tune between steps and stop early when the mAP budget is spent;
  6. fold the split blocks back, so the model holds only stock Ultralytics classes.

Blocks that cannot be pruned safely are left alone and named in the info dict: the Detect head's final convs
(their outputs are box/class channels), the DFL, and attention (heads of fixed width reshape the channels).
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import json
import math
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

import torch
import torch_pruning as tp
from torch import nn
from ultralytics.nn.modules import C2f, C3k2, Detect
from ultralytics.nn.modules.block import Attention
from ultralytics.nn.tasks import DetectionModel
from ultralytics.utils.torch_utils import get_flops

from edgecompress.pipeline.config import require
from edgecompress.pipeline.finetune import FinetuneConfig, evaluate_model, finetune, train_batches
from edgecompress.pipeline.yolo_blocks import C2fSplit, SplitBlock, fold_blocks, split_blocks

Criterion = Literal["l1", "l2", "group_norm", "bn_scale", "taylor", "activation", "random"]
Allocation = Literal["uniform", "global", "threshold", "sensitivity"]
CRITERIA_NEEDING_DATA = ("taylor", "activation")


@dataclass(frozen=True)
class PruneConfig:
    """How much to prune and how to choose what goes.

    Give exactly one amount: `flops` (fraction of FLOPs to remove, reached within `flops_tolerance`), `ratio`
    (fraction of channels every prunable group loses; global allocation spreads it), or, with
    allocation 'threshold', `threshold` (remove every channel whose normalised importance is below it).
    """

    flops: float = 0.0
    ratio: float = 0.0
    latency: float = 0.0  # fraction of OpenVINO CPU latency to remove (per-layer table, allocation 'global')
    threshold: float = 0.0
    # Taylor scores with per-group ratios from measured sensitivity: the best of the candidates at equal budget
    # (BENCHMARKS.md, "Pruning": yolov8n-bccd -35% FLOPs kept 0.41 mAP50-95 before fine-tuning, uniform L2 0.09)
    criterion: Criterion = "taylor"
    allocation: Allocation = "sensitivity"
    steps: int = 1  # iterative pruning: the amount is reached in this many equal steps
    step_finetune: FinetuneConfig = field(default_factory=lambda: FinetuneConfig(epochs=1))  # after each step but
    # the last (the finetune stage follows it)
    max_map_drop: float | None = None  # mAP50-95 points: stop stepping (keep the best step) once a step loses more
    round_to: int = 1  # keep channel counts a multiple of this (8 for TensorRT's tensor cores)
    max_group_ratio: float = 0.9  # no group loses more than this fraction (global/threshold allocation)
    depth: int = 0  # bottleneck blocks removed from C2f/C3k2 repeats before width pruning
    ignore: tuple[str, ...] = ()  # module-name patterns (fnmatch, e.g. 'model.22.*') never pruned
    sparse_epochs: int = 0  # criterion group_norm: epochs of group-sparsity-regularised training first
    sparse_reg: float = 5e-4  # criterion group_norm: regularisation strength (torch-pruning's `reg`)
    batches: int = 4  # criteria taylor/activation: training batches used to score channels
    flops_tolerance: float = 0.01  # relative error of the reached FLOPs against the target
    sensitivity: bool = False  # measure per-group sensitivity on val and plot it (implied by that allocation)
    sensitivity_ratio: float = 0.5  # channels each group loses, alone, when its sensitivity is measured
    sensitivity_images: int = 16  # first val images used to measure it (each group costs one evaluation)

    def __post_init__(self) -> None:
        require(0.0 <= self.flops < 1.0, f"prune.flops is the fraction of FLOPs to remove, in [0, 1); got {self.flops}")
        require(0.0 <= self.ratio < 1.0,
                f"prune.ratio is the fraction of channels to remove, in [0, 1); got {self.ratio}")
        require(0.0 <= self.latency < 1.0,
                f"prune.latency is the fraction of latency to remove, in [0, 1); got {self.latency}")
        amounts = {k: v for k, v in (("flops", self.flops), ("ratio", self.ratio), ("latency", self.latency)) if v}
        require(len(amounts) <= 1, f"prune: {amounts} all set; give one amount, e.g. flops: 0.35")
        require(not self.latency or self.allocation == "global",
                f"prune.latency ranks channels by importance per millisecond across the whole model; "
                f"set allocation: global (got {self.allocation!r})")
        if self.allocation == "threshold":
            require(self.threshold > 0 and not (self.flops or self.ratio),
                    f"prune.allocation 'threshold' prunes by prune.threshold (> 0) alone; got threshold "
                    f"{self.threshold}, flops {self.flops}, ratio {self.ratio}: set only threshold, e.g. 0.05")
        else:
            require(self.threshold == 0.0,
                    f"prune.threshold ({self.threshold}) needs allocation: threshold; or remove it")
        require(self.steps >= 1, f"prune.steps must be >= 1, got {self.steps}")
        require(self.max_map_drop is None or self.max_map_drop >= 0,
                f"prune.max_map_drop is in mAP50-95 points and must be >= 0, got {self.max_map_drop}")
        require(self.round_to >= 1, f"prune.round_to must be >= 1 (8 for TensorRT), got {self.round_to}")
        require(0.0 < self.max_group_ratio < 1.0,
                f"prune.max_group_ratio must be in (0, 1), got {self.max_group_ratio}; try 0.9")
        require(self.depth >= 0, f"prune.depth is a number of bottleneck blocks and must be >= 0, got {self.depth}")
        require(self.sparse_epochs == 0 or self.criterion == "group_norm",
                f"prune.sparse_epochs ({self.sparse_epochs}) is the training phase of criterion 'group_norm'; "
                f"set criterion: group_norm or remove sparse_epochs")
        require(self.sparse_reg > 0, f"prune.sparse_reg must be > 0, got {self.sparse_reg}; try 5e-4")
        require(self.batches >= 1, f"prune.batches must be >= 1, got {self.batches}")
        require(0.0 < self.sensitivity_ratio < 1.0,
                f"prune.sensitivity_ratio must be in (0, 1), got {self.sensitivity_ratio}; try 0.5")
        require(self.sensitivity_images >= 1, f"prune.sensitivity_images must be >= 1, got {self.sensitivity_images}")
        require(0.0 < self.flops_tolerance <= 0.05,
                f"prune.flops_tolerance must be in (0, 0.05], got {self.flops_tolerance}")

    @property
    def enabled(self) -> bool:
        return any((self.flops, self.ratio, self.latency, self.threshold, self.depth))


# ----------------------------------------------------------------------------------------------- the stage

def prune(model: DetectionModel, config: PruneConfig, data: str, imgsz: int, device: str,
          workdir: Path) -> tuple[DetectionModel, dict]:
    """Returns the pruned (and, for iterative schedules, step-wise fine-tuned) model and a JSON-able info dict."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    unpruned, model = model, _trainable_copy(model)
    base = _size(model, imgsz)
    info: dict[str, Any] = {"before": base, "config": {"criterion": config.criterion,
                                                        "allocation": config.allocation}}
    if config.depth:
        info["depth_removed"] = remove_blocks(model, config.depth)
    if config.criterion == "group_norm" and config.sparse_epochs:
        model, info["sparse_training"] = _sparse_train(model, config, data, imgsz, device, workdir / "sparse")

    weights = None
    if config.sensitivity or config.allocation == "sensitivity":
        drops = sensitivity(model, config, data, imgsz, device, workdir / "sensitivity")
        info["sensitivity"] = {"map_drop_points": drops, "plot": str(workdir / "sensitivity.png")}
        plot_sensitivity(drops, config.sensitivity_ratio, workdir / "sensitivity.png")
        weights = sensitivity_weights(drops)
    track = config.max_map_drop is not None and config.steps > 1
    base_map = evaluate_model(model, data, imgsz, device, workdir / "eval_base")["map50_95"] if track else None
    steps, best = [], None
    for step in range(1, config.steps + 1):
        fraction = step / config.steps
        model, step_info = prune_step(model, config, data, imgsz, base["gflops"], fraction, weights,
                                      steps[0]["table_ms"]["unpruned"] if steps and config.latency else None)
        if step < config.steps and config.step_finetune.epochs:
            model, ft = finetune(model, config.step_finetune, data, imgsz, device, workdir / f"step{step}", unpruned)
            step_info["finetune"] = ft
        if track:
            metrics = evaluate_model(model, data, imgsz, device, workdir / f"eval{step}")
            step_info.update(map50=metrics["map50"], map50_95=metrics["map50_95"])
            step_info["map_drop_points"] = round(100 * (base_map - step_info["map50_95"]), 3)
        steps.append(step_info)
        if track and step_info["map_drop_points"] > config.max_map_drop:
            info["stopped_early"] = f"step {step} lost {step_info['map_drop_points']} points > {config.max_map_drop}"
            break
        best = copy.deepcopy(model) if track else model  # the next step prunes `model` in place
    model = best if best is not None else model  # a first step over budget is still returned, and flagged
    fold_blocks(model)
    info["steps"] = steps
    info["after"] = _size(model, imgsz)
    info["flops_removed"] = round(1 - info["after"]["gflops"] / base["gflops"], 4)
    (workdir / "prune_info.json").write_text(json.dumps(info, indent=1))
    return model.eval(), info


def prune_step(model: DetectionModel, config: PruneConfig, data: str, imgsz: int, base_gflops: float,
               fraction: float, weights: dict[str, float] | None = None,
               base_ms: float | None = None) -> tuple[DetectionModel, dict]:
    """One pruning step reaching `fraction` of the configured amount (measured against the unpruned model)."""
    _enable_grads(model)  # a model back from fine-tuning is loaded from its checkpoint with grads off
    split_blocks(model)
    plan = Planner(model, config, data, imgsz, weights)
    if config.latency:
        base_ms = base_ms or plan.table_ms
        knob = _search(plan.predicted_ms, base_ms * (1 - config.latency * fraction),
                       config.flops_tolerance * base_ms)
    elif config.flops:
        target = base_gflops * (1 - config.flops * fraction)
        knob = _search(lambda k: _size(plan.apply(k, dry_run=True), imgsz)["gflops"], target,
                       config.flops_tolerance * target)
    elif config.allocation == "threshold":
        knob = config.threshold
    else:  # `ratio` counts channels of the unpruned model; earlier steps already removed ratio * done of them
        done = fraction - 1 / config.steps
        knob = 1 - (1 - config.ratio * fraction) / (1 - config.ratio * done)
    pruned = plan.apply(knob)
    info = {"knob": round(knob, 5), **_size(pruned, imgsz), "groups": plan.report(pruned), "skipped": plan.skipped,
            "scored_by_l2": plan.rescored}
    if config.latency:
        info["table_ms"] = {"before": round(plan.table_ms, 3), "predicted_after": round(plan.predicted_ms(knob), 3),
                            "unpruned": round(base_ms, 3)}
    return pruned, info


def _search(gflops_at: Callable[[float], float], target: float, tolerance: float) -> float:
    """The allocation knob (more knob, fewer FLOPs) whose FLOPs are within tolerance of target.

    Regula falsi (Illinois) on the monotone FLOPs curve: each evaluation prunes a copy of the model, so the
    few evaluations it needs (about 4, against about 8 for bisection) are what make the search fast.
    """
    lo, hi = (0.0, gflops_at(0.0)), (0.99, gflops_at(0.99))
    side = 0
    for _ in range(12):
        (k0, g0), (k1, g1) = lo, hi
        k = k0 + (g0 - target) * (k1 - k0) / (g0 - g1) if g0 != g1 else (k0 + k1) / 2
        g = gflops_at(k)
        if abs(g - target) <= tolerance:
            return k
        if g > target:  # not pruned enough yet
            lo, hi = (k, g), (hi if side != -1 else (hi[0], (hi[1] + target) / 2))
            side = -1
        else:
            hi, lo = (k, g), (lo if side != 1 else (lo[0], (lo[1] + target) / 2))
            side = 1
    return hi[0]  # rounding to a channel multiple can make the target unreachable: err on fewer FLOPs


# ------------------------------------------------------------------------------------------- the planner

class Planner:
    """The channel groups of one model, their importances, and which channels a knob value removes."""

    def __init__(self, model: DetectionModel, config: PruneConfig, data: str, imgsz: int,
                 weights: dict[str, float] | None = None):
        self.model, self.config, self.imgsz = model, config, imgsz
        self.weights = weights or {}  # allocation 'sensitivity': per-group ratio multipliers
        self.names = {m: n for n, m in model.named_modules()}
        self.dg = build_graph(model)
        protected = protected_layers(model, config.ignore)
        self.skipped: list[dict[str, str]] = []
        importance, magnitude = make_importance(config.criterion), make_importance("l2")
        self.rescored: list[str] = []  # groups the criterion gave no finite score, ranked by L2 instead
        if config.criterion in CRITERIA_NEEDING_DATA:
            _score_with_data(model, importance, config, data, imgsz)
        self.groups: list[tuple[nn.Module, torch.Tensor, str]] = []  # (root conv, importance, tie key)
        self.frozen_ties: set[str] = set()  # split blocks with one half unprunable: the other half stays too
        self.costs: dict[nn.Module, float] = {}  # latency-aware: ms saved per channel removed from the group
        if config.latency:
            from edgecompress.pipeline.latency_table import layer_table

            table, self.table_ms = layer_table(model, imgsz)
        for group in self.dg.get_all_groups(root_module_types=[nn.Conv2d]):
            reason = _unsafe(group, protected)
            root = group[0].dep.target.module
            if reason:
                self.skipped.append({"group": self.names[root], "reason": reason})
                self.frozen_ties.add(_tie_key(group, self.names))
                continue
            imp = importance(group)
            if imp is not None and not torch.isfinite(imp).all():
                # Taylor on a branch no scoring batch sent a gradient through (no object at that scale):
                # its mean-normalised scores are 0/0; rank its channels by magnitude instead
                imp = magnitude(group)
                self.rescored.append(self.names[root])
            if imp is None or len(imp) != root.out_channels:  # e.g. activation: a group no conv reads
                self.skipped.append({"group": self.names[root], "reason": f"{config.criterion} gives it no score"})
                self.frozen_ties.add(_tie_key(group, self.names))
                continue
            self.groups.append((root, imp.detach().float().cpu(), _tie_key(group, self.names)))
            if config.latency:
                self.costs[root] = sum(table[item.dep.target.module].out_ms if item.dep.handler ==
                                       tp.prune_conv_out_channels else table[item.dep.target.module].in_ms
                                       for item in group if item.dep.target.module in table)
        for m in model.modules():  # Taylor gradients must not leak into fine-tuning
            if isinstance(m, nn.Conv2d) and m.weight.grad is not None:
                m.weight.grad = None

    def counts(self, knob: float) -> dict[nn.Module, int]:
        """How many channels each group root loses at this knob value."""
        c = self.config
        if c.allocation == "uniform":
            raw = {root: round(knob * len(imp)) for root, imp, _ in self.groups}
        elif c.allocation == "sensitivity":  # ratio inversely proportional to the measured mAP loss
            raw = {root: round(knob * self.weights.get(self.names[root], 1.0) * len(imp)) for root, imp, _ in self.groups}
        else:
            if c.allocation == "threshold":
                cut = knob
            else:  # global: one cut over every channel of every group, by importance (per ms saved)
                everything = torch.cat([self._score(root, imp) for root, imp, _ in self.groups])
                cut = torch.quantile(everything, min(knob, 1.0)).item() if knob > 0 else -math.inf
            raw = {root: int((self._score(root, imp) < cut).sum()) for root, imp, _ in self.groups}
        counts = {}
        for root, imp, _ in self.groups:
            n = min(raw[root], int(c.max_group_ratio * len(imp)))
            counts[root] = len(imp) - _round_keep(len(imp) - n, c.round_to, len(imp))
        ties: dict[str, list[nn.Module]] = {}
        for root, _, key in self.groups:
            if key:
                ties.setdefault(key, []).append(root)
        for key, roots in ties.items():  # the two halves of a split block stay equal, so it folds back to stock
            n = 0 if key in self.frozen_ties else min(counts[r] for r in roots)
            for r in roots:
                counts[r] = n
        return counts

    def _score(self, root: nn.Module, imp: torch.Tensor) -> torch.Tensor:
        """A channel's importance, divided by the latency its removal saves when pruning for latency."""
        if not self.config.latency:
            return imp
        return imp / max(self.costs.get(root, 0.0), 1e-4)  # a channel that saves nothing is kept

    def predicted_ms(self, knob: float) -> float:
        """The latency table's model latency after pruning at this knob value."""
        counts = self.counts(knob)
        return self.table_ms - sum(counts.get(root, 0) * self.costs.get(root, 0.0) for root, _, _ in self.groups)

    def apply(self, knob: float, dry_run: bool = False) -> DetectionModel:
        """Prune (a copy, for dry runs) at this knob value; returns the pruned model."""
        return self.prune_counts(self.counts(knob), dry_run)

    def prune_counts(self, counts: dict[nn.Module, int], dry_run: bool) -> DetectionModel:
        """Remove the `counts[root]` least important channels of each group (of a copy, for dry runs)."""
        if dry_run:
            model = copy.deepcopy(self.model)
            dg = build_graph(model)
            mapping = dict(zip(self.model.modules(), model.modules()))
        else:
            model, dg, mapping = self.model, self.dg, None
        for root, imp, _ in self.groups:
            n = counts.get(root, 0)
            if n <= 0:
                continue
            idxs = torch.argsort(imp)[:n].tolist()
            target = mapping[root] if mapping else root
            group = dg.get_pruning_group(target, tp.prune_conv_out_channels, idxs)
            if dg.check_pruning_group(group):
                group.prune()
        return model

    def report(self, pruned: DetectionModel) -> dict[str, list[int]]:
        """Per group root: [channels before, channels after]."""
        return {self.names[root]: [len(imp), root.out_channels] for root, imp, _ in self.groups}


def build_graph(model: DetectionModel) -> tp.DependencyGraph:
    """Trace the model in training mode, where the head returns raw feature maps (no box decoding, no top-k)."""
    # Channel dependencies do not depend on the input size: the smallest input that keeps every level 2x2.
    example = torch.zeros(1, 3, 64, 64, device=next(model.parameters()).device)
    with _traceable(model):
        return tp.DependencyGraph().build_dependency(
            model, example_inputs=example, output_transform=_flat_tensors, verbose=False)


@contextlib.contextmanager
def _traceable(model: nn.Module) -> Iterator[None]:
    """Training mode without moving BN statistics, and attention reduced to its channel coupling.

    Torch-pruning maps channel indices through every reshape; through attention's head reshapes its index
    lists grow by the spatial size and exhaust memory. Attention layers are never pruned (protected_layers),
    so for tracing it is enough that input and output channels stay coupled through `pe` and `proj`.
    """
    was_training = model.training
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in bns]
    attention = [m for m in model.modules() if isinstance(m, Attention)]
    for bn in bns:
        bn.momentum = 0.0
    for m in attention:
        m.forward = types.MethodType(lambda self, x: self.proj(self.pe(x)), m)
    model.train()
    try:
        yield
    finally:
        model.train(was_training)
        for bn, momentum in zip(bns, momenta):
            bn.momentum = momentum
        for m in attention:
            del m.forward


def _flat_tensors(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    items = out.values() if isinstance(out, dict) else out if isinstance(out, (list, tuple)) else []
    return [t for item in items for t in _flat_tensors(item)]


def protected_layers(model: DetectionModel, ignore: tuple[str, ...]) -> dict[nn.Module, str]:
    """Layers whose channels must not change, with the reason; `ignore` patterns that match nothing are errors."""
    protected: dict[nn.Module, str] = {}
    for m in model.modules():
        if isinstance(m, Detect):
            for head in ("cv2", "cv3", "one2one_cv2", "one2one_cv3"):
                for branch in getattr(m, head, None) or []:
                    protected[_last_conv(branch)] = "Detect output conv: its channels are box/class outputs"
        if isinstance(m, Attention):
            for conv in m.modules():
                if isinstance(conv, nn.Conv2d):
                    protected[conv] = "attention: channels are reshaped into fixed-width heads"
    names = dict(model.named_modules())
    for pattern in ignore:
        matched = [m for n, m in names.items() if fnmatch.fnmatch(n, pattern) and isinstance(m, nn.Conv2d)]
        require(bool(matched), f"prune.ignore pattern {pattern!r} matches no conv layer; module names look like "
                               f"'model.22.cv3.0.2' (patterns use fnmatch, e.g. 'model.22.*')")
        for m in matched:
            protected[m] = f"ignored by prune.ignore {pattern!r}"
    return protected


def _last_conv(module: nn.Module) -> nn.Conv2d:
    return [m for m in module.modules() if isinstance(m, nn.Conv2d)][-1]


def _unsafe(group: tp.Group, protected: dict[nn.Module, str]) -> str:
    """Why this group must be left alone, or ''.

    Attention layers are protected in any direction; other protected layers only against losing outputs
    (pruning the inputs of a Detect output conv is fine)."""
    for item in group:
        module, fn = item.dep.target.module, item.dep.handler
        reason = protected.get(module)
        if reason and (reason.startswith("attention") or fn == tp.prune_conv_out_channels):
            return reason
    return ""


def _tie_key(group: tp.Group, names: dict[nn.Module, str]) -> str:
    """Groups holding the outputs of a split block's cv0 or cv1 share a key: they must lose equal counts."""
    for item in group:
        module, fn = item.dep.target.module, item.dep.handler
        if fn == tp.prune_conv_out_channels:  # bound methods: equal, never identical
            name = names.get(module, "")
            for half in (".cv0.conv", ".cv1.conv"):
                if name.endswith(half) and isinstance(_parent(names, name, half), SplitBlock):
                    return name[: -len(half)]
    return ""


def _parent(names: dict[nn.Module, str], name: str, suffix: str) -> nn.Module | None:
    target = name[: -len(suffix)]
    return next((m for m, n in names.items() if n == target), None)


def _round_keep(keep: int, multiple: int, total: int) -> int:
    """Channels kept, rounded to the nearest multiple (at least one multiple, at most all)."""
    if multiple == 1:
        return max(1, keep)
    return min(total, max(multiple, int(round(keep / multiple)) * multiple))


# ------------------------------------------------------------------------------------------- importances

def make_importance(criterion: Criterion) -> tp.importance.Importance:
    """torch-pruning's importance for a criterion name (group-summed, mean-normalised so groups compare)."""
    if criterion == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1)
    if criterion in ("l2", "group_norm"):  # group_norm: L2 after the group-sparsity training
        return tp.importance.GroupMagnitudeImportance(p=2)
    if criterion == "bn_scale":
        return tp.importance.BNScaleImportance()
    if criterion == "taylor":
        return tp.importance.GroupTaylorImportance()
    if criterion == "activation":
        return tp.importance.ActivationImportance()
    return tp.importance.RandomImportance()


def _score_with_data(model: DetectionModel, importance: tp.importance.Importance, config: PruneConfig,
                     data: str, imgsz: int) -> None:
    """Feed `config.batches` training batches: gradients for Taylor, mean input activations for activation."""
    loss_model = _with_loss_args(model)
    model.train()
    if isinstance(importance, tp.importance.ActivationImportance):
        with importance.compute_importance(model), torch.no_grad():
            sums: dict[nn.Module, torch.Tensor] = {}
            for batch in train_batches(data, imgsz, config.batches):
                model(batch["img"])
                for m in model.modules():
                    if hasattr(m, "_importance"):
                        sums[m] = sums.get(m, 0) + m._importance
            for m, s in sums.items():
                m._importance = s / config.batches
    else:
        model.zero_grad()
        for batch in train_batches(data, imgsz, config.batches):
            loss, _ = loss_model.loss(batch)
            loss.sum().backward()
    model.eval()


def _with_loss_args(model: DetectionModel) -> DetectionModel:
    from ultralytics.cfg import get_cfg

    args = getattr(model, "args", {})  # a model built from a yaml, never trained, has none
    if not hasattr(args, "box"):  # the loss reads its gains as attributes
        model.args = get_cfg(overrides={k: v for k, v in dict(args).items() if k != "cfg"})
    model.criterion = None
    return model


# the regulariser pulls whole groups towards zero only where the weights move; these are the settings the
# group-regularised iterative experiment was measured with (BENCHMARKS.md, "Pruning")
SPARSE_TRAINING = {"schedule": "recover", "optimizer": "AdamW", "lr0": 1e-4, "lrf": 0.1, "warmup_epochs": 0.0,
                   "freeze_bn": False, "batch": 16, "nbs": 64}


def _sparse_train(model: DetectionModel, config: PruneConfig, data: str, imgsz: int, device: str,
                  workdir: Path) -> tuple[DetectionModel, dict]:
    """Torch-pruning's GroupNormPruner regularisation during training: unimportant groups shrink toward zero."""
    split_blocks(model)

    def regulariser(trained: nn.Module) -> Callable[[nn.Module], None]:
        with _traceable(trained):
            example = torch.zeros(1, 3, 64, 64, device=next(trained.parameters()).device)
            pruner = tp.pruner.GroupNormPruner(
                trained, example, importance=tp.importance.GroupMagnitudeImportance(p=2), reg=config.sparse_reg,
                ignored_layers=list(protected_layers(trained, config.ignore)), output_transform=_flat_tensors,
                pruning_ratio=0.0)
        return pruner.regularize

    model, info = finetune(model, FinetuneConfig(epochs=config.sparse_epochs, **SPARSE_TRAINING), data, imgsz,
                           device, workdir, regulariser=regulariser)
    return model, info


# ----------------------------------------------------------------------------------------- sensitivity

def sensitivity(model: DetectionModel, config: PruneConfig, data: str, imgsz: int, device: str,
                workdir: Path) -> dict[str, float]:
    """mAP50-95 points lost on the first val images when each group alone loses `sensitivity_ratio` of its
    channels (no fine-tuning): which layers the detector can spare."""
    work = _enable_grads(copy.deepcopy(model))
    split_blocks(work)
    plan = Planner(work, config, data, imgsz)
    subset = _val_subset(data, config.sensitivity_images, workdir)
    base = evaluate_model(work, str(subset), imgsz, device, workdir / "eval")["map50_95"]
    drops = {}
    for root, imp, key in plan.groups:
        roots = [r for r, _, k in plan.groups if key and k == key] or [root]
        if roots[0] is not root:
            continue  # a split block's two halves are pruned, and measured, together
        n = {r: int(config.sensitivity_ratio * r.out_channels) for r in roots}
        probe = plan.prune_counts(n, dry_run=True)
        drops[plan.names[root]] = round(100 * (base - evaluate_model(probe, str(subset), imgsz, device,
                                                                     workdir / "eval")["map50_95"]), 3)
        for r in roots[1:]:
            drops[plan.names[r]] = drops[plan.names[root]]
    return drops


def sensitivity_weights(drops: dict[str, float]) -> dict[str, float]:
    """Per-group ratio multipliers with mean 1: a group that costs twice the mAP loses about half as much."""
    inverse = {name: 1.0 / (max(d, 0.0) + 1.0) for name, d in drops.items()}  # +1 point: noise floor
    mean = sum(inverse.values()) / len(inverse)
    return {name: w / mean for name, w in inverse.items()}


def plot_sensitivity(drops: dict[str, float], ratio: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display, no font download
    import matplotlib.pyplot as plt

    names = sorted(drops, key=lambda n: [int(t) if t.isdigit() else t for t in n.split(".")])  # network order
    fig, ax = plt.subplots(figsize=(max(6, 0.18 * len(names)), 4))
    ax.bar(range(len(names)), [drops[n] for n in names])
    ax.set_xticks(range(len(names)), [n.removeprefix("model.") for n in names], rotation=90, fontsize=6)
    ax.set_ylabel(f"mAP50-95 points lost at {int(ratio * 100)}% channels")
    ax.set_title("Pruning sensitivity per channel group (val, no fine-tuning)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _val_subset(data: str, images: int, workdir: Path) -> Path:
    """A dataset YAML like `data` whose val split is its first `images` val images (labels found beside them)."""
    import yaml
    from ultralytics.data.utils import IMG_FORMATS, check_det_dataset

    workdir = workdir.resolve()  # Ultralytics reads a relative path in a dataset YAML against the YAML's folder
    info = check_det_dataset(str(data), autodownload=False)
    folders = info["val"] if isinstance(info["val"], list) else [info["val"]]
    files = sorted(p for f in folders for p in Path(f).rglob("*") if p.suffix[1:].lower() in IMG_FORMATS)
    workdir.mkdir(parents=True, exist_ok=True)
    listing = workdir / "val.txt"
    listing.write_text("\n".join(str(p) for p in files[:images]) + "\n")
    subset = workdir / "data.yaml"
    subset.write_text(yaml.safe_dump({"train": str(listing), "val": str(listing), "names": info["names"]}))
    return subset


# ---------------------------------------------------------------------------------------- depth pruning

def remove_blocks(model: DetectionModel, count: int) -> list[dict]:
    """Drop `count` bottleneck blocks from C2f/C3k2 repeats, least important first; returns what went.

    A block's importance is the mean |BN scale| of its last layer: a residual block that writes little is
    close to the identity. Only the last block of a chain is dropped (its output feeds only `cv2`), so
    every remaining tensor keeps its width; a block with one repeat left is kept.
    """
    removed = []
    for _ in range(count):
        candidates = []
        for name, m in model.named_modules():
            if type(m) in (C2f, C3k2, C2fSplit) and len(m.m) > 1:
                last = [b for b in m.m[-1].modules() if isinstance(b, nn.BatchNorm2d)][-1]
                candidates.append((last.weight.abs().mean().item(), name, m))
        if not candidates:
            break
        score, name, block = min(candidates, key=lambda t: t[0])
        conv = block.cv2.conv
        keep = conv.in_channels - _last_conv(block.m[-1]).out_channels  # its output is cv2's last input slice
        conv.weight = nn.Parameter(conv.weight.data[:, :keep].clone())
        conv.in_channels = keep
        block.m = type(block.m)(list(block.m)[:-1])
        removed.append({"block": f"{name}.m.{len(block.m)}", "bn_scale": round(score, 5)})
    return removed


# ------------------------------------------------------------------------------------------------ helpers

def _trainable_copy(model: DetectionModel) -> DetectionModel:
    return _enable_grads(copy.deepcopy(model).float().cpu())


def _enable_grads(model: DetectionModel) -> DetectionModel:
    for p in model.parameters():
        p.requires_grad_(True)  # Ultralytics loads with grads off; torch-pruning traces through autograd
    for m in model.modules():
        if m.__class__.__name__ == "DFL":
            m.conv.requires_grad_(False)  # fixed decode weights
    return model.eval()


def _size(model: nn.Module, imgsz: int) -> dict[str, float]:
    return {"gflops": round(get_flops(model, imgsz), 4), "parameters": sum(p.numel() for p in model.parameters())}

