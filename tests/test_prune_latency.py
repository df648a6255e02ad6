"""Latency-aware pruning: each group's cost measured in the whole model in the target's runtime, the allocation
that reaches a measured latency target, and the recipe's rules for it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import evaluator
from torch import nn
from ultralytics.nn.tasks import DetectionModel

from edgecompress.config import ConfigError
from edgecompress.prune import latency
from edgecompress.prune.config import PruneConfig
from edgecompress.prune.graph import enable_grads
from edgecompress.prune.planner import Planner
from edgecompress.prune.pruner import prune
from edgecompress.yolo.blocks import split_blocks

IMGSZ = 160
EXPENSIVE, CHEAP = "model.1.conv", "model.6.cv3.2.0.conv"


def tiny(width: int = 64) -> DetectionModel:
    """A real Ultralytics detector, small enough to time in a test. model.1 is a 3x3 conv of `width` channels at
    half resolution feeding another 3x3: at 128, cutting half of it removes about 30% of the FLOPs, plainly
    expensive; the head's convs at stride 32 (5x5 maps at 160) are plainly cheap. At 64 no group dominates, so the
    allocation has many similar steps to reach a target with."""
    layers = [[32, 3, 2], [width, 3, 1], [64, 3, 2], [96, 3, 2], [96, 3, 2], [96, 3, 2]]
    yaml = {"nc": 1, "backbone": [[-1, 1, "Conv", args] for args in layers],
            "head": [[[3, 4, 5], 1, "Detect", ["nc"]]]}
    return DetectionModel(yaml, nc=1, verbose=False).eval()


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("EDGECOMPRESS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "latency"


def test_in_context_costs_rank_a_plainly_expensive_group_above_a_cheap_one(demo, tmp_path, cache):
    model = enable_grads(tiny(width=128))
    split_blocks(model)
    keep = {EXPENSIVE, CHEAP}
    ignore = tuple(n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and n not in keep)
    config = PruneConfig(ratio=0.3, round_to=8, ignore=ignore, criterion="l2")
    plan = Planner(model, config, evaluator(demo[1], IMGSZ).dataset, IMGSZ)
    assert {plan.names[g.root] for g in plan.groups} == keep
    meter = latency.meter("openvino", model, IMGSZ, tmp_path / "probes", turns=40)
    base, costs = latency.costs(plan, meter, 8)
    assert base > 0 and costs[EXPENSIVE].channels == 64 and costs[CHEAP].channels > 0
    assert costs[EXPENSIVE].saved > max(costs[CHEAP].saved, 0) + costs[EXPENSIVE].se  # measured, not predicted
    assert costs[EXPENSIVE].predicted > 10 * costs[CHEAP].predicted
    # cached per architecture, size, runtime and host: a second call measures nothing
    assert len(list(cache.glob("*.json"))) == 1
    meter.compare = None  # would fail if called
    assert latency.costs(plan, meter, 8) == (base, costs)


def test_noisy_savings_are_shrunk_toward_flops_and_clear_ones_kept():
    predicted = np.array([1.0, 2.0, 3.0, 4.0])
    saved = np.array([0.5, 5.0, 1.8, 1.8])  # the second is far off the others' 0.5 ms per predicted unit
    noisy = latency.shrink(saved, np.array([0.01, 10.0, 0.01, 0.01]), predicted)
    assert abs(noisy[1] - 0.5 * 2.0) < 0.1  # lost in noise: about its FLOPs' share
    assert np.allclose(noisy[[0, 2, 3]], saved[[0, 2, 3]], atol=0.05)  # measured precisely: its own
    assert np.allclose(latency.shrink(saved, np.zeros(4), predicted), saved)


def test_latency_target_is_reached_in_a_timed_run(demo, tmp_path, cache):
    config = PruneConfig(latency=0.3, round_to=8, criterion="l2", sensitivity_images=2, latency_turns=40)
    _, info = prune(tiny(), config, evaluator(demo[1], IMGSZ), tmp_path)
    lat = info["latency"]
    assert lat["runtime"] == "openvino" and 1 <= len(lat["tries"]) <= 4 and (tmp_path / "latency.png").is_file()
    best = min(abs(t["error"]) for t in lat["tries"])
    assert lat["removed"] == next(t["removed"] for t in lat["tries"] if abs(t["error"]) == best)  # the one kept
    # the timing against the unpruned model lands within the tolerance (twice it, where the suite loads the two
    # cores); the FLOPs alone would say nothing about it
    assert lat["reached"] or best <= 2 * config.latency_tolerance, [(t["removed"], t["error"]) for t in lat["tries"]]
    assert info["after"]["gflops"] < info["before"]["gflops"]


def test_a_runtime_that_does_not_run_here_gets_the_flops_proxy_and_says_so(demo, tmp_path, cache):
    config = PruneConfig(latency=0.3, round_to=8, criterion="l2", sensitivity_images=1)
    _, info = prune(tiny(), config, evaluator(demo[1], 64), tmp_path, runtime="tensorrt")
    lat = info["latency"]
    assert lat["unit"] == "GFLOPs" and "proxy" in lat["note"] and lat["reached"]


def test_the_amount_is_corrected_between_tries_on_either_side_of_the_target():
    from edgecompress.prune.pruner import next_amount

    assert next_amount([(0.3, 0.15)], 0.3) == pytest.approx(0.6)  # measured half the target: ask twice as much
    assert next_amount([(0.3, 0.15), (0.6, 0.45)], 0.3) == pytest.approx(0.45)  # between the two
    assert next_amount([(0.3, 0.15), (0.6, 0.45), (0.45, 0.25)], 0.3) == pytest.approx(0.4875)  # the closest two


def test_latency_config_errors_name_the_value_and_the_fix():
    with pytest.raises(ConfigError, match="allocation: sensitivity.*'global'"):
        PruneConfig(latency=0.3, allocation="global")
    with pytest.raises(ConfigError, match="steps: 3.*write steps: 1"):
        PruneConfig(latency=0.3, steps=3)
    with pytest.raises(ConfigError, match="give one amount"):
        PruneConfig(latency=0.3, flops=0.2)
    with pytest.raises(ConfigError, match="latency_tolerance.*0.7"):
        PruneConfig(latency=0.3, latency_tolerance=0.7)
    with pytest.raises(ConfigError, match="1.2"):
        PruneConfig(latency=1.2)


def test_cli_prune_latency_sets_the_recipe_and_excludes_prune():
    from edgecompress.cli import parser, recipe_from_args

    recipe = recipe_from_args(parser().parse_args(["--prune-latency", "0.4"]))
    assert recipe.prune.latency == 0.4 and recipe.prune.flops == 0
    with pytest.raises(SystemExit):
        parser().parse_args(["--prune", "0.3", "--prune-latency", "0.4"])


def test_a_split_block_whose_other_half_stays_is_not_cut_when_measured(demo, tmp_path, cache):
    model = enable_grads(DetectionModel("yolo11n.yaml", nc=1, verbose=False).eval())
    split_blocks(model)  # C2PSA: one half feeds attention, which is never pruned, so the other half stays too
    keep = {"model.10.cv0.conv", "model.10.cv1.conv", "model.9.cv2.conv"}
    ignore = tuple(n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and n not in keep)
    plan = Planner(model, PruneConfig(ratio=0.3, ignore=ignore, criterion="l2"), evaluator(demo[1], 64).dataset, 64)
    _, costs = latency.costs(plan, latency.meter("onnxruntime", model, 64, tmp_path / "probes", turns=4), 1)
    halves = [name for name in costs if name.startswith("model.10.")]
    assert halves and all(costs[n].channels == 0 for n in halves) and costs["model.9.cv2.conv"].channels > 0
