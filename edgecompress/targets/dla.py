"""Which layers of an ONNX detector NVIDIA's Deep Learning Accelerator cannot run, from TensorRT's documented DLA
support matrix ("DLA Supported Layers and Restrictions", TensorRT 10 developer guide), so the bundle says before the
device does which layers TensorRT will send back to the GPU (GPU fallback) and why.

The rules are data: the ONNX ops DLA runs, each with the limits TensorRT documents for it. Everything else, and any
tensor that is not 4-D (N, C, H, W) or is FP32, falls back. What TensorRT fuses away (Q/DQ into their INT8 layer, a
Cast at the network's input) is not a layer of its own and is not listed. onnx only; no TensorRT needed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import onnx
from onnx import TensorProto

from edgecompress.targets.typed import tensor_types

# DLA Shuffle (Reshape, Transpose), Slice and Softmax run 4-D tensors only; DLA's Softmax, over channels only.
ACTIVATIONS = ("Relu", "Sigmoid", "Tanh", "Clip", "LeakyRelu")  # ReLU, Sigmoid, TanH, Clipped and Leaky ReLU
ELEMENTWISE = ("Add", "Sub", "Mul", "Div", "Max", "Min", "Pow")  # DLA ElementWise: Sum, Sub, Prod, Div, Max, Min, Pow
POOLING = ("MaxPool", "AveragePool")


@dataclass(frozen=True)
class Node:
    """One ONNX node as the rules see it: its attributes and the static shapes of its data inputs and outputs."""

    node: onnx.NodeProto
    inputs: list[tuple[int, ...] | None]
    outputs: list[tuple[int, ...] | None]

    def attr(self, name: str, default: Any = None) -> Any:
        found = next((a for a in self.node.attribute if a.name == name), None)
        return default if found is None else onnx.helper.get_attribute_value(found)


def _conv(n: Node) -> str | None:
    kernel, strides = n.attr("kernel_shape", []), n.attr("strides", [1, 1])
    channels = [s[1] for s in (n.inputs[0], n.outputs[0]) if s]
    if len(kernel) != 2:
        return "only 2-D convolutions"
    if not all(1 <= k <= 32 for k in kernel) or not all(1 <= s <= 8 for s in strides):
        return f"kernel {kernel} / stride {strides} outside DLA's [1, 32] / [1, 8]"
    if any(c > 8192 for c in channels):
        return f"{max(channels)} channels exceed DLA's 8192"
    return None


def _pool(n: Node) -> str | None:
    kernel, strides, pads = n.attr("kernel_shape", []), n.attr("strides", [1, 1]), n.attr("pads", [0] * 4)
    if len(kernel) != 2 or not all(1 <= k <= 8 for k in kernel):
        return f"pooling window {kernel} outside DLA's 2-D [1, 8]"
    if not all(1 <= s <= 16 for s in strides) or not all(0 <= p <= 7 for p in pads):
        return f"stride {strides} / padding {pads} outside DLA's [1, 16] / [0, 7]"
    return None


def _concat(n: Node) -> str | None:
    return None if n.attr("axis") in (1, -3) else f"concatenation on axis {n.attr('axis')}; DLA joins channels only"


def _resize(n: Node) -> str | None:
    return None if n.attr("mode", b"nearest") in (b"nearest", "nearest") else \
        f"{n.attr('mode')!r} resize; DLA resizes with nearest neighbour"


def _split(n: Node) -> str | None:
    return None if n.attr("axis", 0) in (1, -3) else f"split on axis {n.attr('axis', 0)}; DLA slices channels only"


def _shuffle(n: Node) -> str | None:
    return None  # DLA Shuffle: 4-D in and out, checked for every layer


def _slice(n: Node) -> str | None:
    return _split(n) if n.node.op_type == "Split" else None


def _softmax(n: Node) -> str | None:
    return None if n.attr("axis", -1) in (1, -3) else \
        f"softmax over axis {n.attr('axis', -1)}; DLA's runs over channels only"


def _supported(_: Node) -> str | None:
    return None


RULES: dict[str, Callable[[Node], str | None]] = {
    "Conv": _conv, "ConvTranspose": _conv, **dict.fromkeys(ACTIVATIONS, _supported),
    **dict.fromkeys(ELEMENTWISE, _supported), **dict.fromkeys(POOLING, _pool), "Concat": _concat,
    "Resize": _resize, "Split": _slice, "Slice": _slice, "Reshape": _shuffle, "Transpose": _shuffle,
    "Softmax": _softmax, "BatchNormalization": _supported,
}
FUSED = ("QuantizeLinear", "DequantizeLinear", "Constant", "Identity")  # not layers of their own on the device


def fallbacks(model: onnx.ModelProto) -> list[dict[str, str]]:
    """Every node DLA cannot run, with the reason: {"node", "op", "reason"} in graph order."""
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    shapes = {v.name: tuple(d.dim_value for d in v.type.tensor_type.shape.dim)
              for v in [*graph.input, *graph.output, *graph.value_info]}
    types = tensor_types(model)
    consts = {t.name for t in graph.initializer} | {n.output[0] for n in graph.node if n.op_type == "Constant"}
    inputs = {t.name for t in graph.input}
    found = []
    for node in graph.node:
        if node.op_type in FUSED or (node.op_type == "Cast" and inputs.intersection(node.input)):
            continue
        data = [name for name in node.input if name and name not in consts]
        tensors = [*data, *node.output]
        view = Node(node, [shapes.get(name) for name in data], [shapes.get(name) for name in node.output])
        rule = RULES.get(node.op_type)
        if rule is None:
            reason = f"{node.op_type} is not a DLA layer"
        elif any(types.get(t) == TensorProto.FLOAT for t in tensors):
            reason = "FP32 tensors; DLA computes in FP16 or INT8"
        elif any(s is None or len(s) != 4 for s in [*view.inputs, *view.outputs]):
            reason = "tensors that are not 4-D (N, C, H, W)"
        else:
            reason = rule(view)
        if reason:
            found.append({"node": node.name, "op": node.op_type, "reason": reason})
    return found


def dla_report(model: onnx.ModelProto) -> dict[str, Any]:
    """JSON-ready: the layers that fall back to the GPU, and how many layers DLA runs."""
    layers = [n for n in model.graph.node if n.op_type not in FUSED and n.op_type != "Cast"]
    gpu = fallbacks(model)
    return {"layers": len(layers), "dla_layers": len(layers) - len(gpu), "gpu_fallback": gpu,
            "source": "TensorRT developer guide, DLA Supported Layers and Restrictions"}
