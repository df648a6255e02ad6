"""Which layers INT8 damages most, measured in the quantized model itself, as onnxruntime's qdq_loss_debug does.

The QDQ model runs on real inputs; at every quantized activation, the value before its QuantizeLinear and after
its DequantizeLinear are compared: the signal-to-quantization-noise ratio (SQNR, dB) of that pair, on the data
that really reaches it (upstream layers quantized too, the deployed ranges, shared scales and all). A layer is as
damaged as the worst quantized activation it reads; keeping it in float removes the Q/DQ in front of it, so the
accuracy-aware fallback keeps the lowest first.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import onnx


def lost_signal(quantized: Path, inputs: Iterable[np.ndarray], candidates: Sequence[str]) -> list[tuple[str, float]]:
    """The `candidates` (node names) that read quantized activations in the QDQ model `quantized`, from most to least
    damaged: each with the lowest SQNR (dB) among the Q/DQ pairs in front of it, over `inputs`."""
    import onnxruntime as ort

    model = onnx.load(str(quantized))
    weights = {t.name for t in model.graph.initializer}
    quantize = {n.output[0]: n.input[0] for n in model.graph.node
                if n.op_type == "QuantizeLinear" and n.input[0] not in weights}
    pairs = {n.output[0]: quantize[n.input[0]] for n in model.graph.node
             if n.op_type == "DequantizeLinear" and n.input[0] in quantize}  # after DQ -> before Q
    wanted = set(candidates)
    reads = {n.name: [t for t in n.input if t in pairs] for n in model.graph.node if n.name in wanted}
    reads = {name: tensors for name, tensors in reads.items() if tensors}
    measured = sorted({t for tensors in reads.values() for t in tensors})
    tensors = sorted({*measured, *(pairs[t] for t in measured)})
    outputs = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None)
                              for t in tensors if t not in outputs)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    signal = dict.fromkeys(measured, 0.0)
    noise = dict.fromkeys(measured, 0.0)
    for x in inputs:
        values = dict(zip(tensors, session.run(tensors, {input_name: x})))
        for after in measured:
            before = values[pairs[after]].astype(np.float64)
            signal[after] += float(np.sum(before**2))
            noise[after] += float(np.sum((before - values[after].astype(np.float64)) ** 2))
    sqnr = {t: 10 * np.log10(signal[t] / noise[t]) if noise[t] > 0 else 200.0 for t in measured}  # 200 dB: exact
    scored = {name: round(float(min(sqnr[t] for t in tensors)), 2) for name, tensors in reads.items()}
    return sorted(scored.items(), key=lambda item: item[1])
