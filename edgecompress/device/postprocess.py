"""A detector's raw output to boxes: decode and non-maximum suppression, in numpy."""

from __future__ import annotations

import numpy as np


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression over xyxy boxes."""
    order = scores.argsort()[::-1]
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        tl = np.maximum(boxes[i, :2], boxes[rest, :2])
        br = np.minimum(boxes[i, 2:], boxes[rest, 2:])
        inter = np.prod(np.clip(br - tl, 0, None), axis=1)
        order = rest[inter / (areas[i] + areas[rest] - inter + 1e-9) <= iou]
    return np.array(keep, dtype=np.int64)


def postprocess(output: np.ndarray, conf: float = 0.25, iou: float = 0.7) -> np.ndarray:
    """Detections (N, 6: x1 y1 x2 y2 score class) from a detector's first output, batch 1.

    Handles both head layouts: (1, 4+nc, anchors) that needs NMS, and end-to-end (1, max_det, 6).
    """
    if output.shape[-1] == 6 and output.shape[1] != 6:  # end-to-end head (YOLO26, YOLOv10): already final
        det = output[0]
        return det[det[:, 4] > conf]
    pred = output[0].T  # anchors x (4 + nc)
    scores = pred[:, 4:].max(1)
    mask = scores > conf
    pred, scores = pred[mask], scores[mask]
    xy, wh = pred[:, :2], pred[:, 2:4] / 2
    boxes = np.concatenate([xy - wh, xy + wh], 1)
    classes = pred[:, 4:].argmax(1)
    keep = nms(boxes + classes[:, None] * 7680.0, scores, iou)  # offset boxes by class: per-class NMS in one pass
    return np.concatenate([boxes[keep], scores[keep, None], classes[keep, None].astype(np.float32)], 1)
