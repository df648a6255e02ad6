"""Where things are in an Ultralytics detector exported to ONNX: the head's decode, the quantizable layers."""

from __future__ import annotations

import re
from collections.abc import Collection
from pathlib import Path

import onnx
import onnx.numpy_helper

# Inside the Detect head, the per-level convolution branches (cv2: box distribution, cv3: class logits) are
# ordinary layers; everything else in the head is the decode (DFL softmax and conv, anchors and strides, the
# class Sigmoid, the final Concat of pixel boxes with 0..1 scores), which INT8 ruins: it stays float.
_BRANCH = re.compile(r"/cv[23]\.\d+/")
_MODULE = re.compile(r"^/?(model\.\d+)/")
RAW = "output0"  # the detection output of an Ultralytics export


def head_scope(model: onnx.ModelProto) -> str:
    """The name prefix of the head module ('/model.22/'), found from the node that writes the network's output
    (`output0`, inside the graph when the frame's processing follows it: edgecompress.targets.frame)."""
    producers = {out: node for node in model.graph.node for out in node.output}
    node = producers.get(RAW) or producers[model.graph.output[0].name]
    while node.op_type in ("QuantizeLinear", "DequantizeLinear", "Cast") and node.input[0] in producers:
        node = producers[node.input[0]]  # a quantized or cast output: the head is behind its Q/DQ or Cast
    match = _MODULE.match(node.name)
    if not match:
        raise ValueError(f"cannot find the detection head: output node {node.name!r} is not in a model.N scope "
                         f"(was this ONNX exported by Ultralytics?)")
    return f"/{match.group(1)}/"


def head_decode_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes of the head's decode, which every INT8 scheme keeps in float."""
    scope = head_scope(model)
    return [n.name for n in model.graph.node if n.name.startswith(scope) and not _BRANCH.search(n.name)]


def dfl_softmax_last_axis(path: Path) -> bool:
    """Rewrite the head's DFL decode in the ONNX at `path` (in place) to take its softmax on the last axis: Transpose
    to (batch, 4, anchors, bins), Softmax on the last axis, and a MatMul with the bins' weights for the 1x1 Conv.
    The same outputs; onnxruntime runs a softmax over an inner axis by transposing around it, and this graph ran
    11-13% faster there (OpenVINO 3% slower: only onnxruntime targets use it; BENCHMARKS.md, issue 17). False, and
    nothing written, where the graph has no DFL of Ultralytics' layout (YOLO26 has none)."""
    model = onnx.load(str(path))
    nodes = {n.name: n for n in model.graph.node}
    found = [next((n for name, n in nodes.items() if name.endswith(suffix)), None)
             for suffix in ("/dfl/Transpose", "/dfl/Softmax", "/dfl/conv/Conv")]
    transpose, softmax, conv = found
    weights = {i.name: i for i in model.graph.initializer}.get(conv.input[1]) if conv else None
    if not (transpose and softmax and weights) or list(onnx.helper.get_attribute_value(transpose.attribute[0])) \
            != [0, 2, 1, 3] or onnx.helper.get_attribute_value(softmax.attribute[0]) != 1:
        return False
    bins = onnx.numpy_helper.to_array(weights).reshape(-1, 1)
    transpose.attribute[0].ints[:] = [0, 1, 3, 2]
    softmax.attribute[0].i = -1
    model.graph.initializer.remove(weights)
    model.graph.initializer.append(onnx.numpy_helper.from_array(bins, weights.name))
    index = list(model.graph.node).index(conv)
    model.graph.node.remove(conv)
    model.graph.node.insert(index, onnx.helper.make_node("MatMul", [softmax.output[0], weights.name], [conv.output[0]],
                                                         name=conv.name.replace("conv/Conv", "MatMul")))
    del model.graph.value_info[:]  # shapes inferred for the old layout
    onnx.save(model, str(path))
    return True


# Ops that only move or select values: values on one INT8 grid stay on it, so OpenVINO runs them in INT8 when
# every data input carries the same scale (NNCF's "unified scales"). Data inputs: all for Concat, else the first.
GRID_PRESERVING = ("Concat", "Split", "MaxPool", "Resize")


def _data_inputs(node: onnx.NodeProto) -> list[str]:
    return list(node.input) if node.op_type == "Concat" else [node.input[0]]


def float_feeders(model: onnx.ModelProto, excluded: Collection[str]) -> list[str]:
    """The grid-preserving nodes through which values reach an excluded node: they must stay float too, or a layer
    the fallback keeps in float would still read values rounded to the INT8 grid upstream of them."""
    producers = {out: node for node in model.graph.node for out in node.output}
    by_name = {node.name: node for node in model.graph.node}
    found: list[str] = []
    todo = [by_name[name] for name in excluded if name in by_name]
    while todo:
        for tensor in _data_inputs(todo.pop()):
            node = producers.get(tensor)
            if node is not None and node.op_type in GRID_PRESERVING and node.name not in excluded \
                    and node.name not in found:
                found.append(node.name)
                todo.append(node)
    return found


def read_float(model: onnx.ModelProto, nodes: Collection[str]) -> None:
    """Feed `nodes` the float tensors in front of the Quantize/Dequantize pairs they read, and remove pairs left
    unread. onnxruntime quantizes a tensor for all its readers once one of them is quantized, so a layer kept in
    float would still read INT8-rounded values, and TensorRT refuses a Conv whose input is dequantized while its
    weight is not."""
    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    for node in graph.node:
        if node.name in nodes:
            for i, tensor in enumerate(node.input):
                dq = producers.get(tensor)
                q = producers.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
                if q is not None and q.op_type == "QuantizeLinear":
                    node.input[i] = q.input[0]
    for op in ("DequantizeLinear", "QuantizeLinear"):  # a pair's Q is unread only once its DQ is gone
        read = {t for n in graph.node for t in n.input} | {o.name for o in graph.output}
        for node in [n for n in graph.node if n.op_type == op and n.output[0] not in read]:
            graph.node.remove(node)


def shared_scale_groups(model: onnx.ModelProto, skip: Collection[str]) -> list[set[str]]:
    """Sets of tensors joined, directly or through each other, by grid-preserving nodes (not in `skip`): each set
    needs one quantization scale for those nodes to run in INT8."""
    parent: dict[str, str] = {}

    def root(tensor: str) -> str:
        while parent.setdefault(tensor, tensor) != tensor:
            tensor = parent[tensor]
        return tensor

    for node in model.graph.node:
        if node.op_type in GRID_PRESERVING and node.name not in skip:
            first, *rest = [*_data_inputs(node), *node.output]
            for tensor in rest:
                parent[root(tensor)] = root(first)
    groups: dict[str, set[str]] = {}
    for tensor in parent:
        groups.setdefault(root(tensor), set()).add(tensor)
    return [g for g in groups.values() if len(g) > 1]


def drop_requantization(model: onnx.ModelProto, skip: Collection[str]) -> None:
    """Remove the Q/DQ pairs on outputs of grid-preserving nodes (not in `skip`) whose inputs are all dequantized
    with the output's scale already (after `shared_scale_groups`): exact no-ops that OpenVINO would run as
    FakeQuantize ops of their own."""
    graph = model.graph
    dequantized: set[str] = set()
    on_grid: set[str] = set()  # dequantized, or reached from dequantized tensors through grid-preserving nodes only
    for node in graph.node:  # in topological order, as ONNX stores them
        if node.op_type == "DequantizeLinear":
            dequantized.add(node.output[0])
            on_grid.add(node.output[0])
        elif node.op_type in GRID_PRESERVING and node.name not in skip and set(_data_inputs(node)) <= on_grid:
            on_grid.update(node.output)
    quantizers = {n.output[0]: n for n in graph.node
                  if n.op_type == "QuantizeLinear" and n.input[0] in on_grid and n.input[0] not in dequantized}
    pairs = [n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in quantizers]
    bypass = {dq.output[0]: quantizers[dq.input[0]].input[0] for dq in pairs}
    for node in [*quantizers.values(), *pairs]:
        graph.node.remove(node)
    for node in graph.node:
        for i, tensor in enumerate(node.input):
            node.input[i] = bypass.get(tensor, tensor)
