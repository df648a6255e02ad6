"""Where things are in an Ultralytics detector exported to ONNX: the head's decode, the quantizable layers."""

from __future__ import annotations

import re

import onnx

# Inside the Detect head, the per-level convolution branches (cv2: box distribution, cv3: class logits) are
# ordinary layers; everything else in the head is the decode (DFL softmax and conv, anchors and strides, the
# class Sigmoid, the final Concat of pixel boxes with 0..1 scores), which INT8 ruins: it stays float.
_BRANCH = re.compile(r"/cv[23]\.\d+/")
_MODULE = re.compile(r"^/?(model\.\d+)/")


def head_scope(model: onnx.ModelProto) -> str:
    """The name prefix of the head module ('/model.22/'), found from the node that writes the first output."""
    producers = {out: node for node in model.graph.node for out in node.output}
    node = producers[model.graph.output[0].name]
    while node.op_type in ("QuantizeLinear", "DequantizeLinear") and node.input[0] in producers:
        node = producers[node.input[0]]  # a quantized output: the head is behind its Q/DQ
    match = _MODULE.match(node.name)
    if not match:
        raise ValueError(f"cannot find the detection head: output node {node.name!r} is not in a model.N scope "
                         f"(was this ONNX exported by Ultralytics?)")
    return f"/{match.group(1)}/"


def head_decode_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes of the head's decode, which every INT8 scheme keeps in float."""
    scope = head_scope(model)
    return [n.name for n in model.graph.node if n.name.startswith(scope) and not _BRANCH.search(n.name)]
