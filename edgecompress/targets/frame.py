"""The whole frame inside the artifact: what comes before the network (letterbox, BGR to RGB, /255, NCHW) and what
comes after it (box decoding and NMS), as graph ops, so that a device feeds the frame and reads the detections.

`input` says where the artifact starts:
- `frame`: the decoded camera frame as it comes, uint8 BGR (1, height, width, 3) of ANY size. The graph computes the
  letterbox from the frame's shape (scale to fit, round, centre, pad with 114, as Ultralytics and
  edgecompress.device.images do), then RGB, /255 and NCHW. Dynamic rather than one fixed camera size per artifact:
  one artifact serves every camera and the eval split's images at their native sizes (the raccoon demo's differ);
  a Reshape to (1, 3, imgsz, imgsz) right after the padding keeps the network itself static-shaped, so the runtime
  plans it exactly as the plain model.
- `letterboxed`: the frame letterboxed by OpenCV on the host (uint8 BGR, (1, imgsz, imgsz, 3)); the graph does the
  rest. OpenVINO's resize (its Interpolate op, which its PrePostProcessor inserts too) ran 10-20x slower than
  cv2.resize on this CPU (AMD EPYC, Zen 5), so on OpenVINO the resize stays in OpenCV and everything after it goes
  inside (BENCHMARKS.md, "The whole frame").
- `tensor`: what Ultralytics exports take, float32 RGB 0-1 (1, 3, imgsz, imgsz), letterboxed on the host.

`nms`: Ultralytics' NMS as its validator runs it (every class above `conf` for each anchor, NMS per class at `iou`,
the best `max_det` kept) with ONNX NonMaxSuppression (OpenVINO's NMS op and TensorRT's INMSLayer once converted);
out comes (1, max_det, 6): x1 y1 x2 y2 score class, best first, zero rows after the last detection, the layout of
Ultralytics' end-to-end heads (YOLO26's and YOLOv10's, exported with nms=False, which need no NMS; the pipeline
exports YOLO26 with its one-to-many head, Ultralytics' default, so its NMS goes inside too). Boxes are in the
frame's pixels (clipped to it) for `input: frame`, else in the network input's.

The pieces are built once, as small ONNX graphs, and joined to any network: with onnx.compose for the ONNX artifacts
(onnxruntime, TensorRT) and port to port for an OpenVINO IR (NNCF's INT8 exists only as an IR). OpenVINO's
PrePostProcessor is not used: its resize and pad take sizes fixed when the model is built, so they cannot letterbox
a frame whose size the graph learns at run time, and for `letterboxed` it inserts the same ops (Convert, Transpose,
channel reversal, Divide) as the ONNX piece converts to, measured as fast; one piece serves every runtime.

Light at import: onnx and openvino load when an artifact is wrapped.
"""

from __future__ import annotations

import io
import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml

from edgecompress.config import require
from edgecompress.device.postprocess import DEPLOYED, Thresholds

if TYPE_CHECKING:
    import onnx

PREFIX = "/frame/"  # every node and tensor the pieces add: no name of an Ultralytics export starts with it
FRAME, IMAGES, RAW, LETTERBOX, DETECTIONS = "frame", "images", "output0", "/frame/letterbox", "detections"
INPUTS = ("frame", "letterboxed", "tensor")
PAD_VALUE = 114.0  # Ultralytics' letterbox grey
MAX_TOPK = 3840  # TensorRT's largest TopK


@dataclass(frozen=True)
class FrameConfig:
    """What the deployed artifact does besides the network (the recipe's `frame` section)."""

    input: Literal["target", "frame", "letterboxed", "tensor"] = "target"  # target: the target's (measured)
    nms: bool = True  # NMS inside (measured cheaper than numpy's in every runtime here)
    conf: float = DEPLOYED.conf  # the deployed thresholds (accuracy is measured with eval.conf and eval.iou in
    iou: float = DEPLOYED.iou  #    the same graph)
    max_det: int = DEPLOYED.max_det

    def __post_init__(self) -> None:
        require(self.input in ("target", *INPUTS),
                f"frame.input must be one of target, {', '.join(INPUTS)}; got {self.input!r}")
        require(self.nms or self.input != "frame",
                "frame.input: frame needs frame.nms: true (only the graph knows the letterbox it applied, so only "
                "it can give the boxes back in the frame's pixels); set frame.nms: true, or frame.input: letterboxed")
        require(0.0 <= self.conf < 1.0, f"frame.conf must be in [0, 1), got {self.conf}")
        require(0.0 < self.iou <= 1.0, f"frame.iou must be in (0, 1], got {self.iou}")
        require(1 <= self.max_det <= MAX_TOPK,
                f"frame.max_det must be between 1 and {MAX_TOPK} (TensorRT's largest TopK), got {self.max_det}")

    @property
    def enabled(self) -> bool:
        """Whether the artifact holds anything besides the network (once the target's input is filled in)."""
        return self.nms or self.input != "tensor"

    @property
    def suffix(self) -> str:
        """The wrapped artifact's name ending: what it takes, or `_nms` for the tensor with NMS inside."""
        return "_nms" if self.input == "tensor" else f"_{self.input}"

    @property
    def thresholds(self) -> Thresholds:
        return Thresholds(self.conf, self.iou, self.max_det)

    def with_thresholds(self, conf: float, iou: float) -> FrameConfig:
        """The same graph with other thresholds: the accuracy figures' (eval.conf, eval.iou)."""
        return replace(self, conf=conf, iou=iou)

    def describe(self, imgsz: int) -> dict[str, Any]:
        """The metadata every wrapped artifact carries (key `frame`): what it takes and what it gives; the device
        reads `input` and `imgsz` (edgecompress.device.runtime.Session)."""
        takes = {"frame": "uint8 BGR (1, height, width, 3), the decoded frame of any size",
                 "letterboxed": f"uint8 BGR (1, {imgsz}, {imgsz}, 3), the frame letterboxed",
                 "tensor": f"float32 RGB 0-1 (1, 3, {imgsz}, {imgsz}), the frame letterboxed"}[self.input]
        gives = (f"(1, {self.max_det}, 6): x1 y1 x2 y2 score class, best first, zero rows after the last, boxes in "
                 f"the {'frame' if self.input == 'frame' else 'input'}'s pixels" if self.nms
                 else "(1, 4 + classes, anchors) as Ultralytics exports it")
        return {"input": self.input, "imgsz": imgsz, "nms": self.nms, "conf": self.conf, "iou": self.iou,
                "max_det": self.max_det, "takes": takes, "gives": gives}


# ------------------------------------------------------------------------------------------------ the two pieces


class _Graph:
    """A small ONNX graph under construction: every name it makes starts with `prefix`."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []
        self.constants: list[onnx.TensorProto] = []
        self.count = 0

    def const(self, value: Any, dtype: Any) -> str:
        import numpy as np
        from onnx import numpy_helper

        name = f"{self.prefix}c{len(self.constants)}"
        self.constants.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def op(self, op_type: str, *inputs: str, outputs: int = 1, out: str | None = None, **attrs: Any) -> Any:
        """Add one node; its output name (or names, when `outputs` > 1)."""
        from onnx import helper

        self.count += 1
        names = [out] if out else [f"{self.prefix}{op_type}_{self.count}_{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, name=f"{self.prefix}{op_type}_{self.count}",
                                           **attrs))
        return names[0] if outputs == 1 else names

    def model(self, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto],
              like: onnx.ModelProto) -> onnx.ModelProto:
        """The graph as a model of `like`'s IR version and opsets (onnx.compose joins only such models)."""
        from onnx import helper

        graph = helper.make_graph(self.nodes, "frame", inputs, outputs, self.constants)
        return helper.make_model(graph, ir_version=like.ir_version, opset_imports=list(like.opset_import))


def pre_graph(imgsz: int, letterbox: bool, like: onnx.ModelProto) -> onnx.ModelProto:
    """frame (uint8 BGR: any size to letterbox here, or (1, S, S, 3) letterboxed already) -> images (float
    (1, 3, S, S), RGB 0-1), and with `letterbox` the letterbox applied, (5,) float: gain, top, left, height, width."""
    import numpy as np
    from onnx import TensorProto, helper

    g = _Graph(f"{PREFIX}pre/")
    f32, i64 = np.float32, np.int64
    x = g.op("Cast", FRAME, to=TensorProto.FLOAT)  # first: TensorRT computes nothing in uint8
    x = g.op("Transpose", x, perm=[0, 3, 1, 2])
    outputs = [helper.make_tensor_value_info(IMAGES, TensorProto.FLOAT, [1, 3, imgsz, imgsz])]
    if letterbox:  # the sizes in integers: a runtime may run float arithmetic in bf16 (OpenVINO on this CPU did)
        hw = g.op("Slice", g.op("Shape", FRAME), g.const([1], i64), g.const([3], i64))  # h, w
        longest = g.op("Max", *(g.op("Slice", hw, g.const([i], i64), g.const([i + 1], i64)) for i in (0, 1)))
        # the longest side becomes S: the gain is S / longest (elementwise on shapes: TensorRT's shape arithmetic)
        # round(h * S / longest), round(w * S / longest); an exact half rounds up (Python's round: to even)
        new = g.op("Div", g.op("Add", g.op("Mul", hw, g.const(2 * imgsz, i64)), longest),
                   g.op("Mul", longest, g.const(2, i64)))
        new = g.op("Max", new, g.const(1, i64))
        pad = g.op("Sub", g.const(imgsz, i64), new)
        begin = g.op("Div", pad, g.const(2, i64))  # Ultralytics' round(pad / 2 - 0.1): the odd pixel goes after
        end = g.op("Sub", pad, begin)
        gain = g.op("Div", g.const([float(imgsz)], f32), g.op("Cast", longest, to=TensorProto.FLOAT))
        # cv2.INTER_LINEAR: half-pixel centres, no antialiasing (a scale of 1 samples every pixel as it is)
        x = g.op("Resize", x, "", "", g.op("Concat", g.const([1, 3], i64), new, axis=0), mode="linear",
                 coordinate_transformation_mode="half_pixel")
        zeros = g.const([0, 0], i64)
        x = g.op("Pad", x, g.op("Concat", zeros, begin, zeros, end, axis=0), g.const(PAD_VALUE, f32), mode="constant")
        x = g.op("Reshape", x, g.const([1, 3, imgsz, imgsz], i64))  # static from here: the network is planned as is
        g.op("Concat", gain, g.op("Cast", g.op("Concat", begin, hw, axis=0), to=TensorProto.FLOAT), axis=0,
             out=LETTERBOX)
        outputs.append(helper.make_tensor_value_info(LETTERBOX, TensorProto.FLOAT, [5]))
    x = g.op("Slice", x, g.const([2], i64), g.const([-(2**62)], i64), g.const([1], i64), g.const([-1], i64))  # RGB
    g.op("Div", x, g.const(255.0, f32), out=IMAGES)
    shape = [1, "height", "width", 3] if letterbox else [1, imgsz, imgsz, 3]
    return g.model([helper.make_tensor_value_info(FRAME, TensorProto.UINT8, shape)], outputs, like)


def post_graph(raw_shape: tuple[int, ...], config: FrameConfig, like: onnx.ModelProto) -> onnx.ModelProto:
    """output0 (the network's, (1, 4 + classes, anchors)) [and the letterbox, for `input: frame`] -> detections
    (1, max_det, 6)."""
    import numpy as np
    from onnx import TensorProto, helper

    if raw_shape[-1] == 6 and raw_shape[1] != 6:  # the test edgecompress.device.postprocess makes
        raise ValueError(f"the network's output {raw_shape} is already final (an end-to-end head, exported with "
                         f"nms=False); it needs no NMS: write frame.nms: false")
    g = _Graph(f"{PREFIX}post/")
    f32, i64 = np.float32, np.int64
    k = config.max_det
    cxcywh = g.op("Transpose", g.op("Slice", RAW, g.const([0], i64), g.const([4], i64), g.const([1], i64)),
                  perm=[0, 2, 1])  # (1, anchors, 4)
    all_scores = g.op("Slice", RAW, g.const([4], i64), g.const([2**62], i64), g.const([1], i64))  # (1, nc, A)
    chosen = g.op("NonMaxSuppression", cxcywh, all_scores, g.const([k], i64), g.const([config.iou], f32),
                  g.const([config.conf], f32), center_point_box=1)  # (n, 3): batch, class, anchor
    found = g.op("GatherND", all_scores, chosen)  # (n,)
    # the best k over every class: TopK of a constant k (TensorRT's), so pad with k zero-score entries
    top, order = g.op("TopK", g.op("Concat", found, g.const(np.zeros(k), f32), axis=0), g.const([k], i64),
                      outputs=2)
    picked = g.op("Gather", g.op("Concat", chosen, g.const(np.zeros((k, 3)), i64), axis=0), order, axis=0)
    anchors = g.op("Gather", picked, g.const(2, i64), axis=1)
    xywh = g.op("Gather", g.op("Squeeze", cxcywh, g.const([0], i64)), anchors, axis=0)  # (k, 4)
    centre = g.op("Slice", xywh, g.const([0], i64), g.const([2], i64), g.const([1], i64))
    half = g.op("Div", g.op("Slice", xywh, g.const([2], i64), g.const([4], i64), g.const([1], i64)),
                g.const(2.0, f32))
    boxes = g.op("Concat", g.op("Sub", centre, half), g.op("Add", centre, half), axis=1)
    scores = g.op("Unsqueeze", top, g.const([1], i64))
    classes = g.op("Cast", g.op("Gather", picked, g.const([1], i64), axis=1), to=TensorProto.FLOAT)
    inputs = [helper.make_tensor_value_info(RAW, TensorProto.FLOAT, list(raw_shape))]
    if config.input == "frame":  # back to the frame's pixels, as Ultralytics' scale_boxes: minus the padding,
        # over the gain, clipped to the frame
        inputs.append(helper.make_tensor_value_info(LETTERBOX, TensorProto.FLOAT, [5]))
        gain = g.op("Slice", LETTERBOX, g.const([0], i64), g.const([1], i64))
        top_left = g.op("Slice", LETTERBOX, g.const([1], i64), g.const([3], i64))
        height_width = g.op("Slice", LETTERBOX, g.const([3], i64), g.const([5], i64))
        left_top = g.op("Slice", top_left, g.const([1], i64), g.const([-(2**62)], i64), g.const([0], i64),
                        g.const([-1], i64))  # (top, left) -> (x, y) order
        width_height = g.op("Slice", height_width, g.const([1], i64), g.const([-(2**62)], i64), g.const([0], i64),
                            g.const([-1], i64))
        offset = g.op("Concat", left_top, left_top, axis=0)
        limit = g.op("Concat", width_height, width_height, axis=0)
        boxes = g.op("Div", g.op("Sub", boxes, offset), gain)
        boxes = g.op("Max", g.op("Min", boxes, limit), g.const(0.0, f32))
    valid = g.op("Cast", g.op("Greater", scores, g.const(0.0, f32)), to=TensorProto.FLOAT)  # padding rows: zeros
    rows = g.op("Mul", g.op("Concat", boxes, scores, classes, axis=1), valid)
    g.op("Unsqueeze", rows, g.const([0], i64), out=DETECTIONS)
    outputs = [helper.make_tensor_value_info(DETECTIONS, TensorProto.FLOAT, [1, k, 6])]
    return g.model(inputs, outputs, like)


# ------------------------------------------------------------------------------------------- joined to networks


def wrap_onnx(network: Path, config: FrameConfig, dest: Path) -> Path:
    """The ONNX network (plain or QDQ, input `images`, first output `output0`) with the pieces joined to it, saved
    to `dest` with its Ultralytics metadata (`end2end` set when NMS is inside) and ours (`frame`)."""
    import onnx
    from onnx import compose

    model = onnx.load(str(network))
    names = ([i.name for i in model.graph.input], [o.name for o in model.graph.output])
    if names[0] != [IMAGES] or names[1][0] != RAW:
        raise ValueError(f"{network} has inputs {names[0]} and outputs {names[1]}; an Ultralytics export has "
                         f"'{IMAGES}' in and '{RAW}' first out")
    imgsz = model.graph.input[0].type.tensor_type.shape.dim[-1].dim_value
    raw_shape = tuple(d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim)
    metadata = {p.key: p.value for p in model.metadata_props}
    del model.metadata_props[:]
    del model.graph.output[1:]  # only the detections leave (a one-to-one head's extra outputs are not read)
    letterbox = config.input == "frame"
    if config.input != "tensor":
        model = compose.merge_models(pre_graph(imgsz, letterbox, model), model, io_map=[(IMAGES, IMAGES)],
                                     outputs=[RAW, LETTERBOX] if letterbox else [RAW])
    if config.nms:
        model = compose.merge_models(model, post_graph(raw_shape, config, model),
                                     io_map=[(RAW, RAW)] + ([(LETTERBOX, LETTERBOX)] if letterbox else []))
    onnx.helper.set_model_props(model, {**metadata, **_metadata(config, imgsz)})
    dest.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dest))
    return dest


def wrap_openvino(ir_folder: Path, config: FrameConfig, dest: Path) -> Path:
    """An OpenVINO IR folder with the pieces joined to its network (the same ONNX pieces, converted by OpenVINO,
    then connected port to port), saved as `dest` with metadata.yaml updated as `wrap_onnx` does."""
    import openvino as ov

    from edgecompress.device.openvino import xml_of

    network = ov.Core().read_model(str(xml_of(ir_folder)))
    imgsz = network.inputs[0].get_partial_shape()[-1].get_length()
    sources = {RAW: network.get_results()[0].input_value(0)}  # tensor name -> the port that computes it
    parameters = network.get_parameters()
    like = _opset_model()
    if config.input != "tensor":
        pre = _convert(pre_graph(imgsz, config.input == "frame", like))
        sources |= {o.get_any_name(): r.input_value(0) for o, r in zip(pre.outputs, pre.get_results())}
        parameters[0].output(0).replace(sources[IMAGES])
        parameters = pre.get_parameters()
    results = [network.get_results()[0]]
    if config.nms:
        raw_shape = tuple(d.get_length() for d in sources[RAW].get_partial_shape())
        post = _convert(post_graph(raw_shape, config, like))
        for parameter in post.get_parameters():
            parameter.output(0).replace(sources[parameter.get_friendly_name()])
        results = post.get_results()
    # Ultralytics' model_info entries (OpenVINO Model API's preprocessing) are not carried: the graph does its own
    model = ov.Model(results, parameters, "frame")
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    ov.save_model(model, str(dest / xml_of(ir_folder).name), compress_to_fp16=False)  # the network's file name
    metadata = yaml.safe_load((ir_folder / "metadata.yaml").read_text())
    (dest / "metadata.yaml").write_text(yaml.safe_dump({**metadata, **_metadata(config, imgsz, as_text=False)},
                                                       sort_keys=False))
    return dest


def _convert(piece: onnx.ModelProto) -> Any:
    """An ONNX piece as an OpenVINO model."""
    import openvino as ov

    return ov.convert_model(io.BytesIO(piece.SerializeToString()))


def _metadata(config: FrameConfig, imgsz: int, as_text: bool = True) -> dict[str, Any]:
    """Ultralytics' `end2end` (its validator then reads the rows as final) and our `frame` description."""
    entries: dict[str, Any] = {"end2end": config.nms, "frame": config.describe(imgsz)}
    return {k: json.dumps(v) if isinstance(v, dict) else str(v) for k, v in entries.items()} if as_text else entries


def _opset_model() -> onnx.ModelProto:
    """An empty model whose IR version and opset the pieces take when they are not joined to an ONNX network."""
    from onnx import helper

    return helper.make_model(helper.make_graph([], "opset", [], []), opset_imports=[helper.make_opsetid("", 18)])
