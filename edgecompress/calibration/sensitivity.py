"""Which layers INT8 damages most, measured in the quantized model itself: the signal each layer loses across itself.

As onnxruntime's qdq_loss_debug does, the FP32 and the QDQ model run on the same inputs and their activations are
compared tensor by tensor: the signal-to-quantization-noise ratio (SQNR, dB) of each tensor against FP32 falls
along the graph as the quantization noise of every layer adds up. A layer's loss is how much it falls across that
layer (its inputs' SQNR minus its output's): the noise its own input and weight quantization adds, in the graph as
it runs, with every other layer quantized too. The accuracy-aware fallback keeps the most damaging in float first.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import onnx


def _session(model: onnx.ModelProto, tensors: Sequence[str]):
    import onnxruntime as ort

    outputs = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None)
                              for t in tensors if t not in outputs)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def lost_signal(fp32: Path, quantized: Path, inputs: Iterable[np.ndarray],
                candidates: Sequence[str]) -> list[tuple[str, float]]:
    """`candidates` (node names of the FP32 model) from most to least damaging, each with the dB of SQNR against
    the FP32 model it loses across itself in the `quantized` QDQ model (whose nodes keep their outputs' names)."""
    float_model = onnx.load(str(fp32))
    quant_model = onnx.load(str(quantized))
    known = {t for n in quant_model.graph.node for t in n.output} | {i.name for i in quant_model.graph.input}
    weights = {t.name for t in float_model.graph.initializer}
    wanted = set(candidates)
    nodes = {n.name: ([t for t in n.input if t in known and t not in weights], n.output[0])
             for n in float_model.graph.node if n.name in wanted and n.output[0] in known}
    nodes = {name: (ins, out) for name, (ins, out) in nodes.items() if ins}
    tensors = sorted({t for ins, out in nodes.values() for t in (*ins, out)})
    reference, measured = _session(float_model, tensors), _session(quant_model, tensors)
    input_name = reference.get_inputs()[0].name
    signal = dict.fromkeys(tensors, 0.0)
    noise = dict.fromkeys(tensors, 0.0)
    for x in inputs:
        for name, f, q in zip(tensors, reference.run(tensors, {input_name: x}), measured.run(tensors, {input_name: x})):
            f, q = f.astype(np.float64), q.astype(np.float64)
            signal[name] += float(np.sum(f**2))
            noise[name] += float(np.sum((f - q) ** 2))
    sqnr = {t: 10 * np.log10(signal[t] / noise[t]) if noise[t] > 0 else 200.0 for t in tensors}  # 200 dB: exact
    lost = {name: round(min(sqnr[t] for t in ins) - sqnr[out], 2) for name, (ins, out) in nodes.items()}
    return sorted(lost.items(), key=lambda item: -item[1])
