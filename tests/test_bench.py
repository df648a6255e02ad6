"""`compress bench` on a real small ONNX exported from the demo: its output schema, the light path (no torch, no
ultralytics), OpenVINO artifacts, the dataset reading it does alone, and its errors."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgecompress.cli import main
from edgecompress.device.bench import measure
from edgecompress.device.host import power_mode_from
from edgecompress.device.images import dataset_images
from edgecompress.device.timing import BenchConfig
from edgecompress.errors import UserError

IMGSZ = 96
# What a device has: numpy, OpenCV, pyyaml and one runtime. Importing anything else must fail, as it would there.
BLOCKED = ["torch", "torchvision", "ultralytics", "onnx", "matplotlib"]
LIGHT = (f"import sys; sys.modules.update(dict.fromkeys({BLOCKED})); "
         "from edgecompress.cli import main; sys.exit(main(sys.argv[1:]))")


@pytest.fixture(scope="module")
def small_onnx(tmp_path_factory: pytest.TempPathFactory, demo: tuple[Path, Path]) -> Path:
    from edgecompress.yolo.model import export_onnx, load_model

    return export_onnx(load_model(demo[0]), IMGSZ, tmp_path_factory.mktemp("export"), "model")


def test_bench_light_path_writes_its_schema(tmp_path: Path, small_onnx: Path, demo: tuple[Path, Path]) -> None:
    out = tmp_path / "bench"
    proc = subprocess.run([sys.executable, "-c", LIGHT, "bench", str(small_onnx), "--data", str(demo[1]),
                           "--runs", "3", "--target", "arm", "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "bench.json").read_text())
    assert report["schema"] == "edgecompress.bench/1"
    assert report["runtime"] == "onnxruntime" and report["imgsz"] == IMGSZ and report["batch"] == 1
    assert report["target"]["name"] == "arm" and report["data"] == str(demo[1])
    assert report["sha256"] == hashlib.sha256(small_onnx.read_bytes()).hexdigest()
    assert report["file_mb"] == round(small_onnx.stat().st_size / 2**20, 3)
    for timing in (report["inference"], report["end_to_end"]):
        assert timing["runs"] == 3
        assert 0 < timing["p50_ms"] <= timing["p90_ms"] <= timing["p99_ms"]
        assert timing["throughput_fps"] == pytest.approx(1000 / timing["mean_ms"], rel=1e-3)  # mean is rounded
    assert report["memory"]["peak_rss_mb"] > report["memory"]["session_rss_mb"] > 0
    assert "peak_gpu_mb" not in report["memory"]  # onnxruntime on the CPU
    host = report["host"]
    assert host["cores"] >= 1 and host["cpu"] and host["runtime_version"] and report["device"]
    assert report["config"] == {"warmup": BenchConfig().warmup, "runs": 3, "max_seconds": BenchConfig().max_seconds,
                                "threads": 0}
    md = (out / "bench.md").read_text()
    assert f"| inference | 3 | {report['inference']['p50_ms']:.2f} |" in md
    assert f"| end to end | 3 | {report['end_to_end']['p50_ms']:.2f} |" in md


def test_bench_openvino_folder_without_data(tmp_path: Path, small_onnx: Path) -> None:
    from edgecompress.targets.openvino import to_ir

    folder = to_ir(small_onnx, tmp_path / "model_openvino_model", small_onnx.parent / "metadata.yaml")
    assert main(["bench", str(folder), "--runs", "2", "--threads", "1", "--out", str(tmp_path / "b")]) == 0
    report = json.loads((tmp_path / "b" / "bench.json").read_text())
    assert report["runtime"] == "openvino" and report["imgsz"] == IMGSZ and report["threads"] == 1
    assert report["end_to_end"] is None and report["target"] is None
    assert "pass --data YAML to time it" in (tmp_path / "b" / "bench.md").read_text()


def test_measure_refuses_a_size_the_artifact_does_not_take(small_onnx: Path) -> None:
    with pytest.raises(UserError, match=f"takes {IMGSZ}x{IMGSZ} input, not the 128 asked for"):
        measure(small_onnx, "onnxruntime", 128, BenchConfig(warmup=0, runs=1), [])


@pytest.mark.parametrize(("args", "message"), [
    (["missing.onnx"], "missing.onnx does not exist"),
    (["model.tflite"], "cannot tell the runtime of"),
    (["model.onnx", "--target", "jetsn"], "unknown target 'jetsn'"),
    (["model.onnx", "--data", "no-val.yaml"], "has no 'val' split"),
    (["model.onnx", "--runs", "0"], "bench.runs must be >= 1"),
])
def test_bench_errors_name_the_bad_value(tmp_path: Path, small_onnx: Path, capsys, args: list[str],
                                         message: str) -> None:
    (tmp_path / "model.tflite").write_bytes(b"")
    (tmp_path / "model.onnx").write_bytes(small_onnx.read_bytes())
    (tmp_path / "no-val.yaml").write_text("train: images\nnames: {0: a}\n")
    args = [str(tmp_path / a) if a.endswith((".onnx", ".tflite", ".yaml")) else a for a in args]
    assert main(["bench", *args, "--out", str(tmp_path / "b")]) == 2
    assert message in capsys.readouterr().err


def test_dataset_images_agree_with_ultralytics(demo: tuple[Path, Path]) -> None:
    from edgecompress.yolo.data import Dataset

    assert dataset_images(demo[1]) == Dataset.check(demo[1], 1).images("val")


def test_dataset_images_from_a_list_file_and_a_dataset_root(tmp_path: Path, demo: tuple[Path, Path]) -> None:
    root = demo[1].parent
    first, second = sorted((root / "images" / "val").iterdir())[:2]
    (tmp_path / "val.txt").write_text(f"{first}\n\n{second}\n")
    (tmp_path / "data.yaml").write_text(f"path: {tmp_path}\nval: val.txt\nnames: {{0: raccoon}}\n")
    assert dataset_images(tmp_path / "data.yaml") == [first, second]
    (tmp_path / "gone.yaml").write_text(f"path: {root}\nval: images/gone\n")
    with pytest.raises(UserError, match="its 'val' split: .*images/gone does not exist"):
        dataset_images(tmp_path / "gone.yaml")


NVPMODEL_CONF = """
< POWER_MODEL ID=0 NAME=MAXN >
CPU_ONLINE CORE_0 1
< POWER_MODEL ID=1 NAME=10W >
CPU_ONLINE CORE_0 1
< PM_CONFIG DEFAULT=1 >
"""


@pytest.mark.parametrize(("status", "mode"), [("pmode:0000 fmode:quiet", "MAXN"), ("pmode:0001", "10W"),
                                              ("pmode:0007", "mode 7"),
                                              (None, "10W (the default; current mode unreadable)")])
def test_jetson_power_mode_from_nvpmodel_files(status: str | None, mode: str) -> None:
    assert power_mode_from(NVPMODEL_CONF, status) == mode
