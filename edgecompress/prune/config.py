"""The recipe's `prune` section: how much to prune and how to choose what goes. Light: no torch at import."""

from __future__ import annotations

from dataclasses import dataclass, field

from edgecompress.config import require
from edgecompress.prune.allocation import ALLOCATIONS
from edgecompress.prune.importance import CRITERIA
from edgecompress.yolo.config import FinetuneConfig


@dataclass(frozen=True)
class PruneConfig:
    """How much to prune and how to choose what goes.

    Give exactly one amount: `flops` (fraction of FLOPs to remove, reached within `flops_tolerance`), `latency`
    (fraction of the network's latency in the target's runtime to remove, reached within `latency_tolerance` of
    the target in a timing against the unpruned model), `ratio` (fraction of channels every prunable group loses;
    global allocation spreads it), or, with allocation 'threshold', `threshold` (remove every channel whose
    normalised importance is below it).
    """

    flops: float = 0.0
    ratio: float = 0.0
    latency: float = 0.0  # fraction of the network's latency in the target's runtime to remove: each group's cost
    #                       measured in the whole model (prune.latency), ratios by accuracy per millisecond, then
    #                       timed and corrected; the frame's processing around it costs the same whatever is pruned
    threshold: float = 0.0
    # Taylor scores with per-group ratios from measured sensitivity: the best of the candidates at equal budget
    # (BENCHMARKS.md, "Pruning", candidates at yolov8n-bccd -35% FLOPs)
    criterion: str = "taylor"  # a name in importance.CRITERIA
    allocation: str = "sensitivity"  # a name in allocation.ALLOCATIONS
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
    latency_tolerance: float = 0.05  # relative error of the measured latency against the target's
    latency_turns: int = 40  # turns of each latency timing (each group's cost, each try of the amount)
    sensitivity: bool = False  # measure per-group sensitivity on val and plot it (implied by that allocation)
    sensitivity_ratio: float = 0.5  # channels each group loses, alone, when its sensitivity is measured
    sensitivity_images: int = 16  # first val images used to measure it (each group costs one evaluation)

    def __post_init__(self) -> None:
        CRITERIA[self.criterion]  # an unknown name fails here, with the closest one suggested
        ALLOCATIONS[self.allocation]
        require(0.0 <= self.flops < 1.0, f"prune.flops is the fraction of FLOPs to remove, in [0, 1); got {self.flops}")
        require(0.0 <= self.ratio < 1.0,
                f"prune.ratio is the fraction of channels to remove, in [0, 1); got {self.ratio}")
        require(0.0 <= self.latency < 1.0,
                f"prune.latency is the fraction of latency to remove, in [0, 1); got {self.latency}")
        amounts = {k: v for k, v in (("flops", self.flops), ("ratio", self.ratio), ("latency", self.latency)) if v}
        require(len(amounts) <= 1, f"prune: {amounts} all set; give one amount, e.g. flops: 0.35")
        require(not self.latency or self.allocation == "sensitivity",
                f"prune.latency weights each group by the latency it saves per mAP point it costs, which needs "
                f"allocation: sensitivity (got {self.allocation!r}); write allocation: sensitivity, or prune by "
                f"flops with allocation {self.allocation!r}")
        require(not self.latency or self.steps == 1,
                f"prune.latency is measured and corrected on the whole model in one step (got steps: {self.steps}); "
                f"write steps: 1, or prune by flops for an iterative schedule")
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
        require(0.0 < self.latency_tolerance <= 0.5,
                f"prune.latency_tolerance must be in (0, 0.5], got {self.latency_tolerance}; try 0.05")
        require(self.latency_turns >= 4, f"prune.latency_turns must be >= 4, got {self.latency_turns}; try 40")

    @property
    def enabled(self) -> bool:
        return any((self.flops, self.ratio, self.latency, self.threshold, self.depth))
