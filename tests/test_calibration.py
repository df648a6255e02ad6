"""Calibration: data selection and preprocessing, each range method and scheme against hand-computed scales."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from tiny_models import detector, ramp_inputs

from edgecompress.calibration.data import preprocess
from edgecompress.calibration.ranges import Ranges, collect, estimate_ranges, mse_range, quant_params
from edgecompress.calibration.sensitivity import lost_signal
from edgecompress.device.images import letterbox
from edgecompress.quantize.qdq import quantize_qdq
from edgecompress.quantize.scheme import Scheme
from edgecompress.yolo.data import Dataset

DEMO = Path(__file__).resolve().parents[1] / "edgecompress" / "demo" / "raccoon" / "data.yaml"


def calibrate(model: Path, inputs: list[np.ndarray], method: str, **options: object) -> Ranges:
    """Collect the model's statistics over `inputs`, then the method's ranges."""
    return estimate_ranges(collect(model, inputs), method, **options)


def qdq_params(model_path: Path, tensor: str) -> tuple[np.ndarray, np.ndarray]:
    """Scale and zero point of the QuantizeLinear that quantizes `tensor`."""
    model = onnx.load(str(model_path))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    node = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == tensor)
    return inits[node.input[1]], inits[node.input[2]]


def weight_scales(model_path: Path, weight: str) -> np.ndarray:
    model = onnx.load(str(model_path))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    node = next(n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0].startswith(weight))
    return inits[node.input[1]]


def test_minmax_asymmetric_uint8_scales(tmp_path):
    model = detector(tmp_path / "m.onnx")
    ranges = calibrate(model, ramp_inputs(), "minmax")
    assert ranges.tensors["images"] == pytest.approx((-1.0, 3.0))
    out = quantize_qdq(model, ranges, tmp_path / "q.onnx", Scheme(False, True), ["/model.1/Sigmoid"])
    scale, zero = qdq_params(out, "images")
    assert float(scale) == pytest.approx(4.0 / 255)  # (3 - -1) / 255
    assert int(zero) == 64 and zero.dtype == np.uint8  # round(1 / (4/255)) = round(63.75)


def test_minmax_symmetric_int8_scales_and_per_channel_weights(tmp_path):
    model = detector(tmp_path / "m.onnx")
    ranges = calibrate(model, ramp_inputs(), "minmax", symmetric=True)
    assert ranges.tensors["images"] == pytest.approx((-3.0, 3.0))
    out = quantize_qdq(model, ranges, tmp_path / "q.onnx", Scheme(True, True, "tensorrt"), ["/model.1/Sigmoid"])
    scale, zero = qdq_params(out, "images")
    assert float(scale) == pytest.approx(3.0 / 127) and int(zero) == 0 and zero.dtype == np.int8
    assert weight_scales(out, "w0") == pytest.approx([0.5 / 127, 2.0 / 127])  # max |w| of each output channel
    assert weight_scales(out, "w1") == pytest.approx([1.0 / 127, 1.0 / 127])


def test_per_tensor_weights_take_the_largest_channel(tmp_path):
    model = detector(tmp_path / "m.onnx")
    ranges = calibrate(model, ramp_inputs(), "minmax")
    out = quantize_qdq(model, ranges, tmp_path / "q.onnx", Scheme(False, False), ["/model.1/Sigmoid"])
    assert weight_scales(out, "w0") == pytest.approx(2.0 / 127)


def outlier_inputs() -> list[np.ndarray]:
    """2047 values evenly in [0, 1) and one outlier at 100: clipping methods must cut the outlier."""
    values = np.append(np.arange(2047, dtype=np.float32) / 2047, np.float32(100.0))
    return [values[i * 64:(i + 1) * 64].reshape(1, 1, 8, 8) for i in range(32)]


def test_percentile_cuts_the_outlier_within_one_bin(tmp_path):
    model = detector(tmp_path / "m.onnx")
    ranges = calibrate(model, outlier_inputs(), "percentile", percentile=99.8)
    low, high = ranges.tensors["images"]
    # 0.1% cut each side: the high cut lies at the 99.9% quantile, ~0.999, on a histogram of 2048 bins over
    # [-100, 100] (bin width 200/2048 = 0.098): the result is that bin's edge.
    bin_width = 200 / 2048
    assert low == pytest.approx(0.0, abs=bin_width) and high == pytest.approx(0.999, abs=bin_width)
    assert ranges.percentile == 99.8


def test_entropy_clips_the_outlier(tmp_path):
    model = detector(tmp_path / "m.onnx")
    low, high = calibrate(model, outlier_inputs(), "entropy").tensors["images"]
    # 512 bins over [-100, 100]; the KL search starts at 128 quantized bins (threshold 64 * 200/512 = 25) and
    # must clip the lone outlier rather than keep the full range
    assert low == pytest.approx(0.0) and 25.0 <= high < 100.0


def test_mse_range_against_hand_computed_errors():
    # Bins of width 1 over [-4, 4]; 10^6 values at 0.5 and one at 3.5 (observed range [0, 3.6]).
    edges = np.linspace(-4, 4, 9).astype(np.float32)
    hist = np.zeros(8)
    hist[4], hist[7] = 1e6, 1
    # Squared error by hand, uint8 over [0, t]: t=1: 10^6*(128/255-0.5)^2 + 2.5^2 = 3.84 + 6.25;
    # t=2: 3.84 + 1.5^2 = 6.09; t=3: 10^6*(0.5-42*3/255)^2 + 0.25 = 34.85; t=3.6: 34.6. Best: t = 2.
    assert mse_range(hist, edges, 0.0, 3.6, symmetric=False) == (0.0, 2.0)


def test_mse_calibration_runs_on_a_model(tmp_path):
    model = detector(tmp_path / "m.onnx")
    ranges = calibrate(model, outlier_inputs(), "mse")
    low, high = ranges.tensors["images"]
    # Unlike percentile and entropy, MSE keeps this outlier: over [0, 100] the 2047 bulk values lose about
    # (100/255)^2 / 12 each (26 in all), while clipping near 1 costs the outlier 99^2 = 9801.
    assert low == pytest.approx(0.0) and high > 99.0


def test_quant_params_by_hand():
    assert quant_params(-1.0, 3.0, symmetric=False) == (pytest.approx(4 / 255), 64)
    assert quant_params(-1.0, 3.0, symmetric=True) == (pytest.approx(3 / 127), 0)
    assert quant_params(0.5, 2.0, symmetric=False) == (pytest.approx(2 / 255), 0)  # the range must hold 0


def test_ranges_roundtrip_as_json(tmp_path):
    ranges = Ranges("percentile", False, 99.9, 12, {"images": (-1.0, 3.0), "a": (0.0, 6.5)})
    ranges.save(tmp_path / "r.json")
    assert Ranges.load(tmp_path / "r.json") == ranges


def test_calibration_images_warn_below_300_and_say_why(caplog):
    dataset = Dataset.check(DEMO, 1)
    with caplog.at_level(logging.WARNING):
        images = dataset.calibration_images(300)
    assert images and all(p.suffix == ".jpg" and "train" in p.parts for p in images)
    assert "fewer than 300" in caplog.text and "rare extremes" in caplog.text
    assert dataset.calibration_images(3, seed=1) == dataset.calibration_images(3, seed=1)
    assert len(dataset.calibration_images(3)) == 3


def test_letterbox_matches_ultralytics():
    from ultralytics.data.augment import LetterBox

    image = (np.arange(300 * 500 * 3) % 251).astype(np.uint8).reshape(300, 500, 3)
    expected = LetterBox((640, 640), auto=False)(image=image)
    assert np.array_equal(letterbox(image, 640), expected)


def test_preprocess_is_rgb_nchw_float_in_0_1():
    path = Dataset.check(DEMO, 1).calibration_images(1)[0]
    x = preprocess(path, 320)
    assert x.shape == (1, 3, 320, 320) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0


def test_the_layer_reading_the_coarsest_activation_ranks_first(tmp_path):
    model = detector(tmp_path / "m.onnx")
    ranges = calibrate(model, ramp_inputs(), "minmax")
    # Widen one activation's range 100x: its 8-bit steps become 100x coarser. The head conv reads it ("b"): in the
    # quantized model, the Q/DQ in front of it destroys far more signal than the one in front of the first conv.
    low, high = ranges.tensors["b"]
    wide = Ranges(ranges.method, False, None, ranges.images, {**ranges.tensors, "b": (low, high * 100)})
    quantized = quantize_qdq(model, wide, tmp_path / "q.onnx", Scheme(False, True), ["/model.1/Sigmoid"])
    ranked = lost_signal(quantized, ramp_inputs(), ["/model.0/conv/Conv", "/model.1/cv2.0/cv2.0.0/Conv"])
    assert [name for name, _ in ranked] == ["/model.1/cv2.0/cv2.0.0/Conv", "/model.0/conv/Conv"]
    assert ranked[1][1] - ranked[0][1] > 20  # dB: 100x coarser steps are 40 dB of SQNR
