"""Allocations: how many channels each group loses at one value of the knob the pruner searches (the knob that
reaches the FLOPs or latency target). A new allocation is one class here and its row; the planner then caps each
count, rounds it to the target's channel multiple and keeps a split block's halves equal.

Light at import: torch loads when an allocation runs.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from edgecompress.config import Registry

if TYPE_CHECKING:
    from torch import nn

    from edgecompress.prune.planner import Planner


class Allocation:
    """Channels each group root would lose at `knob` (0: none; larger: more), before capping and rounding.
    `uses_sensitivity`: the planner measures each group's accuracy sensitivity first (planner.weights)."""

    uses_sensitivity = False

    def counts(self, plan: Planner, knob: float) -> dict[nn.Module, int]:
        raise NotImplementedError


ALLOCATIONS: Registry[Allocation] = Registry("pruning allocation")


@ALLOCATIONS.register("uniform")
class Uniform(Allocation):
    """Every group loses the same fraction of its channels: the knob."""

    def counts(self, plan: Planner, knob: float) -> dict[nn.Module, int]:
        return {g.root: round(knob * len(g.importance)) for g in plan.groups}


@ALLOCATIONS.register("sensitivity")
class Sensitivity(Allocation):
    """A group's fraction is the knob times its weight: inversely proportional to the mAP it lost when pruned
    alone (sensitivity.weights), so the layers the detector can spare give the most."""

    uses_sensitivity = True

    def counts(self, plan: Planner, knob: float) -> dict[nn.Module, int]:
        return {g.root: round(knob * plan.weights.get(plan.names[g.root], 1.0) * len(g.importance))
                for g in plan.groups}


@ALLOCATIONS.register("global")
class Global(Allocation):
    """One importance cut across every channel of every group: the knob is the fraction of channels below it."""

    def counts(self, plan: Planner, knob: float) -> dict[nn.Module, int]:
        import torch

        everything = torch.cat([g.importance for g in plan.groups])
        cut = torch.quantile(everything, min(knob, 1.0)).item() if knob > 0 else -math.inf
        return {g.root: int((g.importance < cut).sum()) for g in plan.groups}


@ALLOCATIONS.register("threshold")
class Threshold(Allocation):
    """Every channel whose normalised importance is below the knob (prune.threshold) goes."""

    def counts(self, plan: Planner, knob: float) -> dict[nn.Module, int]:
        return {g.root: int((g.importance < knob).sum()) for g in plan.groups}
