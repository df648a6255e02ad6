"""Post-training INT8 for a target: calibrate once, build with each of the target's quantizers through the
accuracy-aware fallback, and keep the better by measured accuracy, then latency. Needs no torch."""

from __future__ import annotations

import functools
import json
import shutil
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgecompress import progress
from edgecompress.calibration.data import Batches
from edgecompress.calibration.sensitivity import lost_signal
from edgecompress.files import copy_over
from edgecompress.quantize.config import QuantConfig
from edgecompress.quantize.fallback import accuracy_aware
from edgecompress.quantize.qdq import quantize_qdq
from edgecompress.quantize.quantizers import QUANTIZERS, Job, Quantizer
from edgecompress.quantize.scheme import Scheme
from edgecompress.targets.base import Target

if TYPE_CHECKING:
    from edgecompress.yolo.model import Evaluator

SENSITIVITY_IMAGES = 8  # enough to rank layers by the signal they lose; the ranking only orders the fallback
# Choosing between candidates that both hold the budget: the candidates take turns (the one
# turn-taking timer), so that a shared machine's noise hits both alike. Their networks alone are timed: the frame's
# processing (edgecompress.targets.frame) is the same for both, so the faster network is the faster end to end.
CHOICE_TURNS = 48  # timed calls of each (60 with the untimed ones after each switch)
# Candidates both within the budget and this close in latency (relative) run alike: the more accurate is kept.
# With the same placement the two x86 quantizers time within 1% of each other, where this machine's timings move
# by a few percent between rounds (BENCHMARKS.md, "x86 QDQ with NNCF's whole placement").
SAME_SPEED = 0.03


def quantizers(config: QuantConfig, target: Target) -> list[str]:
    """The INT8 candidates to build: the target's quantizers under `auto`, else the one the recipe names."""
    if target.int8 is None:
        raise ValueError(f"target {target.name} runs no INT8")  # the target's preset refuses such a recipe
    return list(target.int8.quantizers) if config.quantizer == "auto" else [config.quantizer]


def quantize(onnx_fp32: Path, fp32_artifact: Path, config: QuantConfig, target: Target,
             evaluate: Evaluator, workdir: Path, baseline: float) -> tuple[Path, dict]:
    """PTQ of the FP32 model for `target`: the exported ONNX (with its metadata.yaml beside it) and the same model
    in the target's runtime (`fp32_artifact`: the ONNX itself, or its OpenVINO IR), whose mAP50-95 `baseline` the
    caller measured already. Returns the target's INT8 artifact (loadable by `ultralytics.YOLO`) and a JSON-able
    info dict (the calibration methods tried and the one kept, scheme, calibration images, the layers the fallback
    kept in float, timings, and which quantizer was kept and why when the target has several).

    Each quantizer first builds one model per calibration method (the statistics are collected once) and keeps the
    most accurate; only then, if that one is over the budget, does the fallback keep layers in float, ranked by the
    quantization noise of the activations each reads in the quantized model. `evaluate` measures every candidate
    in its runtime (the run's evaluation protocol); its dataset gives the calibration images."""
    onnx_fp32, workdir = Path(onnx_fp32), Path(workdir)
    images = evaluate.dataset.calibration_images(config.calibration_images, config.seed)
    job = Job(onnx_fp32, fp32_artifact, target, config, Scheme.of(target, config), images, evaluate.imgsz)
    names = quantizers(config, target)

    def score(artifact: Path) -> float:
        return evaluate(artifact, workdir / "eval")["map50_95"]

    clock = time.perf_counter()
    results, methods = {}, {}
    for name in names:  # candidates build artifacts of the same names: each gets a folder, the kept one moves up
        outdir = workdir / f"candidate-{name}" if len(names) > 1 else workdir
        quantizer = QUANTIZERS[name]
        tried = methods_tried(quantizer, job, outdir, score)
        method = max(tried, key=lambda m: tried[m][1])
        methods[name] = {"kept": method, "tried": {m: {"map50_95": s, "drop_points": round((baseline - s) * 100, 3)}
                                                   for m, (_, s) in tried.items()}}
        build = functools.partial(quantizer.build, job, outdir=outdir, method=method)
        ranking = functools.partial(_ranking, job, method if quantizer.calibrates else _best_calibration(methods),
                                    workdir / "ranking")
        results[name] = accuracy_aware(build, score, ranking, baseline, config.max_map_drop, config.max_float_layers,
                                       start=tried[method])
    job.timings["quantize_and_evaluate_s"] = round(time.perf_counter() - clock, 1)
    chosen, artifact = names[0], results[names[0]][0]
    choice = None
    if len(results) > 1:
        clock = time.perf_counter()
        chosen, artifact, choice = _keep_better(results, config, workdir)
        job.timings["choose_s"] = round(time.perf_counter() - clock, 1)
    shutil.rmtree(workdir / "ranking", ignore_errors=True)
    method = methods[chosen]["kept"]
    info = {
        "mode": "ptq",
        "quantizer": chosen,
        "method": method,
        "methods": methods[chosen]["tried"],
        "method_reason": _method_reason(methods[chosen]["tried"], method),
        "percentile": config.percentile if method == "percentile" else None,
        "scheme": QUANTIZERS[chosen].describe(job, method),
        "calibration_images": len(images),
        "head_decode_float": job.decode,
        "fp32_map50_95": baseline,
        **results[chosen][1],
        **({"quantizer_choice": choice} if choice else {}),
        "timings": job.timings,
    }
    (workdir / "quantize.json").write_text(json.dumps(info, indent=1))
    return artifact, info


def methods_tried(quantizer: Quantizer, job: Job, outdir: Path,
                  score: Callable[[Path], float]) -> dict[str | None, tuple[Path, float]]:
    """Each calibration method's model with no layer in float (one model, method None, for a quantizer with ranges
    of its own), and its mAP50-95; the most accurate one's artifact is left in `outdir`, the others deleted."""
    methods = job.methods if quantizer.calibrates else [None]
    tried: dict[str | None, tuple[Path, float]] = {}
    with progress.task("calibration methods", total=len(methods), unit="method", each=True) as done:
        for method in methods:
            folder = outdir / "methods" / str(method)
            folder.mkdir(parents=True, exist_ok=True)
            artifact = quantizer.build(job, [], folder, method)
            tried[method] = (artifact, score(artifact))
            done.advance(**{"method": method or "its own", "mAP50-95": tried[method][1]})
    best = max(tried, key=lambda m: tried[m][1])
    kept = outdir / tried[best][0].name
    copy_over(tried[best][0], kept)
    shutil.rmtree(outdir / "methods")
    tried[best] = (kept, tried[best][1])
    return tried


def _best_calibration(methods: dict[str, dict[str, Any]]) -> str:
    """The calibration method another quantizer kept (for a quantizer with ranges of its own: our ranking's), else
    minmax."""
    return next((m["kept"] for m in methods.values() if m["kept"]), "minmax")


def _ranking(job: Job, method: str, folder: Path) -> list[tuple[str, float]]:
    """The layers the fallback may keep in float, most damaged first: the SQNR of the quantized activations each
    reads in the QDQ model of `method`, on SENSITIVITY_IMAGES calibration images."""
    clock = time.perf_counter()
    decode = set(job.decode)
    candidates = [n.name for n in job.proto.graph.node
                  if n.name not in decode and n.op_type not in ("Constant", "Shape")
                  and (job.scheme.quantized_ops is None or n.op_type in job.scheme.quantized_ops)]
    folder.mkdir(parents=True, exist_ok=True)
    quantized = quantize_qdq(job.onnx_fp32, job.ranges(method), folder / f"{method}.onnx", job.scheme, job.decode)
    ranked = lost_signal(quantized, Batches(job.images[:SENSITIVITY_IMAGES], job.imgsz), candidates)
    job.timings["sensitivity_s"] = round(time.perf_counter() - clock, 1)
    return ranked


def _method_reason(tried: dict[str | None, dict[str, float]], kept: str | None) -> str:
    if kept is None:
        return "the quantizer estimates its own ranges"
    if len(tried) == 1:
        return f"{kept}: set by quant.method"
    shown = ", ".join(f"{m} {-t['drop_points']:+.2f}" for m, t in tried.items())
    return f"{kept}: the most accurate of the methods tried (points against FP32: {shown})"


@dataclass(frozen=True)
class Candidate:
    """One INT8 candidate as measured: mAP50-95, its drop against FP32, and its latency in the target runtime."""

    map50_95: float
    drop_points: float
    within_budget: bool
    latency_ms: float


def choose_quantizer(candidates: Mapping[str, Candidate], budget: float) -> tuple[str, str]:
    """The candidate to keep, and why: the only one within the budget; if several are, the fastest (accuracy
    within the budget is what was asked for, so speed decides) unless they run alike (SAME_SPEED), then the most
    accurate of those; if none is, the most accurate."""
    within = [name for name, c in candidates.items() if c.within_budget]
    if len(within) == 1:
        chosen, why = within[0], f"the only candidate within the {budget}-point budget"
    elif within:
        fastest = min(candidates[n].latency_ms for n in within)
        alike = [n for n in within if candidates[n].latency_ms <= fastest * (1 + SAME_SPEED)]
        chosen = max(alike, key=lambda n: candidates[n].map50_95)
        why = (f"all within the {budget}-point budget and as fast (within {SAME_SPEED:.0%}); the more accurate"
               if len(alike) > 1 else f"all within the {budget}-point budget; the faster")
    else:
        chosen = max(candidates, key=lambda n: candidates[n].map50_95)
        why = f"none within the {budget}-point budget; the more accurate"
    measured = "; ".join(f"{name} {-c.drop_points:+.2f} points, {c.latency_ms:.1f} ms"
                         for name, c in candidates.items())
    return chosen, f"{chosen}: {why} ({measured})"


def _keep_better(results: Mapping[str, tuple[Path, dict]], config: QuantConfig,
                 workdir: Path) -> tuple[str, Path, dict[str, Any]]:
    """Time the candidates and keep the better (`choose_quantizer`): its name, its artifact moved up into workdir
    (the candidates' folders are deleted), and the choice with every candidate's figures and fallback steps."""
    import numpy as np

    from edgecompress.device.runtime import runtime_of
    from edgecompress.device.timing import interleaved

    sessions = {}
    for name, (artifact, _) in results.items():
        sessions[name] = runtime_of(artifact).load(artifact, shared=True)
    x = np.random.default_rng(0).random((1, 3, *sessions[next(iter(sessions))].input_shape[-2:]), dtype=np.float32)
    times = interleaved({name: functools.partial(s.infer, x) for name, s in sessions.items()}, CHOICE_TURNS)
    candidates = {name: Candidate(fallback["int8_map50_95"], fallback["drop_points"], fallback["within_budget"],
                                  round(statistics.median(times[name]), 3))
                  for name, (_, fallback) in results.items()}
    chosen, reason = choose_quantizer(candidates, config.max_map_drop)
    kept = workdir / results[chosen][0].name
    copy_over(results[chosen][0], kept)
    for name in results:
        shutil.rmtree(workdir / f"candidate-{name}")
    figures = {name: {**asdict(c), "fallback_steps": results[name][1]["fallback_steps"]}
               for name, c in candidates.items()}
    return chosen, kept, {"setting": config.quantizer, "chosen": chosen, "reason": reason, "candidates": figures}
