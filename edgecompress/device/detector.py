"""The whole frame, as a device runs it: the decoded camera frame in, detections in its pixels out.

One path for every artifact, so that end-to-end latency (edgecompress.device.bench) and the accuracy of artifacts
with the frame's processing inside (edgecompress.yolo.model.Evaluator.frames) measure the same thing: what an
artifact holds runs inside it (edgecompress.targets.frame), the rest (letterbox, conversion to the tensor, NMS, the
boxes' way back to the frame) here, in OpenCV and numpy.
"""

from __future__ import annotations

import numpy as np

from edgecompress.device.images import geometry, letterbox, to_input
from edgecompress.device.postprocess import DEPLOYED, Thresholds, postprocess, to_frame
from edgecompress.device.runtime import Session


class Detector:
    """`detector(frame)`: detections (N, 6: x1 y1 x2 y2 score class, best first) in the frame's pixels, for a decoded
    BGR frame (height, width, 3) of any size. `thresholds` apply where NMS runs here; an artifact with NMS inside
    applies its own, and only its rows above `thresholds.conf` are read."""

    def __init__(self, session: Session, imgsz: int, thresholds: Thresholds = DEPLOYED) -> None:
        self.session, self.imgsz, self.thresholds = session, imgsz, thresholds

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        infer, takes = self.session.infer, self.session.takes
        if takes == "frame":  # everything inside, boxes in the frame's pixels
            return postprocess(infer(frame[None])[0], self.thresholds)
        x = letterbox(frame, self.imgsz)[None] if takes == "letterboxed" else to_input(frame, self.imgsz)
        det = postprocess(infer(x)[0], self.thresholds)
        height, width = frame.shape[:2]
        return to_frame(det, geometry(height, width, self.imgsz), height, width)


def sample_input(session: Session, imgsz: int, frame: np.ndarray | None) -> np.ndarray:
    """A fixed input of what the artifact takes, to time it alone: from `frame` where it takes frames (and one is
    given), else random."""
    rng = np.random.default_rng(0)
    if session.takes == "tensor":
        return rng.random((1, 3, imgsz, imgsz), dtype=np.float32)
    if frame is None:
        return rng.integers(0, 256, (1, imgsz, imgsz, 3), dtype=np.uint8)
    return frame[None] if session.takes == "frame" else letterbox(frame, imgsz)[None]
