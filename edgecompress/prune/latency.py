"""Per-layer latency table measured in the target runtime (OpenVINO on the CPU), as in NVIDIA's HALP.

FLOPs are a poor proxy on small CPUs (uniform pruning at -35% FLOPs cut OpenVINO latency by only 17%), so
latency-aware pruning asks what each channel costs on the device: every convolution of the model is timed
alone, with its real input size, at full width and with half its output (or input) channels, in OpenVINO.
The slope (ms per channel) is what removing a channel from that layer saves. Layers of one shape are timed
once. Timing single layers is much less noisy than timing the whole model once per candidate.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class ConvShape:
    cin: int
    cout: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    groups: int
    hw: tuple[int, int]

    @property
    def depthwise(self) -> bool:
        return self.groups > 1 and self.groups == self.cin == self.cout

    def narrower(self, out: bool) -> ConvShape:
        """The same layer with half its output (out=True) or input channels."""
        if self.depthwise:
            half = max(1, self.cout // 2)
            return ConvShape(half, half, self.kernel, self.stride, half, self.hw)
        cin, cout = (self.cin, max(1, self.cout // 2)) if out else (max(1, self.cin // 2), self.cout)
        return ConvShape(cin, cout, self.kernel, self.stride, self.groups, self.hw)


@dataclass(frozen=True)
class Slopes:
    """Milliseconds saved per output / input channel removed from one layer."""

    out_ms: float
    in_ms: float


def conv_shapes(model: nn.Module, imgsz: int) -> dict[nn.Conv2d, ConvShape]:
    """Every Conv2d of `model` with the input size it sees at `imgsz` (one eval forward with hooks)."""
    shapes: dict[nn.Conv2d, ConvShape] = {}

    def hook(conv: nn.Conv2d, inputs: tuple[torch.Tensor, ...], _output: torch.Tensor) -> None:
        shapes[conv] = ConvShape(conv.in_channels, conv.out_channels, tuple(conv.kernel_size), tuple(conv.stride),
                                 conv.groups, tuple(inputs[0].shape[-2:]))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, imgsz, imgsz))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return shapes


def time_conv(shape: ConvShape, runs: int = 30, threads: int = 0) -> float:
    """Median milliseconds of one convolution of this shape, compiled and run by OpenVINO on the CPU."""
    import openvino as ov
    import openvino.opset13 as ops

    rng = np.random.default_rng(0)
    x = ops.parameter([1, shape.cin, *shape.hw], np.float32)
    pad = [k // 2 for k in shape.kernel]
    args = (list(shape.stride), pad, pad, [1, 1])
    if shape.groups == 1:
        w = rng.standard_normal((shape.cout, shape.cin, *shape.kernel), dtype=np.float32)
        y = ops.convolution(x, ops.constant(w), *args)
    else:
        g = shape.groups
        w = rng.standard_normal((g, shape.cout // g, shape.cin // g, *shape.kernel), dtype=np.float32)
        y = ops.group_convolution(x, ops.constant(w), *args)
    config: dict[str, object] = {"PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    request = ov.Core().compile_model(ov.Model([y], [x]), "CPU", config).create_infer_request()
    data = np.zeros((1, shape.cin, *shape.hw), np.float32)
    for _ in range(3):
        request.infer({0: data})
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        request.infer({0: data})
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def layer_table(model: nn.Module, imgsz: int, runs: int = 30) -> tuple[dict[nn.Conv2d, Slopes], float]:
    """Per-conv latency slopes, and the sum of all layers' latencies (the table's model latency, ms)."""
    cache: dict[ConvShape, float] = {}

    def timed(shape: ConvShape) -> float:
        if shape not in cache:
            cache[shape] = time_conv(shape, runs)
        return cache[shape]

    table, total = {}, 0.0
    for conv, shape in conv_shapes(model, imgsz).items():
        full = timed(shape)
        total += full
        out_removed = shape.cout - shape.narrower(out=True).cout
        out_ms = max(0.0, full - timed(shape.narrower(out=True))) / max(1, out_removed)
        if shape.depthwise:
            in_ms = 0.0  # its inputs are its outputs: the out slope already counts them
        else:
            in_removed = shape.cin - shape.narrower(out=False).cin
            in_ms = max(0.0, full - timed(shape.narrower(out=False))) / max(1, in_removed)
        table[conv] = Slopes(out_ms, in_ms)
    return table, total
