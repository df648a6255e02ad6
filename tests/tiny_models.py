"""Tiny ONNX models named like an Ultralytics export (a body, a head with conv branches and a float decode)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# Per-output-channel weights with hand-checkable absolute maxima: 0.5, 2.0 (1x1 convs, 1 -> 2 channels).
BODY_WEIGHT = np.array([0.5, -2.0], np.float32).reshape(2, 1, 1, 1)
BRANCH_WEIGHT = np.array([[1.0, 0.25], [-0.5, 1.0]], np.float32).reshape(2, 2, 1, 1)


def detector(path: Path, opset: int = 17) -> Path:
    """images (1,1,8,8) -> body Conv -> Relu -> head branch Conv -> decode Sigmoid -> Mul -> output0."""
    nodes = [
        helper.make_node("Conv", ["images", "w0"], ["a"], name="/model.0/conv/Conv"),
        helper.make_node("Relu", ["a"], ["b"], name="/model.0/act/Relu"),
        helper.make_node("Conv", ["b", "w1"], ["c"], name="/model.1/cv2.0/cv2.0.0/Conv"),
        helper.make_node("Sigmoid", ["c"], ["d"], name="/model.1/Sigmoid"),
        helper.make_node("Mul", ["d", "k"], ["output0"], name="/model.1/Mul"),
    ]
    return _save(nodes, [], path, opset)


def _save(nodes: list[onnx.NodeProto], extra: list[onnx.TensorProto], path: Path, opset: int = 17) -> Path:
    """The model of `nodes` on images (1,1,8,8) -> output0 (1,2,8,8), with Ultralytics' metadata, saved."""
    graph = helper.make_graph(
        nodes, path.stem,
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 2, 8, 8])],
        [numpy_helper.from_array(BODY_WEIGHT, "w0"), numpy_helper.from_array(BRANCH_WEIGHT, "w1"),
         numpy_helper.from_array(np.array(640.0, np.float32), "k"), *extra],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    helper.set_model_props(model, {"names": "{0: 'a', 1: 'b'}", "stride": "8"})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def branching(path: Path) -> Path:
    """A C2f-like body: Conv -> Relu (b) -> Split (s0, s1); s1 -> Conv -> Relu (e); Add(s1, e) (f);
    Concat(s0, f) (g) -> MaxPool (h) -> head branch Conv -> decode Sigmoid -> Mul -> output0."""
    nodes = [
        helper.make_node("Conv", ["images", "w0"], ["a"], name="/model.0/conv/Conv"),
        helper.make_node("Relu", ["a"], ["b"], name="/model.0/act/Relu"),
        helper.make_node("Split", ["b", "halves"], ["s0", "s1"], axis=1, name="/model.0/Split"),
        helper.make_node("Conv", ["s1", "w2"], ["d"], name="/model.0/m/conv/Conv"),
        helper.make_node("Relu", ["d"], ["e"], name="/model.0/m/act/Relu"),
        helper.make_node("Add", ["s1", "e"], ["f"], name="/model.0/m/Add"),
        helper.make_node("Concat", ["s0", "f"], ["g"], axis=1, name="/model.0/Concat"),
        helper.make_node("MaxPool", ["g"], ["h"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], name="/model.0/MaxPool"),
        helper.make_node("Conv", ["h", "w1"], ["c"], name="/model.1/cv2.0/cv2.0.0/Conv"),
        helper.make_node("Sigmoid", ["c"], ["k0"], name="/model.1/Sigmoid"),
        helper.make_node("Mul", ["k0", "k"], ["output0"], name="/model.1/Mul"),
    ]
    return _save(nodes, [numpy_helper.from_array(np.array([[[[3.0]]]], np.float32), "w2"),
                         numpy_helper.from_array(np.array([1, 1], np.int64), "halves")], path)


def ramp_inputs(count: int = 4) -> list[np.ndarray]:
    """Inputs whose overall min and max are exactly -1 and 3."""
    values = np.linspace(-1.0, 3.0, count * 64, dtype=np.float32)
    return [values[i * 64:(i + 1) * 64].reshape(1, 1, 8, 8) for i in range(count)]
