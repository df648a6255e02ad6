"""The Python face: `compress()` runs the pipeline and returns the report as an object; progress is opt-in."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from edgecompress import compress, progress
from edgecompress.errors import UserError
from edgecompress.recipe import Recipe


def test_compress_returns_the_report_and_reports_progress_when_asked(tmp_path: Path, demo) -> None:
    shown = io.StringIO()
    with progress.reporting(progress.Lines(shown)):
        report = compress(*demo, out=tmp_path / "out", imgsz=96, quant={"mode": "none"},
                          bench={"warmup": 1, "runs": 3, "max_seconds": 5.0})
    assert report.data == json.loads((tmp_path / "out" / "report.json").read_text())
    assert [s["name"] for s in report.stages] == ["baseline", "onnx-fp32", "onnx-fp32-letterboxed"]
    assert report.final.is_file() and report.final.name.endswith("_letterboxed.onnx") and report.passed
    assert report.network == report.final.with_name(report.final.name.replace("_letterboxed", ""))
    assert report.network.is_file()
    assert report.stage("onnx-fp32")["accuracy"]["map50_95"] == report.stages[1]["accuracy"]["map50_95"]
    with pytest.raises(KeyError, match="has baseline, onnx-fp32, onnx-fp32-letterboxed"):
        report.stage("openvino-int8")
    assert "[export] done in" in shown.getvalue()
    assert (tmp_path / "out" / "compress.log").read_text()


def test_settings_lay_over_a_recipe_and_bad_ones_raise_user_errors(tmp_path: Path, demo) -> None:
    recipe = Recipe.from_dict({"imgsz": 96, "prune": {"flops": 0.3, "criterion": "l2"}})
    with pytest.raises(UserError, match="unknown target 'x68'"):
        compress(*demo, recipe=recipe, target="x68", out=tmp_path / "out")
    with pytest.raises(UserError, match="prune.flops"):
        compress(*demo, recipe=recipe, prune={"flops": 1.5}, out=tmp_path / "out")
    assert not (tmp_path / "out").exists()
