"""Latency and memory of one artifact in its runtime: the timing core of the run's benchmark and `compress bench`.

numpy + OpenCV + the artifact's runtime only (no torch, no ultralytics), so it runs on a Jetson or a
Raspberry Pi that has nothing else. Run as `python -m edgecompress.bench SPEC.json OUT.json` it measures in a
fresh process, so the peak resident memory it reports is that of one runtime session alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress import __version__
from edgecompress.errors import UserError
from edgecompress.pipeline.config import require
from edgecompress.targets import Target
from edgecompress.targets.runtimes import RUNTIMES, artifact_bytes

SCHEMA = "edgecompress.bench/1"
BENCH_IMAGES = 16  # end-to-end latency cycles through this many images of the eval split
IMAGE_SUFFIXES = {".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp"}  # what cv2.imread reads


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


def letterbox(image: np.ndarray, imgsz: int) -> np.ndarray:
    """Ultralytics' inference LetterBox for a static square input: scale to fit, centre, pad with 114."""
    import cv2

    h, w = image.shape[:2]
    r = min(imgsz / h, imgsz / w)
    new_w, new_h = max(round(w * r), 1), max(round(h * r), 1)
    if (new_w, new_h) != (w, h):
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    dw, dh = (imgsz - new_w) / 2, (imgsz - new_h) / 2
    top, bottom = round(dh - 0.1), round(dh + 0.1)  # the same rounding as Ultralytics, pixel for pixel
    left, right = round(dw - 0.1), round(dw + 0.1)
    return cv2.copyMakeBorder(image, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(114, 114, 114))


def to_input(image: np.ndarray, imgsz: int) -> np.ndarray:
    """A decoded BGR image as the exported model's input: letterboxed, RGB, /255, NCHW float32 of batch 1."""
    rgb = letterbox(image, imgsz)[..., ::-1]
    return np.ascontiguousarray(rgb.transpose(2, 0, 1)[None], dtype=np.float32) / 255.0


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


def measure(artifact: Path, runtime: str, imgsz: int | None, config: BenchConfig, images: list[Path],
            default_imgsz: int = 640) -> dict[str, Any]:
    """Time `artifact` in `runtime`: inference alone on a fixed input, then end to end on real images
    (letterbox + inference + NMS; decoding the file is excluded, as in Ultralytics' speed figures).

    `imgsz` None: the artifact's own input size, or `default_imgsz` where its input size is dynamic."""
    import cv2

    rss_before = _rss_mb()
    start = time.perf_counter()
    session = RUNTIMES[runtime].load(artifact, config.threads)
    infer = session.infer
    load_s = time.perf_counter() - start
    static = session.input_shape[-1]
    if imgsz is not None and static is not None and static != imgsz:
        raise UserError(f"{artifact} takes {static}x{static} input, not the {imgsz} asked for; "
                        f"bench it at imgsz {static}")
    imgsz = imgsz or static or default_imgsz
    x = np.random.default_rng(0).random((1, 3, imgsz, imgsz), dtype=np.float32)
    inference = summarize(_timed(lambda _: infer(x), config))
    device_mb = [session.device_memory_mb()] if session.device_memory_mb else []
    decoded = [cv2.imread(str(p)) for p in images]
    if any(im is None for im in decoded):
        raise ValueError(f"cannot read one of the benchmark images: {[str(p) for p in images]}")

    def end_to_end(i: int) -> None:
        postprocess(infer(to_input(decoded[i % len(decoded)], imgsz))[0])

    e2e = summarize(_timed(end_to_end, config)) if decoded else None
    memory = {"peak_rss_mb": round(_peak_rss_mb(), 1), "session_rss_mb": round(_rss_mb() - rss_before, 1)}
    if session.device_memory_mb:  # sampled between the timed phases, not inside them, so timing stays clean
        memory["peak_gpu_mb"] = round(max(device_mb + [session.device_memory_mb()]), 1)
    return {
        "artifact": str(artifact), "runtime": runtime, "imgsz": imgsz, "batch": 1,
        "file_mb": round(artifact_bytes(artifact) / 2**20, 3),
        "load_s": round(load_s, 3),
        "inference": inference, "end_to_end": e2e,
        "memory": memory,
        "threads": config.threads or os.cpu_count(),
        "execution_precision": session.execution_precision,
        "host": host_info(runtime),
    }


def host_info(runtime: str | None = None) -> dict[str, Any]:
    """The facts that make a latency figure comparable: CPU model, cores, OS, Python, runtime version, and where
    readable the board (Jetson, Raspberry Pi), the Jetson power mode and the NVIDIA GPU."""
    cpu = platform.processor() or platform.machine()
    for line in (_read("/proc/cpuinfo") or "").splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    info: dict[str, Any] = {"cpu": cpu, "cores": os.cpu_count(), "machine": platform.machine(),
                            "os": platform.platform(), "python": platform.python_version()}
    if board := (_read("/proc/device-tree/model") or "").strip("\x00 \n"):  # Jetsons and Raspberry Pis have one
        info["board"] = board
    if mode := _jetson_power_mode():
        info["power_mode"] = mode
    if runtime:
        module = __import__(RUNTIMES[runtime].module)
        info["runtime_version"] = getattr(module, "__version__", "unknown")
    if runtime == "tensorrt" and "board" not in info and shutil.which("nvidia-smi"):  # a discrete GPU
        info["gpu"] = _output(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"])
    return info


def device_name(host: dict[str, Any]) -> str:
    """A short name for the machine a figure was measured on: the board, else the GPU or CPU model."""
    name = host.get("board") or host.get("gpu") or host["cpu"]
    return re.sub(r"\((R|TM|tm)\)|\s+CPU\b|\s+@.*|\s+\d+-Core Processor", "", name).strip()


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return None


def _output(command: list[str]) -> str:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def _jetson_power_mode() -> str | None:
    """The Jetson's nvpmodel power mode (it sets clocks and cores, so latency depends on it), or None."""
    if shutil.which("nvpmodel"):
        for line in _output(["nvpmodel", "-q"]).splitlines():
            if line.startswith("NV Power Mode:"):
                return line.split(":", 1)[1].strip()
    conf = _read("/etc/nvpmodel.conf")
    return power_mode_from(conf, _read("/var/lib/nvpmodel/status")) if conf else None


def power_mode_from(conf: str, status: str | None) -> str | None:
    """The power mode's name from nvpmodel.conf and nvpmodel's status file (`pmode:0002 ...`); without a status,
    the conf's default mode, marked as such."""
    names = dict(re.findall(r"<\s*POWER_MODEL\s+ID=(\d+)\s+NAME=(\S+?)\s*>", conf))
    if status and (current := re.search(r"pmode:(\d+)", status)):
        mode = str(int(current.group(1)))
        return names.get(mode, f"mode {mode}")
    if default := re.search(r"PM_CONFIG\s+DEFAULT=(\d+)", conf):
        return f"{names.get(default.group(1), 'mode ' + default.group(1))} (the default; current mode unreadable)"
    return None


def runtime_of(artifact: Path) -> str:
    """The runtime that runs an artifact, from its name as Ultralytics' AutoBackend reads it."""
    name = artifact.name
    if name.endswith((".engine", ".plan")):
        return "tensorrt"
    if name.endswith("_openvino_model") or name.endswith(".xml"):
        return "openvino"
    if name.endswith(".onnx"):
        return "onnxruntime"
    raise UserError(f"cannot tell the runtime of {artifact}: pass a .onnx, an *_openvino_model folder or .xml, "
                    f"or a TensorRT .engine/.plan")


def dataset_images(data_yaml: Path, split: str = "val") -> list[Path]:
    """The sorted image files of one split of an Ultralytics dataset YAML, read with pyyaml alone (no ultralytics):
    `path` (the root; relative to the working folder, else to the YAML) joined with the split's folders or list
    files."""
    import yaml

    try:
        info = yaml.safe_load(data_yaml.read_text())
    except OSError as e:
        raise UserError(f"dataset YAML {data_yaml} cannot be read ({e.strerror}); check the --data path") from None
    entries = info.get(split) if isinstance(info, dict) else None
    if not entries:
        raise UserError(f"dataset YAML {data_yaml} has no '{split}' split; add '{split}: images/{split}' to it")
    root = Path(info.get("path") or ".")
    if not root.is_absolute():
        root = root.resolve() if info.get("path") and root.exists() else (data_yaml.parent / root).resolve()
    entries = [root / e for e in (entries if isinstance(entries, list) else [entries])]
    return list_images(entries, f"dataset YAML {data_yaml}: its '{split}' split")


def list_images(entries: list[Path], where: str) -> list[Path]:
    """The sorted image files of a split's entries: folders (searched recursively) and list files (one image path
    a line, relative to the list's folder). `where` names the split in errors."""
    files: list[Path] = []
    for entry in entries:
        if entry.is_dir():
            files += [p for p in entry.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES]
        elif entry.is_file():
            lines = [line.strip() for line in entry.read_text().splitlines()]
            files += [(entry.parent / line).resolve() for line in lines if line]
        else:
            raise UserError(f"{where}: {entry} does not exist; fix the YAML's 'path' or the split's entry")
    if not files:
        raise UserError(f"{where} holds no images; point it at a folder of images")
    return sorted(files)


def artifact_digest(artifact: Path) -> str:
    """sha256 of an artifact's bytes (a folder's files in name order), which names it across machines."""
    h = hashlib.sha256()
    for f in sorted(p for p in artifact.rglob("*") if p.is_file()) if artifact.is_dir() else [artifact]:
        h.update(f.read_bytes())
    return h.hexdigest()


def bench_artifact(artifact: Path, target: Target | None, data: Path | None, config: BenchConfig,
                   out: Path) -> dict[str, Any]:
    """`compress bench`: time an artifact on this device and write bench.json and bench.md into `out`."""
    artifact = artifact.resolve()
    if not artifact.exists():
        raise UserError(f"artifact {artifact} does not exist; pass the .onnx, *_openvino_model or .engine to time")
    runtime = runtime_of(artifact)
    RUNTIMES[runtime].check()
    images = dataset_images(data.resolve())[:BENCH_IMAGES] if data else []
    result = measure(artifact, runtime, None, config, images, target.imgsz if target else 640)
    report = {
        "schema": SCHEMA, "edgecompress": __version__,
        "device": device_name(result["host"]),
        "target": {"name": target.name, "runtime": target.runtime, "description": target.description}
        if target else None,
        "sha256": artifact_digest(artifact),
        "data": str(data.resolve()) if data else None,
        "config": {"warmup": config.warmup, "runs": config.runs, "max_seconds": config.max_seconds,
                   "threads": config.threads},
        **result,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(report, indent=2))
    (out / "bench.md").write_text(bench_markdown(report))
    return report


def bench_markdown(report: dict[str, Any]) -> str:
    """bench.md: the figures of one bench.json for a person."""
    host = report["host"]
    lines = [f"# On-device benchmark: {Path(report['artifact']).name} on {report['device']}", "",
             f"- artifact: `{report['artifact']}` ({report['file_mb']:.1f} MB, sha256 {report['sha256'][:12]}), "
             f"loaded in {report['load_s']:.2f} s",
             f"- runtime: {report['runtime']} {host.get('runtime_version', '')}, input {report['batch']}x3x"
             f"{report['imgsz']}x{report['imgsz']}, {report['threads']} threads",
             f"- device: {host['cpu']}, {host['cores']} cores, {host['machine']}"
             + "".join(f", {k.replace('_', ' ')} {host[k]}" for k in ("board", "gpu", "power_mode") if host.get(k)),
             f"- target: {report['target']['name']}" if report["target"] else "- target: not given",
             "", "| timing | runs | p50 (ms) | p90 (ms) | p99 (ms) | mean (ms) | throughput (img/s) |",
             "|---|---|---|---|---|---|---|"]
    for name, key in (("inference", "inference"), ("end to end", "end_to_end")):
        if t := report[key]:
            lines.append(f"| {name} | {t['runs']} | {t['p50_ms']:.2f} | {t['p90_ms']:.2f} | {t['p99_ms']:.2f} "
                         f"| {t['mean_ms']:.2f} | {t['throughput_fps']:.1f} |")
    memory = report["memory"]
    lines += ["", f"Memory: peak RSS {memory['peak_rss_mb']:.0f} MB (the session added "
                  f"{memory['session_rss_mb']:.0f} MB)"
              + (f", GPU {memory['peak_gpu_mb']:.0f} MB" if "peak_gpu_mb" in memory else "") + ".", ""]
    if not report["end_to_end"]:
        lines += ["End to end (letterbox + inference + NMS) was skipped: pass --data YAML to time it on real images.",
                  ""]
    lines += [f"Batch 1 after {report['config']['warmup']} warm-up runs; at most {report['config']['runs']} timed "
              f"runs or {report['config']['max_seconds']:.0f} s.", ""]
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    """`python -m edgecompress.bench SPEC.json OUT.json`: measure in this fresh process, write the result."""
    spec = json.loads(Path(argv[0]).read_text())
    result = measure(Path(spec["artifact"]), spec["runtime"], spec["imgsz"], BenchConfig(**spec["config"]),
                     [Path(p) for p in spec["images"]])
    Path(argv[1]).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
