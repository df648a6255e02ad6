"""A run killed with SIGKILL after every stage it finishes resumes, stage by stage, to the same report."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import onnx
import openvino as ov

from edgecompress.yolo.model import load_model


def finished(out: Path) -> dict[str, int]:
    """Finished stage folders and the mtime of their done.json.

    A stage writes done.json inside its `.tmp-*` folder and then renames the folder, so those are skipped: they are
    not finished yet, and the rename can land between listing and reading them.
    """
    stages = out / "stages"
    return {p.name: (p / "done.json").stat().st_mtime_ns for p in stages.iterdir()
            if not p.name.startswith(".") and (p / "done.json").is_file()} if stages.is_dir() else {}


def compress(recipe: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "edgecompress.cli", "--target", "x86",
                             "--recipe", str(recipe), "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_killed_after_every_stage_resumes_to_the_same_report(tmp_path: Path, fast_recipe) -> None:
    recipe, out = fast_recipe(imgsz=64, quant={"mode": "none"}), tmp_path / "out"
    kills = 0
    while True:
        before = finished(out)
        proc = compress(recipe, out)
        while proc.poll() is None and len(finished(out)) <= len(before):
            time.sleep(0.005)
        if proc.poll() is not None:
            break
        proc.kill()  # SIGKILL: no handler runs, nothing is cleaned up
        proc.wait()
        kills += 1
        after = finished(out)
        assert {k: after[k] for k in before} == before, "a finished stage was redone or rewritten"
        assert kills < 20
    assert proc.returncode == 0
    assert kills >= 8  # load, export, convert, and an evaluation and a benchmark per artifact
    assert not list((out / "stages").glob(".tmp-*"))

    manifest = json.loads((out / "manifest.json").read_text())
    assert all(entry["reused"] for entry in manifest["stages"])  # the last run only read finished stages
    loaded = []
    for entry in manifest["stages"]:
        for name in entry["files"]:
            path = out / entry["folder"] / name
            if path.suffix == ".onnx":
                onnx.checker.check_model(str(path), full_check=True)
            elif path.name.endswith("_openvino_model"):
                ov.Core().read_model(str(path / "model.xml"))
            elif path.suffix == ".json":
                json.loads(path.read_text())
            loaded.append(path.name)
    assert {"model.onnx", "model_openvino_model", "bench.json"} <= set(loaded)

    straight = tmp_path / "straight"
    assert compress(recipe, straight).wait() == 0
    resumed, uninterrupted = (json.loads((o / "report.json").read_text()) for o in (out, straight))
    def accuracy(report: dict) -> list[dict]:  # the validator's own timings are noise, its metrics are not
        return [{k: v for k, v in s["accuracy"].items() if k != "val_speed_ms"} for s in report["stages"]]

    assert accuracy(resumed) == accuracy(uninterrupted)
    assert [s["name"] for s in resumed["stages"]] == [s["name"] for s in uninterrupted["stages"]]
    assert load_model(resumed["model"]["path"]).names == {0: "raccoon"}


def test_killed_in_the_middle_of_fine_tuning_resumes_without_redoing_pruning(tmp_path: Path, fast_recipe) -> None:
    recipe = fast_recipe(imgsz=64, prune={"flops": 0.2}, finetune={"epochs": 3, "batch": 4},
                         quant={"mode": "none"})
    out = tmp_path / "out"
    command = [sys.executable, "-m", "edgecompress.cli", "--recipe", str(recipe), "--out", str(out)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    # after the first epoch has written its results, before the last one
    while not list((out / "stages").glob(".tmp-finetune-*/scratch/**/results.csv")) and time.time() < deadline:
        assert proc.poll() is None, "the run ended before fine-tuning was under way"
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    pruned = finished(out)
    assert any(name.startswith("prune-") for name in pruned) and not any(n.startswith("finetune-") for n in pruned)
    resumed = subprocess.run(command, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "[prune] reused" in resumed.stderr and "[finetune] done in" in resumed.stderr
    assert "took over the lock left by an ended run" in resumed.stderr
    after = finished(out)
    assert {k: after[k] for k in pruned} == pruned
    report = json.loads((out / "report.json").read_text())
    assert [s["name"] for s in report["stages"]] == ["baseline", "prune", "finetune", "onnx-fp32",
                                                     "onnx-fp32-letterboxed"]


def test_ctrl_c_ends_with_a_message_and_a_resumable_state(tmp_path: Path, fast_recipe) -> None:
    import signal

    recipe, out = fast_recipe(quant={"mode": "none"}), tmp_path / "out"
    command = [sys.executable, "-m", "edgecompress.cli", "--recipe", str(recipe), "--out", str(out)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list((out / "stages").glob(".tmp-export-*")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate()
    assert proc.returncode == 130
    assert "interrupted; finished stages are kept, rerun the same command to resume" in err
    assert "Traceback" not in err
    assert subprocess.run(command, capture_output=True).returncode == 0
