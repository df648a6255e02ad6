"""TensorRT's rules for an explicitly quantized (Q/DQ) ONNX, checked before a model is called a jetson artifact.

TensorRT builds INT8 layers only from Q/DQ it can fuse: symmetric INT8 (zero point 0), weights per output
channel (axis 0 of a Conv weight), activations per tensor, opset >= 13 (per-channel DequantizeLinear), each
QuantizeLinear feeding DequantizeLinear, and a Conv whose input and weight are quantized together. The head's
decode must stay float. onnx only; no TensorRT needed to check.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from edgecompress.calibration.graph import head_decode_nodes

MIN_OPSET = 13


class TensorRTRuleError(RuntimeError):
    """A QDQ model that TensorRT would reject or run with the wrong precision. Only graphs the product built are
    checked, so this is an internal error (exit status 3), never the user's input."""


def violations(model: onnx.ModelProto) -> list[str]:
    """Every way `model` breaks TensorRT's explicit-quantization rules; empty when it passes."""
    graph = model.graph
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    producers = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    problems = []

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        problems.append(f"opset {opset} < {MIN_OPSET}: per-channel DequantizeLinear needs opset >= {MIN_OPSET}")

    qdq = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    if not qdq:
        problems.append("no QuantizeLinear/DequantizeLinear nodes: the model is not quantized")
    for node in qdq:
        zero = consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if zero is None:
            problems.append(f"{node.name}: no constant zero point (the default is uint8; TensorRT needs int8 0)")
        elif zero.dtype != np.int8:
            problems.append(f"{node.name}: zero point is {zero.dtype}, TensorRT needs int8"
                            + (" (biases stay float for TensorRT)" if zero.dtype == np.int32 else ""))
        elif np.any(zero != 0):
            problems.append(f"{node.name}: zero point {zero.ravel()[:4].tolist()} is not 0 (asymmetric)")
        scale = consts.get(node.input[1])
        if _is_constant(node.input[0], consts, producers):  # a weight (or bias): checked where its DQ feeds a Conv
            if node.op_type == "DequantizeLinear":
                problems += _weight_problems(node, scale, consts, producers, consumers)
        elif scale is not None and scale.size != 1:
            problems.append(f"{node.name}: activation quantized per channel ({scale.size} scales); "
                            f"TensorRT needs one scale per activation tensor")
        if node.op_type == "QuantizeLinear":
            bad = [c.name for c in consumers.get(node.output[0], []) if c.op_type != "DequantizeLinear"]
            if bad:
                problems.append(f"{node.name}: feeds {bad} directly; a QuantizeLinear must feed DequantizeLinear")

    for node in graph.node:
        if node.op_type != "Conv":
            continue
        quantized = [_from_dq(name, producers) for name in node.input[:2]]
        if quantized[0] != quantized[1]:
            which = "weight" if quantized[1] else "input"
            problems.append(f"{node.name}: only its {which} is quantized; TensorRT fuses a Conv into INT8 only "
                            f"when input and weight both come from DequantizeLinear")

    decode = set(head_decode_nodes(model))
    for node in graph.node:
        if node.name in decode:
            # The branch convs' logits entering the decode may be INT8 (each level's tensor has its own scale);
            # what the decode computes (distances, pixel boxes, scores) may not.
            touched = [out for out in node.output if any(c.op_type == "QuantizeLinear"
                                                         for c in consumers.get(out, []))]
            if touched:
                problems.append(f"{node.name}: part of the head's decode (DFL, Sigmoid, final Concat) but "
                                f"quantized at {touched}; the decode must stay float")
    return problems


def check(model: onnx.ModelProto) -> None:
    """Raise TensorRTRuleError listing every rule `model` breaks."""
    problems = violations(model)
    if problems:
        shown = "\n  ".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise TensorRTRuleError(f"the QDQ model breaks TensorRT's INT8 rules:\n  {shown}")


def _is_constant(name: str, consts: dict[str, np.ndarray], producers: dict[str, onnx.NodeProto]) -> bool:
    """A weight: an initializer, or a QuantizeLinear of one (the weight's Q/DQ pair)."""
    if name in consts:
        return True
    node = producers.get(name)
    return node is not None and node.op_type == "QuantizeLinear" and node.input[0] in consts


def _from_dq(name: str, producers: dict[str, onnx.NodeProto]) -> bool:
    node = producers.get(name)
    return node is not None and node.op_type == "DequantizeLinear"


def _weight_problems(node: onnx.NodeProto, scale: np.ndarray | None, consts: dict[str, np.ndarray],
                     producers: dict[str, onnx.NodeProto],
                     consumers: dict[str, list[onnx.NodeProto]]) -> list[str]:
    convs = [c for c in consumers.get(node.output[0], []) if c.op_type == "Conv" and c.input[1] == node.output[0]]
    if not convs:
        return []
    source = node.input[0] if node.input[0] in consts else producers[node.input[0]].input[0]
    channels = consts[source].shape[0]
    axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
    if scale is None or scale.size != channels:
        return [f"{node.name}: Conv weight quantized per tensor; TensorRT needs per-channel scales ({channels})"]
    if axis != 0:
        return [f"{node.name}: Conv weight quantized on axis {axis}; TensorRT needs axis 0 (output channels)"]
    return []
