"""The device package runs where a device has only numpy, OpenCV, pyyaml and onnxruntime: a real venv with exactly
those (and no torch, Ultralytics or onnx) imports it and runs `compress bench` end to end, on a plain artifact and on
one with the frame inside."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# what `pip install numpy opencv-python-headless pyyaml onnxruntime` puts in site-packages (cv2's shared libraries
# come in whichever OpenCV wheel installed them here)
LIGHT = ["numpy", "numpy.libs", "cv2", "opencv_python_headless.libs", "opencv_python.libs", "yaml", "_yaml",
         "onnxruntime", "flatbuffers", "packaging", "google"]


@pytest.fixture(scope="module")
def device_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv holding only the light packages (linked from this environment) and this checkout."""
    root = tmp_path_factory.mktemp("device")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")], check=True)
    python = root / "venv" / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    ours = Path(sysconfig.get_paths()["purelib"])
    for name in LIGHT:
        if (ours / name).exists():
            (site / name).symlink_to(ours / name)
    (site / "checkout.pth").write_text(str(ROOT) + "\n")
    return python


def test_the_light_venv_has_no_heavy_package(device_python: Path) -> None:
    for heavy in ("torch", "ultralytics", "onnx", "openvino", "matplotlib"):
        proc = subprocess.run([str(device_python), "-c", f"import {heavy}"], capture_output=True, text=True)
        assert proc.returncode != 0 and "ModuleNotFoundError" in proc.stderr, heavy


def test_device_package_imports_and_benches_there(device_python: Path, tmp_path: Path, demo) -> None:
    from edgecompress.targets import get_target
    from edgecompress.targets.frame import FrameConfig
    from edgecompress.yolo.model import export_onnx, load_model

    onnx_path = export_onnx(load_model(demo[0]), 96, tmp_path / "export", "model")
    check = ("import sys, edgecompress.device, edgecompress.device.bench, edgecompress.targets; "
             "print(sorted(m for m in ('torch', 'ultralytics', 'onnx') if m in sys.modules))")
    proc = subprocess.run([str(device_python), "-c", check], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stderr
    framed = get_target("arm").wrap(onnx_path, FrameConfig(input="frame"), tmp_path / "frame")
    for artifact, takes in ((onnx_path, "tensor"), (framed, "frame")):  # the same end-to-end path, light
        out = tmp_path / f"bench-{takes}"
        proc = subprocess.run([str(device_python), "-m", "edgecompress.cli", "bench", str(artifact), "--data",
                               str(demo[1]), "--runs", "3", "--target", "arm", "--out", str(out)],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        report = json.loads((out / "bench.json").read_text())
        assert report["runtime"] == "onnxruntime" and report["end_to_end"]["runs"] == 3
        assert report["takes"] == takes and report["imgsz"] == 96 and report["nms_inside"] == (takes == "frame")
