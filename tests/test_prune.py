"""Structured pruning on real Ultralytics architectures: YOLOv8 (C2f), YOLO11 (C3k2, C2PSA), YOLO26 (end-to-end)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from conftest import evaluator
import torch
from torch import nn

import edgecompress.yolo.model as yolo
from edgecompress.config import ConfigError, from_dict
from edgecompress.yolo.config import FinetuneConfig
from edgecompress.prune.config import PruneConfig
from edgecompress.prune.depth import remove_blocks
from edgecompress.prune.pruner import prune
from edgecompress.yolo.blocks import fold_blocks, split_blocks
from ultralytics.nn.tasks import DetectionModel

IMGSZ = 64  # channel dependencies and output shapes do not need more
STOCK = ("torch.nn.", "ultralytics.nn.")


def build(arch: str, demo: tuple[Path, Path]) -> DetectionModel:
    if arch == "yolov8n-demo":  # a trained checkpoint, loaded as the runner loads it (grads off)
        return yolo.load_model(demo[0])
    return DetectionModel(f"{arch}.yaml", nc=1, verbose=False).eval()  # random weights: shapes are what matter


def outputs(model: DetectionModel, train: bool) -> list[torch.Size]:
    """Shapes of the head's predictions (boxes, scores; decoded in eval mode)."""
    model.train(train)
    with torch.no_grad():
        out = model(torch.zeros(1, 3, IMGSZ, IMGSZ))
    model.eval()
    flat, todo = [], [out]
    while todo:
        item = todo.pop(0)
        if isinstance(item, torch.Tensor):
            flat.append(item.shape)
        elif isinstance(item, dict):  # "feats" are the neck's feature maps: pruning may narrow them
            todo.extend(v for k, v in item.items() if k != "feats")
        elif isinstance(item, (list, tuple)):
            todo.extend(item)
    return flat


def widths(model: nn.Module) -> list[int]:
    return [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]


@pytest.mark.parametrize("arch", ["yolov8n-demo", "yolo11n", "yolo26n"])
def test_each_architecture_prunes_and_keeps_its_output_shapes(arch, demo, tmp_path):
    model = build(arch, demo)
    eval_shapes, train_shapes = outputs(model, False), outputs(model, True)
    state = copy.deepcopy(model.state_dict())
    config = PruneConfig(ratio=0.3, round_to=8, sensitivity_images=2)
    pruned, info = prune(model, config, evaluator(demo[1], IMGSZ), tmp_path)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())  # the input model is untouched

    assert info["after"]["gflops"] < 0.75 * info["before"]["gflops"]
    assert info["after"]["parameters"] < info["before"]["parameters"]
    assert outputs(pruned, False) == eval_shapes and outputs(pruned, True) == train_shapes
    # only stock classes are left, so plain Ultralytics can load a saved checkpoint
    assert all(type(m).__module__.startswith(STOCK) for m in pruned.modules())
    changed = [a for a, b in zip(widths(pruned), widths(model)) if a != b]
    assert changed and all(c % 8 == 0 for c in changed)
    reasons = {s["reason"].split(":")[0] for s in info["steps"][0]["skipped"]}
    assert "Detect output conv" in reasons
    if arch != "yolov8n-demo":
        assert "attention" in reasons  # C2PSA / C3k2-attention heads are left alone and named


@pytest.mark.parametrize("target", [0.4])
def test_flops_target_is_reached_within_3_percent(target, demo, tmp_path):
    model = build("yolov8n-demo", demo)
    _, info = prune(model, PruneConfig(flops=target), evaluator(demo[1], 160), tmp_path)
    assert abs(info["flops_removed"] - target) <= 0.03


@pytest.mark.parametrize("criterion", ["l1", "bn_scale", "taylor", "activation", "random"])
def test_every_criterion_prunes(criterion, demo, tmp_path):
    model = build("yolov8n-demo", demo)
    config = PruneConfig(ratio=0.25, criterion=criterion, allocation="uniform", batches=1)
    pruned, info = prune(model, config, evaluator(demo[1], IMGSZ), tmp_path)
    assert info["after"]["parameters"] < 0.8 * info["before"]["parameters"]
    assert outputs(pruned, False) == outputs(build("yolov8n-demo", demo), False)


def test_iterative_ratio_counts_channels_of_the_unpruned_model(demo, tmp_path):
    uniform = dict(criterion="l2", allocation="uniform")  # the step arithmetic, without data-driven scores
    once = prune(build("yolov8n-demo", demo), PruneConfig(ratio=0.5, **uniform), evaluator(demo[1], IMGSZ),
                 tmp_path / "a")[1]
    stepped = prune(build("yolov8n-demo", demo),
                    PruneConfig(ratio=0.5, steps=3, step_finetune=FinetuneConfig(epochs=0), **uniform),
                    evaluator(demo[1], IMGSZ), tmp_path / "b")[1]
    assert stepped["after"]["parameters"] == pytest.approx(once["after"]["parameters"], rel=0.03)


def test_a_group_without_taylor_signal_is_ranked_by_magnitude(demo, tmp_path, monkeypatch):
    from edgecompress.prune.importance import CRITERIA

    taylor = CRITERIA["taylor"]
    feed = taylor.feed

    def no_gradient_in_one_branch(model, *args):  # as when no scoring batch has an object at that scale
        feed(model, *args)
        for p in model.model[-1].cv2[0].parameters():
            p.grad = torch.zeros_like(p)

    monkeypatch.setattr(taylor, "feed", no_gradient_in_one_branch)
    config = PruneConfig(ratio=0.3, criterion="taylor", allocation="global", batches=1)
    pruned, info = prune(build("yolov8n-demo", demo), config, evaluator(demo[1], IMGSZ), tmp_path)
    assert info["steps"][0]["scored_by_l2"]
    assert info["after"]["parameters"] < 0.9 * info["before"]["parameters"]


def test_global_allocation_prunes_groups_unevenly(demo, tmp_path):
    model = build("yolov8n-demo", demo)
    config = PruneConfig(ratio=0.3, criterion="l2", allocation="global")
    _, info = prune(model, config, evaluator(demo[1], IMGSZ), tmp_path)
    kept = [after / before for before, after in info["steps"][0]["groups"].values()]
    assert max(kept) - min(kept) > 0.2


def test_split_blocks_compute_the_same_function_and_fold_back():
    model = DetectionModel("yolo11n.yaml", nc=1, verbose=False).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)[0]
        assert split_blocks(model) > 0
        split = model(x)[0]
        fold_blocks(model)
        folded = model(x)[0]
    assert torch.allclose(ref, split, atol=1e-4) and torch.allclose(ref, folded, atol=1e-4)


def test_depth_pruning_drops_blocks_and_runs(demo):
    model = build("yolov8n-demo", demo)
    blocks = sum(len(m.m) for m in model.modules() if hasattr(m, "m") and isinstance(m.m, nn.ModuleList))
    removed = remove_blocks(model, 2)
    assert len(removed) == 2
    assert sum(len(m.m) for m in model.modules() if hasattr(m, "m") and isinstance(m.m, nn.ModuleList)) == blocks - 2
    assert outputs(model, False) == outputs(build("yolov8n-demo", demo), False)


def test_config_errors_name_the_value_and_the_fix(demo, tmp_path):
    with pytest.raises(ConfigError, match="1.5"):
        PruneConfig(flops=1.5)
    with pytest.raises(ConfigError, match="give one amount"):
        PruneConfig(flops=0.3, ratio=0.2)
    with pytest.raises(ConfigError, match="did you mean 'taylor'"):
        from_dict(PruneConfig, {"criterion": "tayler"}, "prune")
    with pytest.raises(ConfigError, match="sparse_epochs"):
        PruneConfig(ratio=0.2, sparse_epochs=2)
    with pytest.raises(ConfigError, match="matches no conv layer"):
        prune(build("yolov8n-demo", demo), PruneConfig(ratio=0.2, ignore=("model.99.*",)), evaluator(demo[1], 96),
              tmp_path)
    assert not PruneConfig().enabled and PruneConfig(flops=0.35).enabled and PruneConfig(depth=1).enabled


def test_sensitivity_is_measured_plotted_and_drives_the_allocation(demo, tmp_path):
    model = build("yolov8n-demo", demo)
    config = PruneConfig(ratio=0.3, allocation="sensitivity", sensitivity_images=2)
    _, info = prune(model, config, evaluator(demo[1], IMGSZ), tmp_path)
    drops = info["sensitivity"]["map_drop_points"]
    assert len(drops) > 20 and (tmp_path / info["sensitivity"]["plot"]).stat().st_size > 0
    kept = {name: after / before for name, (before, after) in info["steps"][0]["groups"].items()}
    most, least = max(drops, key=drops.get), min(drops, key=drops.get)
    assert drops[most] == drops[least] or kept[most] >= kept[least]  # the costlier group keeps more channels


def test_importance_batches_are_the_same_in_every_process(demo):
    """Ultralytics seeds its shuffle from torch's per-process seed: unseeded, two runs pruned two different models."""
    import subprocess
    import sys

    script = ("import sys; from edgecompress.yolo import patches; patches.apply(); "
              "from edgecompress.yolo.data import Dataset; "
              "print([b['im_file'] for b in Dataset.check(sys.argv[1], 1).train_batches(64, 2, batch=4)])")
    first, second = (subprocess.run([sys.executable, "-c", script, str(demo[1])], capture_output=True, text=True,
                                    check=True).stdout.splitlines()[-1] for _ in range(2))
    assert first == second and first.count(".jpg") == 8
