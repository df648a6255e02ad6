"""Activation ranges for INT8: what every float tensor of an ONNX model holds over the calibration images
(`collect`: its min/max and a histogram), and the calibration methods that turn that into a [low, high] range.

The statistics are collected once, in two passes (min/max, then a histogram over each tensor's full range), and
every method reads the same statistics, so trying every method costs one collection. A new method is one class
here and its row. The result is plain data (tensor name -> [low, high]) that is saved, inspected and handed to the
quantizer separately from calibration, as Optimum does.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgecompress import progress
from edgecompress.config import Registry

if TYPE_CHECKING:
    import onnx
    from onnxruntime.quantization.calibrate import TensorsData

HISTOGRAM_BINS = 2048  # as TensorRT's calibrators
# The KL search loops in Python over every candidate threshold: it runs on the histogram merged to 512 bins (down to
# TensorRT's 128 quantized bins); at 2048 bins it took over 10 minutes for one YOLO model.
ENTROPY_BINS = 512
QUANTIZED_BINS = 128


@dataclass(frozen=True)
class TensorStats:
    """One tensor over the calibration images: its extremes, and a histogram of HISTOGRAM_BINS bins over
    [-top, top] (top = the largest magnitude), or None when only the extremes were collected."""

    low: float
    high: float
    hist: np.ndarray | None

    @property
    def top(self) -> float:
        return max(abs(self.low), abs(self.high)) or 1.0

    @property
    def edges(self) -> np.ndarray:
        return np.linspace(-self.top, self.top, HISTOGRAM_BINS + 1)


@dataclass(frozen=True)
class Statistics:
    """The statistics of every calibrated tensor of one model, over `images` inputs."""

    images: int
    tensors: dict[str, TensorStats]

    @property
    def histograms(self) -> bool:
        return all(s.hist is not None for s in self.tensors.values())


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
        from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData

        return TensorsData(CalibrationMethod.MinMax, {
            name: TensorData(lowest=np.array(lo, np.float32), highest=np.array(hi, np.float32))
            for name, (lo, hi) in self.tensors.items()
        })


class Method:
    """A calibration method: one tensor's range from its statistics. `histogram`: it needs the histogram pass."""

    histogram = True

    def range(self, stats: TensorStats, symmetric: bool, percentile: float) -> tuple[float, float]:
        raise NotImplementedError


METHODS: Registry[Method] = Registry("calibration method")


@METHODS.register("minmax")
class MinMax(Method):
    """The observed extremes: nothing clipped, so one outlier stretches the grid."""

    histogram = False

    def range(self, stats: TensorStats, symmetric: bool, percentile: float) -> tuple[float, float]:
        return stats.low, stats.high


@METHODS.register("percentile")
class Percentile(Method):
    """Clip the rarest values: keep `percentile` percent of |x| (symmetric), or cut (100 - percentile) / 2 percent
    from each tail (asymmetric), as onnxruntime's percentile calibrator does."""

    def range(self, stats: TensorStats, symmetric: bool, percentile: float) -> tuple[float, float]:
        hist, edges = stats.hist, stats.edges
        if symmetric:
            half = HISTOGRAM_BINS // 2
            magnitude = hist[half:] + hist[:half][::-1]  # |x| in HISTOGRAM_BINS / 2 bins over [0, top]
            cdf = np.cumsum(magnitude) / max(magnitude.sum(), 1)
            top = float(edges[half + min(np.searchsorted(cdf, percentile / 100.0) + 1, half)])
            return max(stats.low, -top), min(stats.high, top)
        cdf = np.cumsum(hist) / max(hist.sum(), 1)
        cut = (100.0 - percentile) / 200.0
        low = float(edges[np.searchsorted(cdf, cut)])
        high = float(edges[min(np.searchsorted(cdf, 1.0 - cut) + 1, HISTOGRAM_BINS)])
        return max(stats.low, low), min(stats.high, high)


@METHODS.register("entropy")
class Entropy(Method):
    """TensorRT's KL-divergence calibration: the symmetric clip whose 128-level quantization keeps the
    distribution closest to the original (onnxruntime's search, on the histogram merged to ENTROPY_BINS bins)."""

    def range(self, stats: TensorStats, symmetric: bool, percentile: float) -> tuple[float, float]:
        from onnxruntime.quantization.calibrate import HistogramCollector

        merged = stats.hist.reshape(ENTROPY_BINS, -1).sum(1)
        edges = np.linspace(-stats.top, stats.top, ENTROPY_BINS + 1, dtype=np.float32)
        search = HistogramCollector("entropy", symmetric, ENTROPY_BINS, QUANTIZED_BINS, percentile, "same")
        low, high = search.get_entropy_threshold((merged, edges, np.float32(stats.low), np.float32(stats.high)),
                                                 QUANTIZED_BINS)
        return float(low), float(high)


@METHODS.register("mse")
class MSE(Method):
    """The clip whose INT8 quantization has the least mean squared error over the histogram (`mse_range`)."""

    def range(self, stats: TensorStats, symmetric: bool, percentile: float) -> tuple[float, float]:
        return mse_range(stats.hist, stats.edges, stats.low, stats.high, symmetric)


def collect(model: Path, inputs: Collection[np.ndarray], histograms: bool = True) -> Statistics:
    """The statistics of every float tensor of `model` over `inputs` (preprocessed batches; iterated twice when
    `histograms`): one pass for the extremes, a second for histograms over [-top, top]."""
    import onnx
    import onnxruntime as ort

    proto = onnx.shape_inference.infer_shapes(onnx.load(str(model)))
    names = calibrated_tensors(proto)
    outputs = {o.name for o in proto.graph.output}
    proto.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
                              for n in names if n not in outputs)
    options = ort.SessionOptions()
    # as onnxruntime's calibrators: the graph as exported, unfused, so values are the ones the quantizer sees
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    wanted = [n for n in names if n != input_name]

    passes = 2 if histograms else 1

    def values() -> Iterable[dict[str, np.ndarray]]:
        for x in inputs:
            yield dict(zip(wanted, session.run(wanted, {input_name: x}))) | {input_name: x}
            images_done.advance()

    low = dict.fromkeys(names, np.inf)
    high = dict.fromkeys(names, -np.inf)
    images = 0
    with progress.task("calibration", total=passes * len(inputs), unit="image") as images_done:
        for tensors in values():
            images += 1
            for name, value in tensors.items():
                low[name] = min(low[name], float(value.min()))
                high[name] = max(high[name], float(value.max()))
        stats = {n: TensorStats(low[n], high[n], None) for n in names}
        if histograms:
            hists = {n: np.zeros(HISTOGRAM_BINS, np.int64) for n in names}
            for tensors in values():
                for name, value in tensors.items():
                    hists[name] += np.histogram(value, bins=HISTOGRAM_BINS,
                                                range=(-stats[name].top, stats[name].top))[0]
            stats = {n: dataclasses.replace(s, hist=hists[n]) for n, s in stats.items()}
    return Statistics(images, stats)


def calibrated_tensors(model: onnx.ModelProto) -> list[str]:
    """The float tensors that node inputs and outputs carry, weights excluded: what onnxruntime's calibrators and
    quantizers give a range to (the model must have been through shape inference)."""
    import onnx

    infos = {vi.name: vi for vi in [*model.graph.value_info, *model.graph.output, *model.graph.input]}
    weights = {init.name for init in model.graph.initializer}
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
    found: dict[str, None] = {}
    for node in model.graph.node:
        for name in [*node.input, *node.output]:
            info = infos.get(name)
            if info is not None and name not in weights and info.type.HasField("tensor_type") \
                    and info.type.tensor_type.elem_type in floats:
                found[name] = None
    return list(found)


def estimate_ranges(stats: Statistics, method: str, symmetric: bool = False, percentile: float = 99.999) -> Ranges:
    """Every tensor's range by `method`; `symmetric` gives ranges centred on 0 (low = -high), as a symmetric INT8
    scheme uses them."""
    chosen = METHODS[method]
    if chosen.histogram and not stats.histograms:
        raise ValueError(f"calibration method {method!r} needs the statistics' histograms; collect them")
    tensors = {name: chosen.range(s, symmetric, percentile) for name, s in stats.tensors.items()}
    if symmetric:
        tensors = {k: (-max(abs(lo), abs(hi)), max(abs(lo), abs(hi))) for k, (lo, hi) in tensors.items()}
    return Ranges(method, symmetric, percentile if method == "percentile" else None, stats.images, tensors)


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
