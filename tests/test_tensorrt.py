"""TensorRT engines built from the pipeline's strongly typed QDQ ONNX, loaded by Ultralytics and timed by
`compress bench`.

Runs only where TensorRT is usable (it imports and a builder can be created: an NVIDIA GPU or a Jetson); anywhere
else it is skipped with the reason, never faked.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from edgecompress.device.tensorrt import load_engine, read_engine, unusable_reason
from edgecompress.targets import TARGETS
from edgecompress.targets.tensorrt import prepare_jetson

pytestmark = pytest.mark.skipif(unusable_reason() is not None, reason=str(unusable_reason()))

IMGSZ = 96


def test_engines_from_the_qdq_onnx_load_in_ultralytics_and_bench(tmp_path: Path, demo: tuple[Path, Path]) -> None:
    import onnx
    from ultralytics import YOLO

    from conftest import evaluator

    from edgecompress.cli import main
    from edgecompress.device.runtime import RUNTIMES
    from edgecompress.quantize.config import QuantConfig
    from edgecompress.quantize.ptq import quantize
    from edgecompress.targets import tensorrt_rules
    from edgecompress.yolo.model import Evaluator, export_onnx, load_model

    checkpoint, data = demo
    target = TARGETS["jetson-agx-orin" if Path("/etc/nv_tegra_release").exists() else "jetson-orin-nano"]
    on_gpu = Evaluator(evaluator(data, IMGSZ).dataset, IMGSZ, device="0")

    def map50_95(artifact: Path) -> float:
        return on_gpu(artifact, tmp_path / "val")["map50_95"]

    fp32 = export_onnx(load_model(checkpoint), IMGSZ, tmp_path / "export", "model")
    qdq, _ = quantize(fp32, fp32, QuantConfig(mode="ptq", calibration_images=16, max_float_layers=0), target,
                      on_gpu, tmp_path / "quantize", map50_95(fp32))
    tensorrt_rules.check(onnx.load(str(qdq)))
    metadata = yaml.safe_load((fp32.parent / "metadata.yaml").read_text())

    info = prepare_jetson(qdq, metadata, target, tmp_path / "jetson")
    folder = tmp_path / "jetson"
    assert info["engine"] == "model.engine" and len(info["engines"]) == (2 if target.dla_cores else 1)
    assert (folder / "trtexec.sh").is_file() and (folder / "timing.cache").stat().st_size > 0
    for built in info["engines"]:
        header, plan = read_engine(folder / built["engine"])
        assert plan == (folder / built["plan"]).read_bytes() and header["names"] == metadata["names"]
        assert built["typing"].startswith("strongly typed")

    engine = folder / info["engine"]
    results = YOLO(str(engine), task="detect").predict(sorted((data.parent / "images" / "val").iterdir())[0],
                                                       imgsz=IMGSZ, verbose=False)
    assert results[0].boxes is not None
    assert map50_95(engine) >= map50_95(qdq) - 0.05  # same INT8 graph, TensorRT's kernels instead of onnxruntime's

    x = np.random.default_rng(0).random((1, 3, IMGSZ, IMGSZ), dtype=np.float32)
    reference = RUNTIMES["onnxruntime"].load(fp32).infer(x)
    assert [o.shape for o in load_engine(folder / info["engines"][0]["plan"]).infer(x)] == \
        [o.shape for o in reference]

    assert main(["bench", str(engine), "--target", target.name, "--data", str(data), "--runs", "20",
                 "--out", str(tmp_path / "bench")]) == 0
    report = json.loads((tmp_path / "bench" / "bench.json").read_text())
    assert report["runtime"] == "tensorrt" and report["imgsz"] == IMGSZ
    assert report["memory"]["peak_gpu_mb"] > 0 and report["end_to_end"]["runs"] == 20
