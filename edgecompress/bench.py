"""Latency and memory of one artifact in its runtime: the timing core of the run's benchmark and `compress bench`.

numpy + OpenCV + the artifact's runtime only (no torch, no ultralytics), so it runs on a Jetson or a
Raspberry Pi that has nothing else. Run as `python -m edgecompress.bench SPEC.json OUT.json` it measures in a
fresh process, so the peak resident memory it reports is that of one runtime session alone.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress.pipeline.config import require
from edgecompress.targets.runtimes import RUNTIMES, artifact_bytes


@dataclass(frozen=True)
class BenchConfig:
    """How latency is timed: warm-up runs, then up to `runs` timed runs or `max_seconds`, whichever ends first."""

    warmup: int = 10
    runs: int = 100
    max_seconds: float = 30.0
    threads: int = 0  # 0 = the runtime's default (all physical cores)

    def __post_init__(self) -> None:
        require(self.warmup >= 0, f"bench.warmup must be >= 0, got {self.warmup}")
        require(self.runs >= 1, f"bench.runs must be >= 1, got {self.runs}")
        require(self.max_seconds > 0, f"bench.max_seconds must be > 0, got {self.max_seconds}")
        require(self.threads >= 0, f"bench.threads must be >= 0 (0 = runtime default), got {self.threads}")


def letterbox(image: np.ndarray, size: int) -> np.ndarray:
    """BGR HWC uint8 -> 1x3xSxS float32 RGB in [0, 1], resized and padded with 114 as Ultralytics does."""
    import cv2

    h, w = image.shape[:2]
    scale = min(size / h, size / w)
    nh, nw = round(h * scale), round(w * scale)
    resized = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR) if (nh, nw) != (h, w) else image
    canvas = np.full((size, size, 3), 114, dtype=np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    canvas[top:top + nh, left:left + nw] = resized
    return np.ascontiguousarray(canvas[..., ::-1].transpose(2, 0, 1)[None], dtype=np.float32) / 255.0


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


def _timed(step: Callable[[int], object], config: BenchConfig) -> list[float]:
    for i in range(config.warmup):
        step(i)
    times: list[float] = []
    deadline = time.perf_counter() + config.max_seconds
    while len(times) < config.runs and time.perf_counter() < deadline:
        start = time.perf_counter()
        step(len(times))
        times.append((time.perf_counter() - start) * 1e3)
    return times


def summarize(times_ms: list[float]) -> dict[str, float]:
    """p50/p90/p99/mean in ms and throughput in images per second."""
    t = np.asarray(times_ms)
    p50, p90, p99 = np.percentile(t, [50, 90, 99])
    return {"runs": len(t), "p50_ms": round(float(p50), 3), "p90_ms": round(float(p90), 3),
            "p99_ms": round(float(p99), 3), "mean_ms": round(float(t.mean()), 3),
            "throughput_fps": round(1000.0 / float(t.mean()), 2)}


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:  # no procfs: the peak is the best figure there is
        return _peak_rss_mb()


def _peak_rss_mb() -> float:
    # VmHWM, not getrusage: Linux carries ru_maxrss across exec, so a worker started from a large parent
    # would report the parent's peak.
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # macOS reports bytes


def measure(artifact: Path, runtime: str, imgsz: int, config: BenchConfig, images: list[Path]) -> dict[str, Any]:
    """Time `artifact` in `runtime`: inference alone on a fixed input, then end to end on real images
    (letterbox + inference + NMS; decoding the file is excluded, as in Ultralytics' speed figures)."""
    import cv2

    rss_before = _rss_mb()
    start = time.perf_counter()
    infer = RUNTIMES[runtime].load(artifact, config.threads)
    load_s = time.perf_counter() - start
    x = np.random.default_rng(0).random((1, 3, imgsz, imgsz), dtype=np.float32)
    inference = summarize(_timed(lambda _: infer(x), config))
    decoded = [cv2.imread(str(p)) for p in images]
    if any(im is None for im in decoded):
        raise ValueError(f"cannot read one of the benchmark images: {[str(p) for p in images]}")

    def end_to_end(i: int) -> None:
        postprocess(infer(letterbox(decoded[i % len(decoded)], imgsz))[0])

    e2e = summarize(_timed(end_to_end, config)) if decoded else None
    return {
        "artifact": str(artifact), "runtime": runtime, "imgsz": imgsz, "batch": 1,
        "file_mb": round(artifact_bytes(artifact) / 2**20, 3),
        "load_s": round(load_s, 3),
        "inference": inference, "end_to_end": e2e,
        "memory": {"peak_rss_mb": round(_peak_rss_mb(), 1), "session_rss_mb": round(_rss_mb() - rss_before, 1)},
        "threads": config.threads or os.cpu_count(),
        "host": host_info(runtime),
    }


def host_info(runtime: str | None = None) -> dict[str, Any]:
    """The facts that make a latency figure comparable: CPU model, cores, OS, Python, runtime version."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {"cpu": cpu, "cores": os.cpu_count(), "machine": platform.machine(),
                            "os": platform.platform(), "python": platform.python_version()}
    if runtime:
        module = __import__(RUNTIMES[runtime].module)
        info["runtime_version"] = getattr(module, "__version__", "unknown")
    return info


def main(argv: list[str]) -> None:
    """`python -m edgecompress.bench SPEC.json OUT.json`: measure in this fresh process, write the result."""
    spec = json.loads(Path(argv[0]).read_text())
    result = measure(Path(spec["artifact"]), spec["runtime"], spec["imgsz"], BenchConfig(**spec["config"]),
                     [Path(p) for p in spec["images"]])
    Path(argv[1]).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
