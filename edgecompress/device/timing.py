"""Latency timing: one artifact alone (warm-up, then timed runs), or several taking turns in one process."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from edgecompress.config import require


SWITCH, TIMED = 1, 4  # interleaved(): untimed calls after a switch of artifact, then timed ones, per turn


@dataclass(frozen=True)
class BenchConfig:
    """How latency is timed: warm-up runs, then up to `runs` timed runs or `max_seconds`, whichever ends first."""

    warmup: int = 10
    runs: int = 100
    max_seconds: float = 30.0
    threads: int = 0  # 0 = the runtime's default (all physical cores)

    def __post_init__(self) -> None:
        require(self.warmup >= 0, f"bench.warmup must be >= 0, got {self.warmup}")
        require(self.runs >= 1, f"bench.runs must be >= 1, got {self.runs}")
        require(self.max_seconds > 0, f"bench.max_seconds must be > 0, got {self.max_seconds}")
        require(self.threads >= 0, f"bench.threads must be >= 0 (0 = runtime default), got {self.threads}")


def timed(step: Callable[[int], object], config: BenchConfig, tick: Callable[[int], None] | None = None) -> list[float]:
    """Milliseconds of each timed call of `step(i)`, after `config.warmup` untimed calls; `tick(n)` after every tenth
    of the runs (n runs since the last tick)."""
    for i in range(config.warmup):
        step(i)
    times: list[float] = []
    every = max(1, config.runs // 10)
    deadline = time.perf_counter() + config.max_seconds
    while len(times) < config.runs and time.perf_counter() < deadline:
        start = time.perf_counter()
        step(len(times))
        times.append((time.perf_counter() - start) * 1e3)
        if tick and (len(times) % every == 0 or len(times) == config.runs):
            tick(len(times) % every or every)
    return times


def summarize(times_ms: list[float]) -> dict[str, float]:
    """p50/p90/p99/mean in ms and throughput in images per second."""
    t = np.asarray(times_ms)
    p50, p90, p99 = np.percentile(t, [50, 90, 99])
    return {"runs": len(t), "p50_ms": round(float(p50), 3), "p90_ms": round(float(p90), 3),
            "p99_ms": round(float(p99), 3), "mean_ms": round(float(t.mean()), 3),
            "throughput_fps": round(1000.0 / float(t.mean()), 2)}


def interleaved(steps: Mapping[str, Callable[[], object]], turns: int, warmup: int = 10) -> dict[str, list[float]]:
    """Milliseconds of about `turns` calls of every step, the steps taking turns (the order reversed every other
    turn), so that the slow drifts of a shared machine hit each one alike. This is how every ratio of two
    artifacts' latencies is timed: fresh processes per artifact moved gaps of 3-4% between rounds, turns repeat them
    within about half a percent (BENCHMARKS.md, x86).

    In its turn a step runs `SWITCH + TIMED` times in a row and only the last `TIMED` are timed: the first call after
    a switch pays for the caches the other steps evicted, which a device running one model never does. Timed on the
    call right after the switch, a small INT8 network taking turns with FP32 ones read 10-20% slower than beside
    its peers alone (BENCHMARKS.md, "compress search")."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    order = list(steps)
    for turn in range(-(-turns // TIMED)):
        for name in order if turn % 2 == 0 else reversed(order):
            for call in range(SWITCH + TIMED):
                start = time.perf_counter()
                steps[name]()
                if call >= SWITCH:
                    times[name].append((time.perf_counter() - start) * 1e3)
    return times
