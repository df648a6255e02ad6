"""A detector's raw output to detections: box decoding and non-maximum suppression in numpy, and the boxes taken
back from the letterboxed input to the frame's pixels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgecompress.device.images import Geometry

MAX_WH = 7680.0  # Ultralytics' class offset: boxes of different classes never overlap


@dataclass(frozen=True)
class Thresholds:
    """What NMS keeps. The defaults are Ultralytics' predict defaults, what a deployed detector runs; accuracy is
    measured with the recipe's eval.conf (0.001) and eval.iou instead."""

    conf: float = 0.25
    iou: float = 0.7
    max_det: int = 300


DEPLOYED = Thresholds()  # Ultralytics' predict defaults


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float, max_det: int) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression over xyxy boxes, best first, at most `max_det`. Equal scores
    (INT8 heads give many) go in index order, as onnxruntime's and OpenVINO's NonMaxSuppression take them, so the
    host and an artifact with NMS inside keep the same boxes."""
    order = np.argsort(-scores, kind="stable")
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = []
    while order.size and len(keep) < max_det:
        i, rest = order[0], order[1:]
        keep.append(i)
        tl = np.maximum(boxes[i, :2], boxes[rest, :2])
        br = np.minimum(boxes[i, 2:], boxes[rest, 2:])
        inter = np.prod(np.clip(br - tl, 0, None), axis=1)
        order = rest[inter / (areas[i] + areas[rest] - inter + 1e-9) <= iou]
    return np.array(keep, dtype=np.int64)


def postprocess(output: np.ndarray, thresholds: Thresholds = DEPLOYED) -> np.ndarray:
    """Detections (N, 6: x1 y1 x2 y2 score class, best first) from a detector's first output, batch 1, in the
    input's pixels.

    Handles both head layouts: (1, 4+nc, anchors) that needs NMS, and final rows (1, max_det, 6) (an end-to-end
    head, or NMS inside the artifact), of which those above `conf` are kept. NMS as Ultralytics' validator runs it
    and the artifacts that hold it do (edgecompress.targets.frame): every class above `conf` for each anchor, per
    class, the best `max_det`.
    """
    if output.shape[-1] == 6 and output.shape[1] != 6:
        det = output[0]
        return det[det[:, 4] > thresholds.conf]
    pred = output[0].T  # anchors x (4 + nc)
    anchors, classes = np.nonzero(pred[:, 4:] > thresholds.conf)
    scores = pred[anchors, 4 + classes]
    xy, wh = pred[anchors, :2], pred[anchors, 2:4] / 2
    boxes = np.concatenate([xy - wh, xy + wh], 1)
    keep = nms(boxes + classes[:, None] * MAX_WH, scores, thresholds.iou, thresholds.max_det)  # per class, one pass
    return np.concatenate([boxes[keep], scores[keep, None], classes[keep, None].astype(np.float32)], 1)


def to_frame(det: np.ndarray, g: Geometry, height: int, width: int) -> np.ndarray:
    """Detections in the letterboxed input's pixels taken to the frame's (Ultralytics' scale_boxes): minus the
    padding, over the gain, clipped to the frame."""
    out = det.copy()
    out[:, [0, 2]] = np.clip((det[:, [0, 2]] - g.left) / g.gain, 0, width)
    out[:, [1, 3]] = np.clip((det[:, [1, 3]] - g.top) / g.gain, 0, height)
    return out
