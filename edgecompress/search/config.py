"""The recipe's `search` section: the budget a user holds and the space `compress search` explores. Light: no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from edgecompress.config import ConfigError, require
from edgecompress.targets.base import PRECISIONS

SIZE_STEP = 64  # pixels between the default space's image sizes
MIN_SIZE = 64


@dataclass(frozen=True)
class SearchConfig:
    """With only `max_map_drop`: the fastest artifact whose mAP50-95 is within that many points of the unpruned FP32
    model in the target's runtime at the trained image size (the recipe's imgsz). With `max_latency_ms`: the most
    accurate artifact whose end-to-end p50 is under it.

    Candidates are every image size x pruning amount x precision. Each is first measured without fine-tuning; then
    the ones that can still win (pruned, or below the trained size) are fine-tuned until recovered, at most `rungs[0]`
    epochs, the better `keep` fraction of those still short of the goal again at most `rungs[1]`, and so on
    (successive halving)."""

    max_map_drop: float = 1.0
    max_latency_ms: float | None = None
    imgsz: tuple[int, ...] = ()  # empty: the trained size and three smaller, 64 pixels apart, then smaller ones while
    # the best lies at the smallest size tried
    prune: tuple[float, ...] = (0.0, 0.25, 0.4)  # fractions of FLOPs removed (the pipeline's allocation)
    precision: tuple[str, ...] = ()  # empty: the target's fastest (int8 where it runs INT8)
    rungs: tuple[int, ...] = (5, 30)  # fine-tuning ceilings in epochs, one per rung
    keep: float = 0.5  # the fraction of the fine-tuned candidates still short of the goal that the next rung takes
    ultralytics: bool = True  # also measure Ultralytics' own exports at the trained size, as reference points
    budget_trials: int | None = None  # stop starting trials after this many (the references not counted)
    budget_minutes: float | None = None  # ... or after this much wall time
    executor: Literal["auto", "ray", "sequential"] = "auto"  # auto: Ray where it is installed
    ray_address: str | None = None  # a Ray cluster ('auto' or ray://host:10001); None starts a local Ray
    workers: int = 1  # trials at once (Ray); each gets the machine's cores divided among them

    def __post_init__(self) -> None:
        require(self.max_map_drop >= 0, f"search.max_map_drop must be >= 0 points, got {self.max_map_drop}")
        require(self.max_latency_ms is None or self.max_latency_ms > 0,
                f"search.max_latency_ms must be > 0, got {self.max_latency_ms}")
        for size in self.imgsz:
            require(32 <= size <= 4096 and size % 32 == 0,
                    f"search.imgsz {size} is not a multiple of 32 between 32 and 4096; try {max(32, size // 32 * 32)}")
        require(all(0 <= p < 0.95 for p in self.prune) and len(set(self.prune)) == len(self.prune) and self.prune,
                f"search.prune lists distinct FLOPs fractions in [0, 0.95), e.g. [0, 0.25, 0.4]; "
                f"got {list(self.prune)}")
        unknown = set(self.precision) - set(PRECISIONS)
        require(not unknown, f"search.precision: {sorted(unknown)} unknown; choose from {', '.join(PRECISIONS)}")
        require(all(r >= 1 for r in self.rungs) and list(self.rungs) == sorted(set(self.rungs)),
                f"search.rungs are rising epoch ceilings >= 1, e.g. [5, 30]; got {list(self.rungs)}")
        require(0 < self.keep <= 1, f"search.keep is a fraction in (0, 1], got {self.keep}; try 0.5")
        require(self.budget_trials is None or self.budget_trials >= 1,
                f"search.budget_trials must be >= 1, got {self.budget_trials}")
        require(self.budget_minutes is None or self.budget_minutes > 0,
                f"search.budget_minutes must be > 0, got {self.budget_minutes}")
        require(self.workers >= 1, f"search.workers must be >= 1, got {self.workers}")

    def sizes(self, trained: int) -> tuple[int, ...]:
        """The image sizes to try, largest first."""
        return tuple(sorted(set(self.imgsz), reverse=True)) or tuple(
            s for s in range(trained, trained - 4 * SIZE_STEP, -SIZE_STEP) if s >= MIN_SIZE)


def parse_budget(text: str) -> dict[str, float | int]:
    """`--budget`: '40' trials, '90m' minutes or '2h' hours, as search settings."""
    value = text.strip().lower()
    unit = value[-1:] if value[-1:] in ("m", "h") else ""
    try:
        amount: float = float(value[:-1]) if unit else int(value)
    except ValueError:
        amount = 0
    if amount <= 0:
        raise ConfigError(f"--budget {text!r}: write a number of trials (40), minutes (90m) or hours (2h)")
    return {"budget_minutes": amount * (60 if unit == "h" else 1)} if unit else {"budget_trials": int(amount)}
