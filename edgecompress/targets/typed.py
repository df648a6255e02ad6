"""Strongly typed ONNX for TensorRT: the precision of every layer written into the graph itself.

TensorRT 11 builds only strongly typed networks (it removed the FP16/INT8 builder flags and the implicit INT8
calibrator), and TensorRT 10 builds them on request: the engine then runs each layer in its tensors' types, so
the ONNX must say FP16 wherever FP16 is wanted. NVIDIA ModelOpt's AutoCast writes those types (Cast nodes at the
edges of what stays FP32, FP16 weights and Q/DQ scales); this module chooses what stays FP32, and checks the
result: every float tensor FP16 except the ones the FP32 nodes read and write, and the network's own input and
output, which stay FP32 (Ultralytics, DeepStream and `compress bench` feed FP32 images and read FP32 boxes).

What stays FP32 is the head's box arithmetic: from the distances in grid cells to boxes in pixels (anchors,
strides, the final Concat). FP16 keeps 11 significant bits, so a coordinate of 400-640 px is rounded to 0.25-0.5 px,
which the IoU thresholds of mAP50-95 notice on small objects. The class scores (a Sigmoid, 0..1) and the DFL
softmax keep their precision in FP16.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from edgecompress.calibration.graph import GRID_PRESERVING, head_decode_nodes, head_scope

FLOATS = {TensorProto.FLOAT: "fp32", TensorProto.FLOAT16: "fp16"}

# The ops that read dequantized INT8 tensors as INT8 in TensorRT (its Q/DQ fusions): a DequantizeLinear feeding
# any other op hands an INT8 tensor to a float layer, a reformat of its own in the engine.
INT8_CONSUMERS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "Add", *GRID_PRESERVING}


def fp32_nodes(model: onnx.ModelProto) -> list[str]:
    """The head decode's box arithmetic, which stays FP32: the nodes that combine distances with the anchor grid
    or the strides (a constant with one value per anchor), and every decode node downstream of them."""
    anchors = _anchor_count(model)
    consts = _constants(model)
    decode = set(head_decode_nodes(model))
    nodes = [n for n in model.graph.node if n.name in decode]
    roots = {n.name for n in nodes
             if any(name in consts and consts[name].ndim and consts[name].shape[-1] == anchors for name in n.input)}
    if not roots:
        raise ValueError(f"no node of the head's decode ({head_scope(model)}) reads the anchor grid or the strides "
                         f"({anchors} anchors): is this ONNX an Ultralytics detection export?")
    keep, tensors = [], set()
    for node in nodes:  # ONNX stores nodes in topological order
        if node.name in roots or tensors.intersection(node.input):
            keep.append(node.name)
            tensors.update(node.output)
    return keep


def to_fp16(source: Path, dest: Path, keep_fp32: list[str]) -> Path:
    """`source` (FP32, or a QDQ ONNX whose float parts are FP32) with every float tensor FP16 except the nodes in
    `keep_fp32` and the network's input and output; Ultralytics' metadata kept. Deterministic: no node is kept in
    FP32 for the values it saw on sample data (AutoCast's data_max), only by name."""
    from modelopt.onnx.autocast import configure_logging, convert_to_mixed_precision

    configure_logging(logging.ERROR)  # its per-node INFO lines and benign warnings would flood the run's log
    original = onnx.load(str(source), load_external_data=False)
    model = convert_to_mixed_precision(str(source), low_precision_type="fp16", keep_io_types=True,
                                       data_max=np.inf, nodes_to_exclude=[f"^{re.escape(n)}$" for n in keep_fp32])
    del model.metadata_props[:]
    model.metadata_props.extend(original.metadata_props)  # Ultralytics' AutoBackend reads names, stride, imgsz
    onnx.save(model, str(dest))
    return dest


def typing_problems(model: onnx.ModelProto, keep_fp32: list[str]) -> list[str]:
    """Every float tensor that breaks the typing `to_fp16` promises: FP16 everywhere on the engine's path except the
    outputs of `keep_fp32` (FP32), the network's input and output (FP32) and the Casts between them."""
    types = tensor_types(model)
    fp32 = set(keep_fp32)
    io = {t.name for t in [*model.graph.input, *model.graph.output]}
    problems = [f"{t.name}: network {kind} is {FLOATS.get(t.type.tensor_type.elem_type, 'not float')}, "
                f"it must stay fp32" for kind, ts in (("input", model.graph.input), ("output", model.graph.output))
                for t in ts if t.type.tensor_type.elem_type != TensorProto.FLOAT]
    missing = fp32 - {n.name for n in model.graph.node}
    problems += [f"{name}: listed to stay fp32 but not in the graph" for name in sorted(missing)]
    for node in model.graph.node:
        if node.op_type in ("Cast", "Constant") or node.op_type == "QuantizeLinear":
            continue  # a Cast changes type on purpose; a QuantizeLinear writes INT8
        want = TensorProto.FLOAT if node.name in fp32 else TensorProto.FLOAT16
        for out in node.output:
            kind = types.get(out)
            if kind in FLOATS and kind != want and out not in io:
                problems.append(f"{node.name} ({node.op_type}): output {out} is {FLOATS[kind]}, "
                                f"expected {FLOATS[want]}")
    return problems


def tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """Every tensor's element type, from ONNX type inference (initializers, inputs, outputs and intermediates)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    types = {t.name: t.data_type for t in graph.initializer}
    for info in [*graph.input, *graph.output, *graph.value_info]:
        types[info.name] = info.type.tensor_type.elem_type
    for node in graph.node:
        if node.op_type == "Constant":
            types[node.output[0]] = node.attribute[0].t.data_type
    return types


def boundaries(model: onnx.ModelProto) -> dict[str, Any]:
    """The precision switches TensorRT must execute as reformats, counted from the graph, in the head (its conv
    branches and decode) and in the whole graph:
      casts: FP16<->FP32 Cast nodes (the network's input and output casts counted apart as io_casts);
      int8_to_float: dequantized activations read by a float layer (not a Conv, Add or grid-preserving op that
        takes them as INT8), so the INT8 tensor must be converted for it;
      float_to_int8: activations quantized (each a QuantizeLinear: fused into the producer's kernel where it
        can be, a reformat where it cannot)."""
    producers = {out: node for node in model.graph.node for out in node.output}
    consts = set(_constants(model)) | {i.name for i in model.graph.initializer}
    io = {t.name for t in [*model.graph.input, *model.graph.output]}
    scope = head_scope(model)

    def count(nodes: list[onnx.NodeProto]) -> dict[str, int]:
        casts = [n for n in nodes if n.op_type == "Cast"]
        io_casts = [n for n in casts if io.intersection([*n.input, *n.output])]
        activations = [n for n in nodes if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                       and not _weight(n, consts, producers)]
        int8_to_float = sum(1 for n in nodes if n.op_type not in (*INT8_CONSUMERS, "QuantizeLinear")
                            for name in n.input if (p := producers.get(name)) is not None and p in activations
                            and p.op_type == "DequantizeLinear")
        return {"casts": len(casts) - len(io_casts), "io_casts": len(io_casts), "int8_to_float": int8_to_float,
                "float_to_int8": sum(1 for n in activations if n.op_type == "QuantizeLinear")}

    nodes = list(model.graph.node)
    return {"head": count([n for n in nodes if n.name.startswith(scope)]), "graph": count(nodes)}


def summary(model: onnx.ModelProto, keep_fp32: list[str]) -> dict[str, Any]:
    """JSON-ready facts of a typed graph for the report: its opset, the FP32 nodes, the count of FP16 and FP32
    activation tensors, and its precision boundaries."""
    types = tensor_types(model)
    produced = {out for node in model.graph.node if node.op_type != "Constant" for out in node.output}
    kinds = [FLOATS[types[t]] for t in produced if types.get(t) in FLOATS]
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    return {"opset": opset, "fp32_nodes": keep_fp32, "fp16_tensors": kinds.count("fp16"),
            "fp32_tensors": kinds.count("fp32"), "boundaries": boundaries(model)}


def _anchor_count(model: onnx.ModelProto) -> int:
    """Anchors in the raw detection output (1, 4 + classes, anchors)."""
    dims = model.graph.output[0].type.tensor_type.shape.dim
    if len(dims) != 3 or not dims[2].dim_value:
        raise ValueError(f"output {model.graph.output[0].name} is not (1, 4 + classes, anchors) with a static "
                         f"anchor count; export the detector with a static shape (batch 1, dynamic=False)")
    return dims[2].dim_value


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute[0].name == "value":
            consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return consts


def _weight(node: onnx.NodeProto, consts: set[str], producers: dict[str, onnx.NodeProto]) -> bool:
    """A Q or DQ of a constant (a weight behind its Q/DQ pair), not of an activation."""
    source = node.input[0]
    while source not in consts and (p := producers.get(source)) is not None and p.op_type in (
            "QuantizeLinear", "DequantizeLinear", "Cast"):
        source = p.input[0]
    return source in consts
