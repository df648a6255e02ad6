"""Per-layer sensitivity to INT8: how much signal each activation keeps when fake-quantized with its range.

Measured on the float model (numpy fake-quantization of its own activations, from the calibrated ranges), so
one pass ranks every layer without building a quantized model per layer. The accuracy-aware fallback keeps
the lowest-ranked layers in float.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from edgecompress.calibration.ranges import Ranges, quant_params


def fake_quant(x: np.ndarray, low: float, high: float, symmetric: bool) -> np.ndarray:
    """x quantized to 8 bits with the scheme's (scale, zero point) for [low, high], and back."""
    scale, zero = quant_params(low, high, symmetric)
    qmin, qmax = (-127, 127) if symmetric else (0, 255)
    return (np.clip(np.round(x / scale) + zero, qmin, qmax) - zero) * scale


def tensor_sqnr(model: Path, ranges: Ranges, inputs: Iterable[np.ndarray]) -> dict[str, float]:
    """Signal-to-quantization-noise ratio (dB) of every calibrated activation over `inputs`; lower is worse."""
    proto = onnx.load(str(model))
    outputs = {o.name for o in proto.graph.output}
    names = [n for n in ranges.tensors if n not in outputs and n not in {i.name for i in proto.graph.input}]
    proto.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    wanted = [o.name for o in session.get_outputs() if o.name in ranges.tensors]
    signal = dict.fromkeys(wanted, 0.0)
    noise = dict.fromkeys(wanted, 0.0)
    for x in inputs:
        for name, value in zip(wanted, session.run(wanted, {input_name: x})):
            value = value.astype(np.float64)
            signal[name] += float(np.sum(value**2))
            noise[name] += float(np.sum((value - fake_quant(value, *ranges.tensors[name], ranges.symmetric))**2))
    return {n: 10 * np.log10(signal[n] / noise[n]) if noise[n] > 0 else float("inf") for n in wanted}


def rank_nodes(model: Path, sqnr: dict[str, float], candidates: Sequence[str]) -> list[tuple[str, float]]:
    """`candidates` (node names) from most to least sensitive: by the worst SQNR among their activations."""
    wanted = set(candidates)
    scored = []
    for node in onnx.load(str(model), load_external_data=False).graph.node:
        if node.name in wanted:
            values = [sqnr[t] for t in [*node.input, *node.output] if t in sqnr]
            if values:
                scored.append((node.name, round(min(values), 2)))
    return sorted(scored, key=lambda item: item[1])
