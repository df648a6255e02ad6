"""QAT on the real demo detector, tiny: fake-quantized training, then the target's INT8 artifact in its runtime."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import evaluator

from edgecompress.prune.config import PruneConfig
from edgecompress.prune.pruner import prune
from edgecompress.quantize.config import QATConfig, QuantConfig
from edgecompress.quantize.qat import qat, qat_export, qat_train
from edgecompress.targets import TARGETS, tensorrt_rules
from edgecompress.yolo.model import load_model

pytest.importorskip("modelopt", reason="QAT needs nvidia-modelopt (the `full` extra)")

IMGSZ = 64
CONFIG = QuantConfig("qat", qat=QATConfig(epochs=1, batch=4, calibration_batches=2))


def _runs_and_predicts(artifact: Path, image: Path) -> onnx.ModelProto:
    """The artifact runs in onnxruntime and Ultralytics predicts with it; returns its graph."""
    from ultralytics import YOLO

    session = ort.InferenceSession(str(artifact), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"images": np.random.default_rng(0).random((1, 3, IMGSZ, IMGSZ), np.float32)})
    assert np.isfinite(out).all()
    YOLO(str(artifact), task="detect").predict(str(image), imgsz=IMGSZ, device="cpu", verbose=False)
    return onnx.load(str(artifact))


def _first_image(data: Path) -> Path:
    return next((data.parent / "images" / "val").iterdir())


def test_qat_onnx_target_requantizes_trained_weights_in_uint8(demo, tmp_path):
    artifact, info = qat(load_model(demo[0]), CONFIG, TARGETS["onnx"], evaluator(demo[1], IMGSZ), tmp_path)
    graph = _runs_and_predicts(artifact, _first_image(demo[1])).graph
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in graph.node}
    zero_points = {t.data_type for t in graph.initializer if t.name.endswith("_zero_point")}
    assert onnx.TensorProto.UINT8 in zero_points  # onnxruntime's fast kernels: uint8 activations
    assert info["mode"] == "qat" and info["epochs"] == 1 and info["float_layers"] == []
    assert info["scheme"]["activations"] == "uint8 asymmetric"
    # the trained weights' ranges: the calibration method the same measurement as PTQ's found the most accurate
    assert info["scheme"]["ranges"].startswith(f"{info['method']} over ")
    assert info["methods"][info["method"]]["map50_95"] == max(m["map50_95"] for m in info["methods"].values())


def test_qat_after_pruning_with_distillation_gives_a_tensorrt_valid_jetson_model(demo, tmp_path):
    model = load_model(demo[0])
    widths = sum(p.numel() for p in model.parameters())
    pruned, _ = prune(model, PruneConfig(flops=0.2), evaluator(demo[1], IMGSZ), tmp_path / "prune")
    artifact, info = qat(pruned, CONFIG, TARGETS["jetson-orin-nano"], evaluator(demo[1], IMGSZ), tmp_path / "qat")
    assert info["epochs_log"][0]["train/dis_loss"] > 0  # distilled from the float model, the default
    model = _runs_and_predicts(artifact, _first_image(demo[1]))
    assert tensorrt_rules.violations(model) == []
    weights = sum(int(np.prod(t.dims)) for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8)
    assert weights < 0.95 * widths  # the pruned int8 weights survived training and export: nothing grew back
    assert info["quantizer"] == "qdq" and info["head_decode_float"]


def test_qat_x86_target_without_distillation_gives_an_openvino_model_by_either_quantizer(demo, tmp_path):
    from ultralytics import YOLO

    plain = replace(CONFIG, qat=replace(CONFIG.qat, distill=0.0))
    trained, trained_info = qat_train(load_model(demo[0]), plain, evaluator(demo[1], IMGSZ), tmp_path / "train")
    assert "train/dis_loss" not in trained_info["epochs_log"][0]
    # `auto` re-quantizes the trained weights as our QDQ ONNX, which OpenVINO reads; `nncf` has NNCF quantize them
    for quantizer, fmt in (("auto", "QDQ"), ("nncf", "OpenVINO FakeQuantize")):
        config = replace(plain, quantizer=quantizer)
        artifact, info = qat_export(trained, config, TARGETS["x86"], evaluator(demo[1], IMGSZ), tmp_path / quantizer)
        assert artifact.name.endswith("_openvino_model") and (artifact / "metadata.yaml").is_file()
        assert info["scheme"]["format"] == fmt
        YOLO(str(artifact), task="detect").predict(str(_first_image(demo[1])), imgsz=IMGSZ, device="cpu",
                                                   verbose=False)
