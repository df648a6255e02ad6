"""The ncnn target end to end on the demo: FP32 and FP16 exports of the PyTorch model through pnnx, evaluated in ncnn
through Ultralytics' validator, timed in ncnn, loadable by `ultralytics.YOLO`; INT8 refused with the reason."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgecompress.cli import main

pytest.importorskip("ncnn", reason="the ncnn target needs the ncnn and pnnx packages (the `full` extra)")


def test_ncnn_run_exports_evaluates_and_times_fp32_and_fp16(tmp_path: Path, demo, fast_recipe) -> None:
    from ultralytics import YOLO

    out = tmp_path / "out"
    assert main(["--recipe", str(fast_recipe(imgsz=96)), "--target", "ncnn", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert [(s["name"], s["runtime"], s["precision"]) for s in report["stages"]] == [
        ("baseline", "torch", "fp32"), ("ncnn-fp32", "ncnn", "fp32"), ("ncnn-fp16", "ncnn", "fp16")]
    base, fp32, fp16 = (s["accuracy"]["map50_95"] for s in report["stages"])
    assert abs(fp32 - base) < 0.002 and abs(fp16 - fp32) < 0.005  # pnnx's graph computes what PyTorch does
    assert report["stages"][2]["benchmark"]["file_mb"] < 0.6 * report["stages"][1]["benchmark"]["file_mb"]
    artifact = out / report["final"]["artifact"]
    assert artifact.name == "yolov8n-raccoon-ncnn-fp16_ncnn_model"
    assert sorted(p.name for p in artifact.iterdir()) == ["metadata.yaml", "model.ncnn.bin", "model.ncnn.param"]
    image = sorted((demo[1].parent / "images" / "val").iterdir())[0]
    assert len(YOLO(str(artifact), task="detect").predict(str(image), imgsz=96, verbose=False)[0].boxes) >= 1
    assert not list(out.rglob("debug*")) and not list(out.rglob("*.py"))  # pnnx's scratch stayed inside, removed

    from edgecompress.device.runtime import RUNTIMES

    x = np.random.default_rng(0).random((1, 3, 96, 96), dtype=np.float32)
    ncnn_out = RUNTIMES["ncnn"].load(artifact).infer(x)[0]
    torch_out = RUNTIMES["torch"].load(demo[0]).infer(x)[0]
    assert ncnn_out.shape == torch_out.shape == (1, 5, 189)
    assert np.abs(ncnn_out[0, :4] - torch_out[0, :4]).max() < 1.0  # boxes in pixels: FP16 weights, within a pixel


def test_ncnn_int8_is_refused_with_what_to_write(tmp_path: Path, capsys) -> None:
    assert main(["--target", "ncnn", "--quant", "ptq", "--out", str(tmp_path / "out")]) == 2
    assert "target 'ncnn' runs no INT8 here; use --quant none" in capsys.readouterr().err
