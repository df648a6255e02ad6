"""Latency and memory of one artifact in its runtime: the run's benchmark stage and `compress bench` on a device.

`measure_isolated` times in a fresh process (`python -m edgecompress.device.bench SPEC.json OUT.json`), so the
peak resident memory it reports is that of one runtime session alone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import edgecompress.device  # noqa: F401  (registers every runtime)
from edgecompress import __version__, progress
from edgecompress.config import to_dict
from edgecompress.device.detector import Detector, sample_input
from edgecompress.device.host import device_name, host_info, peak_rss_mb, rss_mb
from edgecompress.device.images import dataset_images, read_images
from edgecompress.device.postprocess import DEPLOYED, Thresholds
from edgecompress.device.runtime import RUNTIMES, artifact_bytes, runtime_of
from edgecompress.device.timing import BenchConfig, summarize, timed
from edgecompress.errors import UserError

LOG = logging.getLogger("edgecompress")
SCHEMA = "edgecompress.bench/1"
BENCH_IMAGES = 16  # end-to-end latency cycles through this many images of the eval split
TAKES = {"frame": "the decoded frame (uint8 BGR, any size), letterboxed inside to {s}x{s}",
         "letterboxed": "the frame letterboxed (uint8 BGR 1x{s}x{s}x3)", "tensor": "1x3x{s}x{s} float"}


def measure(artifact: Path, runtime: str, imgsz: int | None, config: BenchConfig, images: list[Path],
            default_imgsz: int = 640, thresholds: Thresholds = DEPLOYED) -> dict[str, Any]:
    """Time `artifact` in `runtime`, end to end and inference alone.

    End to end is the figure that counts on a device: real images of the eval split, each decoded from its file
    once, before any timing, at its native size (as a camera delivers frames), then the whole path to detections
    in the frame's pixels (edgecompress.device.detector: letterbox, inference, NMS at `thresholds`, boxes back to
    the frame; inside the artifact what it holds). Inference alone is the artifact's one call on a fixed input of
    what it takes (the first image, for an artifact fed uint8 frames). Images that do not decode are skipped, with a
    warning that names them.

    `imgsz` None: the artifact's own input size, or `default_imgsz` where its input size is dynamic."""
    engine = RUNTIMES[runtime]
    rss_before = rss_mb()
    start = time.perf_counter()
    session = engine.load(artifact, config.threads)
    load_s = time.perf_counter() - start
    static = session.imgsz
    if imgsz is not None and static is not None and static != imgsz:
        raise UserError(f"{artifact} takes {static}x{static} input, not the {imgsz} asked for; "
                        f"bench it at imgsz {static}")
    imgsz = imgsz or static or default_imgsz
    decoded, broken = read_images(images)
    if broken:
        LOG.warning("skipped %d image(s) that do not decode (truncated or not images): %s", len(broken),
                    ", ".join(map(str, broken)))
    if images and not decoded:
        raise UserError(f"none of the {len(images)} benchmark images decodes: {', '.join(map(str, broken))}; "
                        f"replace them or check the dataset")
    x = sample_input(session, imgsz, decoded[0] if decoded else None)
    infer = session.infer
    with progress.task("timing inference", total=config.runs, unit="run") as runs:
        inference = summarize(timed(lambda _: infer(x), config, runs.advance))
    device_mb = [session.device_memory_mb()] if session.device_memory_mb else []
    detect = Detector(session, imgsz, thresholds)
    e2e = None
    if decoded:
        with progress.task("timing end to end", total=config.runs, unit="run") as runs:
            e2e = summarize(timed(lambda i: detect(decoded[i % len(decoded)]), config, runs.advance))
    memory = {"peak_rss_mb": round(peak_rss_mb(), 1), "session_rss_mb": round(rss_mb() - rss_before, 1)}
    if session.device_memory_mb:  # sampled between the timed phases, not inside them, so timing stays clean
        memory["peak_gpu_mb"] = round(max(device_mb + [session.device_memory_mb()]), 1)
    return {
        "artifact": str(artifact), "runtime": runtime, "imgsz": imgsz, "batch": 1,
        "takes": session.takes, "nms_inside": bool(session.frame and session.frame["nms"]),
        "file_mb": round(artifact_bytes(artifact) / 2**20, 3),
        "load_s": round(load_s, 3),
        "end_to_end": e2e, "inference": inference,
        "thresholds": asdict(thresholds),
        "memory": memory,
        "threads": config.threads or os.cpu_count(),
        "execution_precision": session.execution_precision,
        "host": {**host_info(), "runtime_version": engine.version()},
    }


def measure_isolated(artifact: Path, runtime: str, imgsz: int | None, config: BenchConfig, images: list[Path],
                     workdir: Path, env: dict[str, str] | None = None,
                     thresholds: Thresholds = DEPLOYED) -> dict[str, Any]:
    """`measure` in a fresh process, so that its peak memory is one session's alone. `workdir` keeps the spec and
    the result (bench.json); `env` adds to the worker's environment."""
    workdir.mkdir(parents=True, exist_ok=True)
    spec = {"artifact": str(artifact), "runtime": runtime, "imgsz": imgsz, "config": to_dict(config),
            "images": [str(p) for p in images], "thresholds": asdict(thresholds)}
    (workdir / "spec.json").write_text(json.dumps(spec, indent=2))
    proc = subprocess.Popen([sys.executable, "-m", "edgecompress.device.bench", str(workdir / "spec.json"),
                             str(workdir / "bench.json")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, **(env or {})})
    errors = []
    for line in proc.stderr:  # the worker's progress events, warnings (skipped images) and errors, as they come
        if line.startswith("{"):
            progress.emit({k: v for k, v in json.loads(line).items() if k not in ("time", "stage")})
        elif line.startswith("warning: "):
            LOG.warning(line.removeprefix("warning: ").rstrip())
        else:
            errors.append(line)
    if proc.wait():
        text = "".join(errors)
        if proc.returncode == UserError.exit_code and errors:  # bad input the worker named: pass its line on
            raise UserError(errors[-1].removeprefix("error: ").rstrip())
        raise RuntimeError(f"benchmark of {artifact} failed:\n{text[-3000:]}")
    return json.loads((workdir / "bench.json").read_text())


def artifact_digest(artifact: Path) -> str:
    """sha256 of an artifact's bytes (a folder's files in name order), which names it across machines."""
    h = hashlib.sha256()
    for f in sorted(p for p in artifact.rglob("*") if p.is_file()) if artifact.is_dir() else [artifact]:
        h.update(f.read_bytes())
    return h.hexdigest()


def bench_artifact(artifact: Path, target: dict[str, str] | None, imgsz: int, data: Path | None,
                   config: BenchConfig, out: Path) -> dict[str, Any]:
    """`compress bench`: time an artifact on this device and write bench.json and bench.md into `out`.

    `target` names the target it was built for (name, runtime, description), if known; `imgsz` is used where the
    artifact's input size is dynamic."""
    artifact = artifact.resolve()
    if not artifact.exists():
        endings = ", ".join(f"*{r.suffix}" for r in RUNTIMES.values())
        raise UserError(f"artifact {artifact} does not exist; pass the artifact to time ({endings})")
    runtime = runtime_of(artifact)
    runtime.check()
    images = dataset_images(data.resolve())[:BENCH_IMAGES] if data else []
    result = measure(artifact, runtime.name, None, config, images, imgsz)
    report = {
        "schema": SCHEMA, "edgecompress": __version__,
        "device": device_name(result["host"]),
        "target": target,
        "sha256": artifact_digest(artifact),
        "data": str(data.resolve()) if data else None,
        "config": to_dict(config),
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
             f"- runtime: {report['runtime']} {host.get('runtime_version', '')}, "
             + f"input {TAKES[report['takes']].format(s=report['imgsz'])}"
             + (", NMS inside" if report["nms_inside"] else "") + f", {report['threads']} threads",
             f"- device: {host['cpu']}, {host['cores']} cores, {host['machine']}"
             + "".join(f", {k.replace('_', ' ')} {host[k]}" for k in ("board", "gpu", "power_mode") if host.get(k)),
             f"- target: {report['target']['name']}" if report["target"] else "- target: not given",
             "", "| timing | runs | p50 (ms) | p90 (ms) | p99 (ms) | mean (ms) | throughput (img/s) |",
             "|---|---|---|---|---|---|---|"]
    for name, key in (("end to end", "end_to_end"), ("inference", "inference")):
        if t := report[key]:
            lines.append(f"| {name} | {t['runs']} | {t['p50_ms']:.2f} | {t['p90_ms']:.2f} | {t['p99_ms']:.2f} "
                         f"| {t['mean_ms']:.2f} | {t['throughput_fps']:.1f} |")
    memory = report["memory"]
    lines += ["", f"Memory: peak RSS {memory['peak_rss_mb']:.0f} MB (the session added "
                  f"{memory['session_rss_mb']:.0f} MB)"
              + (f", GPU {memory['peak_gpu_mb']:.0f} MB" if "peak_gpu_mb" in memory else "") + ".", ""]
    if report["end_to_end"]:
        host = [step for step, inside in (("letterbox (OpenCV)", report["takes"] == "frame"),
                                          ("conversion to the float tensor", report["takes"] != "tensor"),
                                          ("NMS (numpy)", report["nms_inside"])) if not inside]
        lines += ["End to end: each image of the dataset decoded once before the timing, at its native size, then "
                  "the frame to detections in its pixels: " + (f"{', '.join(host)} on the host, the rest inside the "
                                                               f"artifact" if host else "all inside the artifact")
                  + ". Inference: the artifact alone on a fixed input.", ""]
    else:
        lines += ["End to end (the decoded frame to detections: letterbox, inference, NMS) was skipped: pass --data "
                  "YAML to time it on real images.", ""]
    lines += [f"Batch 1 after {report['config']['warmup']} warm-up runs; at most {report['config']['runs']} timed "
              f"runs or {report['config']['max_seconds']:.0f} s.", ""]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """`python -m edgecompress.device.bench SPEC.json OUT.json`: measure in this fresh process, write the result."""
    logging.basicConfig(format="warning: %(message)s", level=logging.WARNING)
    spec = json.loads(Path(argv[0]).read_text())
    try:
        with progress.reporting(progress.JsonLines(sys.stderr)):  # read back by measure_isolated
            result = measure(Path(spec["artifact"]), spec["runtime"], spec["imgsz"], BenchConfig(**spec["config"]),
                             [Path(p) for p in spec["images"]], thresholds=Thresholds(**spec["thresholds"]))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    Path(argv[1]).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
