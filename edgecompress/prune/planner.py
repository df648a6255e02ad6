"""The channel groups of one model, their importances, and which channels a knob value removes."""

from __future__ import annotations

import copy
from typing import NamedTuple

import torch
import torch_pruning as tp
from torch import nn
from ultralytics.nn.tasks import DetectionModel

from edgecompress.prune.allocation import ALLOCATIONS
from edgecompress.prune.config import PruneConfig
from edgecompress.prune.graph import build_graph, protected_layers, tie_key, unsafe
from edgecompress.prune.importance import CRITERIA
from edgecompress.yolo.data import Dataset


class Group(NamedTuple):
    """A prunable channel group: its root conv, each channel's importance, and the tie key of a split block's half
    ('' for none)."""

    root: nn.Module
    importance: torch.Tensor
    tie: str


class Planner:
    """Scores every prunable group of `model` once; `apply(knob)` then prunes it (or a copy) at any knob value.

    `weights`: per-group ratio multipliers by module name (allocation 'sensitivity')."""

    def __init__(self, model: DetectionModel, config: PruneConfig, dataset: Dataset, imgsz: int,
                 weights: dict[str, float] | None = None):
        self.model, self.config, self.imgsz = model, config, imgsz
        self.weights = weights or {}
        self.allocation = ALLOCATIONS[config.allocation]
        self.names = {m: n for n, m in model.named_modules()}
        self.dg = build_graph(model)
        self.skipped: list[dict[str, str]] = []
        self.rescored: list[str] = []  # groups the criterion gave no finite score, ranked by L2 instead
        self.groups: list[Group] = []
        self.frozen_ties: set[str] = set()  # split blocks with one half unprunable: the other half stays too
        self._score_groups(model, config, dataset, imgsz)

    def _score_groups(self, model: DetectionModel, config: PruneConfig, dataset: Dataset, imgsz: int) -> None:
        criterion = CRITERIA[config.criterion]
        importance, magnitude = criterion.importance(), CRITERIA["l2"].importance()
        if criterion.needs_data:
            criterion.feed(model, importance, dataset, imgsz, config.batches)
        protected = protected_layers(model, config.ignore)
        for group in self.dg.get_all_groups(root_module_types=[nn.Conv2d]):
            reason = unsafe(group, protected)
            root = group[0].dep.target.module
            if reason:
                self.skipped.append({"group": self.names[root], "reason": reason})
                self.frozen_ties.add(tie_key(group, self.names))
                continue
            imp = importance(group)
            if imp is not None and not torch.isfinite(imp).all():
                # Taylor on a branch no scoring batch sent a gradient through (no object at that scale):
                # its mean-normalised scores are 0/0; rank its channels by magnitude instead
                imp = magnitude(group)
                self.rescored.append(self.names[root])
            if imp is None or len(imp) != root.out_channels:  # e.g. activation: a group no conv reads
                self.skipped.append({"group": self.names[root], "reason": f"{config.criterion} gives it no score"})
                self.frozen_ties.add(tie_key(group, self.names))
                continue
            self.groups.append(Group(root, imp.detach().float().cpu(), tie_key(group, self.names)))
        for m in model.modules():  # Taylor gradients must not leak into fine-tuning
            if isinstance(m, nn.Conv2d) and m.weight.grad is not None:
                m.weight.grad = None

    def counts(self, knob: float) -> dict[nn.Module, int]:
        """How many channels each group root loses at this knob value."""
        c = self.config
        raw = self.allocation.counts(self, knob)
        counts = {}
        for root, imp, _ in self.groups:
            n = min(raw[root], int(c.max_group_ratio * len(imp)))
            counts[root] = len(imp) - self.round_keep(len(imp) - n, len(imp))
        ties: dict[str, list[nn.Module]] = {}
        for root, _, key in self.groups:
            if key:
                ties.setdefault(key, []).append(root)
        for key, roots in ties.items():  # the two halves of a split block stay equal, so it folds back to stock
            n = 0 if key in self.frozen_ties else min(counts[r] for r in roots)
            for r in roots:
                counts[r] = n
        return counts

    def units(self) -> list[list[nn.Module]]:
        """The group roots that are cut together when one is measured (sensitivity, latency): each group alone, a
        split block's two halves as one."""
        units = [[g.root for g in self.groups if key and g.tie == key] or [root] for root, _, key in self.groups]
        return [roots for roots, (root, _, _) in zip(units, self.groups) if roots[0] is root]

    def round_keep(self, keep: int, total: int) -> int:
        """Channels kept, rounded to the nearest multiple of prune.round_to (at least one multiple, at most all)."""
        multiple = self.config.round_to
        if multiple == 1:
            return max(1, keep)
        return min(total, max(multiple, round(keep / multiple) * multiple))

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

    def report(self) -> dict[str, list[int]]:
        """Per group root: [channels before, channels after]."""
        return {self.names[g.root]: [len(g.importance), g.root.out_channels] for g in self.groups}

