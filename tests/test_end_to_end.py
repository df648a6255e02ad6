"""Real runs of `compress` on the embedded demo at a small image size: artifacts, report, cache, resume, gates."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgecompress.cli import main


def tree_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode() + p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def x86_run(tmp_path_factory: pytest.TempPathFactory, demo: tuple[Path, Path]) -> tuple[Path, int, str]:
    """One full x86 (OpenVINO) run on the demo, shared by the tests that only read its output."""
    tmp = tmp_path_factory.mktemp("x86")
    recipe = tmp / "recipe.yaml"
    recipe.write_text("imgsz: 160\nbench: {warmup: 1, runs: 3, max_seconds: 5}\nquant: {calibration_images: 24}\n")
    before = tree_digest(demo[0].parent)
    code = main(["--target", "x86", "--recipe", str(recipe), "--out", str(tmp / "out")])
    return tmp / "out", code, before


def test_run_writes_a_report_for_every_stage(x86_run, demo) -> None:
    out, code, _ = x86_run
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["schema"] == "edgecompress.report/1"
    assert [s["name"] for s in report["stages"]] == ["baseline", "onnx-fp32", "openvino-fp32", "openvino-int8",
                                                     "openvino-int8-letterboxed"]
    assert [s["runtime"] for s in report["stages"]] == ["torch", "onnxruntime", "openvino", "openvino", "openvino"]
    assert [s["precision"] for s in report["stages"]] == ["fp32", "fp32", "fp32", "int8", "int8"]
    for stage in report["stages"]:
        assert 0 < stage["accuracy"]["map50_95"] <= stage["accuracy"]["map50"] <= 1
        assert stage["accuracy"]["images"] == 12
        bench = stage["benchmark"]
        assert bench["inference"]["runs"] == 3 and bench["end_to_end"]["runs"] == 3
        assert 0 < bench["inference"]["p50_ms"] <= bench["inference"]["p99_ms"]
        assert bench["file_mb"] > 1 and bench["memory"]["peak_rss_mb"] > 50
        assert stage["parameters"] > 1e6 and stage["gflops"] > 0
    # The FP32 ONNX computes what PyTorch does, measured the same way (square letterbox): the same mAP.
    # OpenVINO's CPU plugin executes in bf16 where the CPU has it (as Ultralytics' own export does here),
    # which moves mAP by about a point on 12 images at 160 px; a broken conversion loses far more.
    torch_map, onnx_map, openvino_map, int8_map, _ = (s["accuracy"]["map50_95"] for s in report["stages"])
    assert abs(onnx_map - torch_map) < 0.002
    assert abs(openvino_map - torch_map) < 0.03
    assert report["stages"][2]["benchmark"]["execution_precision"] in ("f32", "bf16", "f16")
    quant = report["stages"][3]["info"]
    assert quant["mode"] == "ptq" and quant["calibration_images"] == 24
    assert quant["fp32_map50_95"] == openvino_map  # held to the reported FP32 stage, evaluated once for both
    manifest = [entry["stage"] for entry in json.loads((out / "manifest.json").read_text())["stages"]]
    assert manifest.count("evaluate-openvino-fp32") == 1
    assert manifest.index("evaluate-openvino-fp32") < manifest.index("quantize-x86")
    choice = quant["quantizer_choice"]  # x86's default builds both; which is kept depends on measured speed
    assert choice["setting"] == "auto"
    assert quant["quantizer"] == choice["chosen"]
    assert report["stages"][3]["benchmark"]["file_mb"] < report["stages"][2]["benchmark"]["file_mb"] / 2
    assert int8_map > 0.5 * openvino_map  # an INT8 model that quantized the head's decode detects nothing
    # the deployed artifact: the INT8 network with the conversion and NMS inside, scoring what its network scores
    # fed the same frames by the host (edgecompress.targets.frame; tests/test_frame.py for every variant)
    frame = report["stages"][-1]
    assert frame["info"]["network"] == "openvino-int8" and frame["info"]["frame"]["input"] == "letterboxed"
    assert frame["accuracy"]["protocol"] == "frames" and abs(frame["accuracy"]["change_points"]) <= 0.1
    assert frame["benchmark"]["takes"] == "letterboxed" and frame["benchmark"]["nms_inside"]
    assert report["recipe"]["imgsz"] == 160 and report["target"]["runtime"] == "openvino"
    assert (out / "report.png").stat().st_size > 10_000
    assert "| openvino-fp32 | openvino | fp32 (bf16 execution) |" in (out / "report.md").read_text() or \
        report["stages"][2]["benchmark"]["execution_precision"] == "f32"


def test_user_files_are_never_modified(x86_run, demo) -> None:
    _, _, before = x86_run
    assert tree_digest(demo[0].parent) == before
    assert not list(demo[1].parent.rglob("*.cache"))


def test_published_artifact_loads_in_ultralytics(x86_run, demo) -> None:
    from ultralytics import YOLO

    out, _, _ = x86_run
    report = json.loads((out / "report.json").read_text())
    assert report["final"]["artifact"].endswith("_letterboxed_openvino_model")
    artifact = out / report["final"]["network"]  # beside the deployed artifact: what Ultralytics loads
    assert artifact.name.endswith("-int8_openvino_model") and (artifact / "metadata.yaml").is_file()
    image = sorted((demo[1].parent / "images" / "val").iterdir())[0]
    result = YOLO(str(artifact), task="detect").predict(str(image), imgsz=160, verbose=False)[0]
    assert result.names == {0: "raccoon"} and len(result.boxes) >= 1


def test_second_run_reuses_every_stage(x86_run, capsys) -> None:
    out, _, _ = x86_run
    report = json.loads((out / "report.json").read_text())
    recipe = out.parent / "recipe.yaml"
    capsys.readouterr()
    assert main(["--target", "x86", "--recipe", str(recipe), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "done in" not in err and err.count("reused") >= 11
    again = json.loads((out / "report.json").read_text())
    assert again["stages"] == [dict(s, reused=True) for s in report["stages"]]


def test_gates_fail_with_exit_status_1(x86_run, capsys) -> None:
    """Gates set in the recipe are judged on the finished stages: nothing is rebuilt, a failed one exits 1."""
    out, _, _ = x86_run
    recipe = out.parent / "gated.yaml"
    recipe.write_text((out.parent / "recipe.yaml").read_text() + "gates: {max_map_drop: 50, max_latency_ms: 0.001}\n")
    code = main(["--target", "x86", "--recipe", str(recipe), "--out", str(out)])
    assert code == 1
    err = capsys.readouterr().err
    assert "gate failed: max_latency_ms" in err and "done in" not in err
    report = json.loads((out / "report.json").read_text())
    int8 = report["stages"][3]["info"]
    # with gates set, INT8 is also held to its FP32 model in the same runtime, within the quant stage's budget
    assert [(g["gate"], g["passed"]) for g in report["gates"]] == [("max_map_drop", True),
                                                                  ("int8_map_drop", int8["within_budget"]),
                                                                  ("max_latency_ms", False)]
    assert report["gates"][1]["limit"] == int8["budget_points"] == 1.0
    assert "**A gate FAILED**" in (out / "report.md").read_text().splitlines()[2]
    assert "(limit 0.001): FAIL" in (out / "report.md").read_text()


def test_run_killed_during_export_resumes(tmp_path: Path, fast_recipe) -> None:
    recipe, out = fast_recipe(quant={"mode": "none"}), tmp_path / "out"
    command = [sys.executable, "-m", "edgecompress.cli", "--recipe", str(recipe), "--out", str(out)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list((out / "stages").glob(".tmp-export-*")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not list((out / "stages").glob("export-*")), "the killed export must not count as finished"
    resumed = subprocess.run(command, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "removed 1 unfinished stage folder" in resumed.stderr
    assert "[load] reused" in resumed.stderr and "[export] done in" in resumed.stderr
    assert not list((out / "stages").glob(".tmp-*"))
    report = json.loads((out / "report.json").read_text())
    assert [s["name"] for s in report["stages"]] == ["baseline", "onnx-fp32", "onnx-fp32-letterboxed"]


def test_second_concurrent_run_is_refused(tmp_path: Path, fast_recipe, capsys) -> None:
    import fcntl

    from edgecompress.pipeline.cache import LOCK

    out = tmp_path / "out"
    out.mkdir()
    with open(out / LOCK, "w") as held:
        held.write("4242")
        held.flush()
        fcntl.flock(held, fcntl.LOCK_EX)
        code = main(["--recipe", str(fast_recipe()), "--out", str(out)])
    assert code == 2
    assert "another compress run (pid 4242) is using" in capsys.readouterr().err


def test_prune_finetune_and_qat_run_as_one_chain(tmp_path: Path, fast_recipe) -> None:
    """--prune with fine-tuning and QAT through the CLI: every stage in order, each artifact measured."""
    recipe = fast_recipe(imgsz=64, finetune={"epochs": 1, "batch": 4},
                         quant={"mode": "qat", "calibration_images": 8, "qat": {"epochs": 1, "batch": 4}})
    out = tmp_path / "out"
    assert main(["--recipe", str(recipe), "--prune", "0.2", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    names = [s["name"] for s in report["stages"]]
    assert names == ["baseline", "prune", "finetune", "onnx-fp32", "onnxruntime-int8",
                     "onnxruntime-int8-letterboxed"]
    baseline, pruned, finetuned, fp32, int8, _ = report["stages"]
    assert pruned["gflops"] < 0.85 * baseline["gflops"] and pruned["parameters"] < baseline["parameters"]
    assert finetuned["gflops"] == pruned["gflops"] == fp32["gflops"]  # no grow-back through training and export
    assert int8["info"]["mode"] == "qat" and int8["precision"] == "int8"
    assert "QAT, 1 epochs" in (out / "report.md").read_text()
