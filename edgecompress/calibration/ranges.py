"""Activation range estimation on an ONNX model: minmax, percentile, entropy (KL) and MSE.

The collection (running the model with every intermediate tensor as an output, min/max reductions or
histograms) and the minmax, percentile and entropy thresholds are onnxruntime's calibrators; MSE is written
here on top of the same histograms. The result is plain data (tensor name -> [low, high]) that is saved as JSON,
inspected, cached, and handed to the quantizer separately from calibration, as Optimum does.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
from onnxruntime.quantization.calibrate import (
    CalibraterBase,
    CalibrationDataReader,
    CalibrationMethod,
    HistogramCalibrater,
    HistogramCollector,
    TensorData,
    TensorsData,
    create_calibrator,
)

Method = Literal["minmax", "percentile", "entropy", "mse"]
METHODS: tuple[str, ...] = ("minmax", "percentile", "entropy", "mse")
HISTOGRAM_BINS = 2048  # as TensorRT's calibrators
# onnxruntime's KL search loops in Python over every candidate threshold: at 2048 bins it took over 10 minutes
# for one YOLO model here, so entropy searches 512 bins (down to TensorRT's 128 quantized bins).
ENTROPY_BINS = 512
QUANTIZED_BINS = 128
CHUNK = 8  # images per collection pass: onnxruntime keeps every intermediate tensor of a pass in memory


@dataclass(frozen=True)
class Ranges:
    """Calibrated [low, high] of every float tensor of one model, and how they were measured."""

    method: str
    symmetric: bool
    percentile: float | None
    images: int
    tensors: dict[str, tuple[float, float]]

    def save(self, path: Path) -> None:
        data = {"method": self.method, "symmetric": self.symmetric, "percentile": self.percentile,
                "images": self.images, "tensors": {k: list(v) for k, v in self.tensors.items()}}
        Path(path).write_text(json.dumps(data, indent=1))

    @classmethod
    def load(cls, path: Path) -> Ranges:
        data = json.loads(Path(path).read_text())
        return cls(data["method"], data["symmetric"], data["percentile"], data["images"],
                   {k: (float(lo), float(hi)) for k, (lo, hi) in data["tensors"].items()})

    def unified(self, groups: Iterable[Collection[str]]) -> Ranges:
        """These ranges with each group's tensors given the group's widest range (one scale for all of them)."""
        tensors = dict(self.tensors)
        for group in groups:
            members = [t for t in group if t in tensors]
            if members:
                low = min(tensors[t][0] for t in members)
                high = max(tensors[t][1] for t in members)
                tensors.update({t: (low, high) for t in members})
        return dataclasses.replace(self, tensors=tensors)

    def tensors_data(self) -> TensorsData:
        """The ranges in the form onnxruntime's quantizers take."""
        return TensorsData(CalibrationMethod.MinMax, {
            name: TensorData(lowest=np.array(lo, np.float32), highest=np.array(hi, np.float32))
            for name, (lo, hi) in self.tensors.items()
        })


class _Reader(CalibrationDataReader):
    def __init__(self, input_name: str, inputs: Iterable[np.ndarray]):
        self._feeds = ({input_name: x} for x in inputs)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def estimate_ranges(model: Path, inputs: Collection[np.ndarray], method: Method, workdir: Path,
                    symmetric: bool = False, percentile: float = 99.999) -> Ranges:
    """Run `model` on `inputs` (preprocessed batches, iterated twice by the histogram methods) and estimate every
    float tensor's range with `method`.

    `symmetric` gives ranges centred on 0 (low = -high), as a symmetric INT8 scheme uses them.
    """
    if method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r}; choose one of {', '.join(METHODS)}")
    workdir.mkdir(parents=True, exist_ok=True)
    augmented = str(workdir / f"augmented_{method}.onnx")
    if method == "mse":
        # onnxruntime's entropy collection: a signed histogram of HISTOGRAM_BINS bins over [-|max|, |max|].
        calibrator: CalibraterBase = HistogramCalibrater(str(model), augmented_model_path=augmented,
                                                         method="entropy", num_bins=HISTOGRAM_BINS)
        calibrator.augment_graph()
        calibrator.create_inference_session()
    else:
        options = {"symmetric": symmetric, "percentile": percentile,
                   "num_bins": ENTROPY_BINS if method == "entropy" else HISTOGRAM_BINS,
                   "num_quantized_bins": QUANTIZED_BINS}
        kind = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                "entropy": CalibrationMethod.Entropy}[method]
        calibrator = create_calibrator(str(model), augmented_model_path=augmented, calibrate_method=kind,
                                       extra_options=options)
    input_name = onnx.load(str(model), load_external_data=False).graph.input[0].name
    if method != "minmax":
        extremes = estimate_ranges(model, inputs, "minmax", workdir)
        calibrator.collector = _seeded_collector(calibrator, extremes, absolute=method == "percentile" and symmetric)
    images = 0
    for chunk in _chunks(inputs, CHUNK):
        images += len(chunk)
        calibrator.collect_data(_Reader(input_name, chunk))
    if method == "mse":
        tensors = {name: mse_range(hist, edges, np.asarray(lo).item(), np.asarray(hi).item(), symmetric)
                   for name, (hist, edges, lo, hi, _) in calibrator.collector.histogram_dict.items()}
    else:
        tensors = {name: (np.asarray(td.range_value[0]).item(), np.asarray(td.range_value[1]).item())
                   for name, td in calibrator.compute_data().items()}
    Path(augmented).unlink(missing_ok=True)
    if symmetric:
        tensors = {k: (-max(abs(lo), abs(hi)), max(abs(lo), abs(hi))) for k, (lo, hi) in tensors.items()}
    return Ranges(method, symmetric, percentile if method == "percentile" else None, images, tensors)


def _seeded_collector(calibrator: CalibraterBase, extremes: Ranges, absolute: bool) -> HistogramCollector:
    """onnxruntime's histogram collector, its histograms laid out once over each tensor's full range.

    Left alone, the collector sizes a histogram on the first chunk and, when a later chunk goes wider, adds bins
    of the first width: the bin count grows without bound (a 100x outlier made 100,000 bins and the entropy
    search never ended). A first min/max pass fixes the range, so every tensor keeps its configured bins.
    """
    collector = HistogramCollector(calibrator.method, calibrator.symmetric, calibrator.num_bins,
                                   calibrator.num_quantized_bins, calibrator.percentile, calibrator.scenario)
    for name, (lo, hi) in extremes.tensors.items():
        top = np.float32(max(abs(lo), abs(hi)) or 1.0)
        empty = np.zeros(calibrator.num_bins, np.int64)
        # seeded min/max start inverted so the first real values replace them
        start = (np.float32(np.inf), np.float32(-np.inf))
        if absolute:
            collector.histogram_dict[name] = (empty, np.linspace(0, top, calibrator.num_bins + 1, dtype=np.float32),
                                              *start)
        else:
            collector.histogram_dict[name] = (empty, np.linspace(-top, top, calibrator.num_bins + 1,
                                                                 dtype=np.float32), *start, top)
    return collector


def _chunks(inputs: Iterable[np.ndarray], size: int) -> Iterator[list[np.ndarray]]:
    chunk: list[np.ndarray] = []
    for x in inputs:
        chunk.append(x)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def quant_params(low: float, high: float, symmetric: bool, bits: int = 8) -> tuple[float, int]:
    """(scale, zero point) of a linear scheme for [low, high]: signed and zero-centred when symmetric, else uint.

    The range always includes 0 so that zero padding is exact, as every INT8 runtime requires.
    """
    low, high = min(low, 0.0), max(high, 0.0)
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        return (max(-low, high) / qmax or 1.0), 0
    qmax = 2**bits - 1
    scale = (high - low) / qmax or 1.0
    return scale, int(round(-low / scale))


def mse_range(hist: np.ndarray, edges: np.ndarray, low: float, high: float, symmetric: bool,
              bits: int = 8) -> tuple[float, float]:
    """The clipping range whose INT8 quantization has the least mean squared error over a histogram.

    Candidates clip the observed [low, high] at every bin edge of the positive half, the search TensorRT's
    MSE calibrator makes; the error of each is measured on the bin centres, clipping and rounding together.
    """
    centres = (edges[:-1] + edges[1:]) / 2
    weights = hist.astype(np.float64)
    best, best_err = (low, high), np.inf
    for threshold in edges[edges > 0]:
        lo, hi = max(low, -float(threshold)), min(high, float(threshold))
        scale, zero = quant_params(lo, hi, symmetric, bits)
        qmin, qmax = (-(2 ** (bits - 1)) + 1, 2 ** (bits - 1) - 1) if symmetric else (0, 2**bits - 1)
        restored = (np.clip(np.round(centres / scale) + zero, qmin, qmax) - zero) * scale
        err = float(np.dot(weights, (centres - restored) ** 2))
        if err < best_err:
            best, best_err = (lo, hi), err
    return best
