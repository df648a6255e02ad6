"""Fine-tuning keeps the pruned architecture; a pruned, fine-tuned checkpoint survives save and load."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import evaluator
import torch
import yaml
from torch import nn

import edgecompress.yolo.model as yolo
from edgecompress.config import ConfigError
from edgecompress.yolo.config import FinetuneConfig
from edgecompress.yolo.train import _output_distillation, finetune
from edgecompress.prune.config import PruneConfig
from edgecompress.prune.pruner import prune

IMGSZ = 96
QUICK = FinetuneConfig(epochs=1, batch=8, workers=0, schedule="recover")


def widths(model: nn.Module) -> list[int]:
    return [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]


@pytest.fixture(scope="module")
def pruned_and_tuned(demo, tmp_path_factory):
    """The demo checkpoint pruned by half its FLOPs, then fine-tuned one epoch."""
    work = tmp_path_factory.mktemp("ft")
    base = yolo.load_model(demo[0])
    pruned, _ = prune(base, PruneConfig(flops=0.5), evaluator(demo[1], IMGSZ), work / "prune")
    tuned, info = finetune(pruned, FinetuneConfig(epochs=1, workers=0), evaluator(demo[1], IMGSZ), work / "finetune",
                           reference=base)
    return base, pruned, tuned, info, work


def test_no_grow_back_after_a_fine_tune_epoch(pruned_and_tuned):
    base, pruned, tuned, info, work = pruned_and_tuned
    assert widths(tuned) == widths(pruned) != widths(base)
    assert info["epochs_log"] and (work / "finetune" / "train" / "weights" / "best.pt").exists()


def test_auto_schedule_recovers_a_pruned_model(pruned_and_tuned):
    chosen, work = pruned_and_tuned[3]["schedule"], pruned_and_tuned[4]
    assert chosen["points_below"] > 1.0 and chosen["name"] == "recover"
    assert chosen["settings"]["warmup_epochs"] == 3.0 and not chosen["settings"]["freeze_bn"]
    trainer_args = yaml.safe_load((work / "finetune" / "train" / "args.yaml").read_text())
    assert trainer_args["batch"] == trainer_args["nbs"] == 8  # what the trainer really ran with
    assert trainer_args["warmup_epochs"] == 3.0


def test_epochs_auto_stops_once_recovered(pruned_and_tuned, demo, tmp_path):
    base, pruned = pruned_and_tuned[:2]
    config = FinetuneConfig(epochs="auto", max_epochs=3, recovered_within=100.0, workers=0)
    _, info = finetune(pruned, config, evaluator(demo[1], IMGSZ), tmp_path, reference=base)
    assert len(info["epochs_log"]) == 1 and info["stopped"].startswith("recovered at epoch 1")


def test_epochs_auto_never_trains_past_its_ceiling(pruned_and_tuned, demo, tmp_path):
    base, pruned = pruned_and_tuned[:2]
    config = FinetuneConfig(epochs="auto", max_epochs=2, recovered_within=0.0, patience=5, workers=0)
    _, info = finetune(pruned, config, evaluator(demo[1], IMGSZ), tmp_path, reference=base)
    epochs, stopped = len(info["epochs_log"]), info["stopped"]  # at 96 px on 12 val images, two epochs may even
    assert epochs <= 2                                              # match the unpruned model
    assert stopped == "the ceiling, 2 epochs" or stopped.startswith(f"recovered at epoch {epochs} (")


def test_auto_schedule_preserves_an_intact_model_and_its_batchnorm_statistics(demo, tmp_path):
    model = yolo.load_model(demo[0])
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running_" in k}
    tuned, info = finetune(model, FinetuneConfig(epochs=1, batch=8, workers=0), evaluator(demo[1], IMGSZ), tmp_path,
                           reference=model)
    assert info["schedule"]["name"] == "preserve" and info["schedule"]["points_below"] == 0
    after = tuned.state_dict()
    assert all(torch.equal(v, after[k].to(v.dtype)) for k, v in stats.items())
    assert 0 < info["epochs_log"][0]["lr/pg0"] <= 1e-5  # it trained, at the preserve schedule's rate


def test_trainer_writes_only_into_workdir(demo, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative workdir: Ultralytics would file it under ./runs/detect
    model = yolo.load_model(demo[0])
    finetune(model, QUICK, evaluator(demo[1], IMGSZ), Path("work"))
    assert (tmp_path / "work" / "train" / "weights" / "best.pt").exists() and not (tmp_path / "runs").exists()


def test_checkpoint_round_trip_in_a_fresh_process(pruned_and_tuned, demo, tmp_path):
    _, _, tuned, _, _ = pruned_and_tuned
    path = yolo.save_checkpoint(tuned, tmp_path / "pruned.pt")
    image = next((demo[1].parent / "images" / "val").iterdir())
    script = f"""
import json, os
os.environ["YOLO_OFFLINE"] = "1"
from edgecompress.yolo import patches; patches.apply()  # no label caches written into the demo dataset
import torch
from torch import nn
from ultralytics import YOLO
model = YOLO({str(path)!r})
boxes = model.predict({str(image)!r}, imgsz={IMGSZ}, verbose=False)[0].boxes
metrics = model.val(data={str(demo[1])!r}, imgsz={IMGSZ}, batch=4, plots=False, verbose=False,
                    project={str(tmp_path)!r}, name="val")
print(json.dumps({{"widths": [m.out_channels for m in model.model.modules() if isinstance(m, nn.Conv2d)],
                  "boxes": boxes.data.shape[-1], "map": metrics.box.map}}))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert loaded["widths"] == widths(tuned) and loaded["boxes"] == 6 and 0 <= loaded["map"] <= 1


def test_pruned_model_exports_and_evaluates_with_the_pipeline(pruned_and_tuned, demo, tmp_path):
    _, _, tuned, _, _ = pruned_and_tuned
    loaded = yolo.load_model(yolo.save_checkpoint(tuned, tmp_path / "pruned.pt"))
    onnx_path = yolo.export_onnx(loaded, IMGSZ, tmp_path, "pruned")
    metrics = evaluator(demo[1], IMGSZ)(onnx_path, tmp_path)
    assert onnx_path.exists() and metrics["images"] == 12


def test_distillation_and_group_sparse_training_run(demo, tmp_path):
    base = yolo.load_model(demo[0])
    pruned, info = prune(base, PruneConfig(ratio=0.2, criterion="group_norm", sparse_epochs=1),
                         evaluator(demo[1], IMGSZ), tmp_path / "prune")
    assert info["sparse_training"]["epochs_log"]
    tuned, ft = finetune(pruned, FinetuneConfig(epochs=1, batch=8, workers=0, distill=1.0), evaluator(demo[1], IMGSZ),
                         tmp_path / "ft", reference=base)
    assert widths(tuned) == widths(pruned)
    assert ft["epochs_log"][0]["train/dis_loss"] > 0
    assert all(type(m).__module__.startswith(("torch.nn.", "ultralytics.nn.")) for m in tuned.modules())


@pytest.mark.parametrize("channels", [64, 4])  # DFL bins (YOLOv8, YOLO11) and plain regressions (YOLO26)
def test_output_distillation_is_minimal_where_the_student_matches_the_teacher(channels):
    torch.manual_seed(0)
    teacher = {"boxes": torch.randn(2, channels, 30), "scores": torch.randn(2, 3, 30) * 3}
    student = {k: v.clone().requires_grad_() for k, v in teacher.items()}
    at_teacher = _output_distillation(student, teacher)
    at_teacher.backward()
    assert all(torch.allclose(v.grad, torch.zeros_like(v), atol=1e-6) for v in student.values())
    moved = {k: v + torch.randn_like(v) for k, v in teacher.items()}
    assert _output_distillation(moved, teacher) > at_teacher


def test_config_errors_name_the_value():
    with pytest.raises(ConfigError, match="-1"):
        FinetuneConfig(epochs=-1)
    with pytest.raises(ConfigError, match="lr0"):
        FinetuneConfig(lr0=2.0)
    with pytest.raises(ConfigError, match="'gentle'"):
        FinetuneConfig(schedule="gentle")


def test_auto_schedule_without_the_unpruned_model_says_what_to_set(demo, tmp_path):
    with pytest.raises(ConfigError, match="schedule: recover"):
        finetune(yolo.load_model(demo[0]), FinetuneConfig(epochs=1), evaluator(demo[1], IMGSZ), tmp_path)


def test_yolo26_prunes_fine_tunes_saves_loads_and_exports(demo, tmp_path):
    from ultralytics.nn.tasks import DetectionModel

    model = DetectionModel("yolo26n.yaml", nc=1, verbose=False).eval()  # end-to-end head, built without downloads
    model.names = {0: "raccoon"}
    pruned, _ = prune(model, PruneConfig(flops=0.3, sensitivity_images=2), evaluator(demo[1], 64), tmp_path / "prune")
    tuned, _ = finetune(pruned, QUICK, evaluator(demo[1], 64), tmp_path / "ft")
    assert widths(tuned) == widths(pruned)
    path = yolo.save_checkpoint(tuned, tmp_path / "yolo26-pruned.pt")
    script = (f"from edgecompress.yolo import patches\npatches.apply()\nfrom ultralytics import YOLO\n"
              f"r = YOLO({str(path)!r}).predict({str(next((demo[1].parent / 'images' / 'val').iterdir()))!r}, "
              f"imgsz=64, verbose=False)\nprint(r[0].boxes.data.shape[-1])")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**__import__("os").environ, "YOLO_OFFLINE": "1"})
    assert done.returncode == 0 and done.stdout.strip().splitlines()[-1] == "6", done.stderr[-2000:]
    onnx_path = yolo.export_onnx(yolo.load_model(path), 64, tmp_path, "yolo26-pruned")
    assert onnx_path.stat().st_size > 0


def test_iterative_pruning_fine_tunes_between_steps_and_reaches_the_target(demo, tmp_path):
    config = PruneConfig(flops=0.4, steps=2, step_finetune=QUICK, max_map_drop=100.0)
    pruned, info = prune(yolo.load_model(demo[0]), config, evaluator(demo[1], IMGSZ), tmp_path)
    assert len(info["steps"]) == 2 and info["steps"][0]["finetune"]["epochs_log"]
    assert info["steps"][0]["gflops"] > info["steps"][1]["gflops"]
    assert abs(info["flops_removed"] - 0.4) <= 0.03
    assert all("map_drop_points" in s for s in info["steps"])


def test_fine_tuning_that_only_damages_the_model_returns_its_start(demo, tmp_path):
    model = yolo.load_model(demo[0])
    damaging = FinetuneConfig(epochs="auto", max_epochs=1, schedule="recover", optimizer="SGD", lr0=0.5,
                              warmup_epochs=0, batch=4, nbs=4, workers=0)
    tuned, info = finetune(model, damaging, evaluator(demo[1], IMGSZ), tmp_path, reference=model)
    assert tuned is model and info["kept_start"].startswith("no epoch beat the starting model")
