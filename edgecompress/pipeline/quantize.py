"""INT8 quantization per target: post-training (calibrated ranges, accuracy-aware fallback) and QAT.

PTQ works on the exported FP32 ONNX and needs no torch: onnxruntime's QDQ quantizer applies the ranges that
edgecompress.calibration estimated (onnx, arm, jetson, and x86 when `openvino_quantizer: qdq`), or NNCF
quantizes the OpenVINO model (x86, `openvino_quantizer: nncf`); x86's default `auto` builds both and keeps the
better by measured accuracy, then latency. QAT fine-tunes with fake quantization (NVIDIA modelopt) through the
fine-tune stage's Ultralytics trainer (see `qat`); torch and ultralytics are imported only there.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import shutil
import statistics
import time
import typing
from collections.abc import Callable, Mapping, Sequence
from copy import deepcopy
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import onnx

from edgecompress.bench import BenchConfig, measure
from edgecompress.calibration import METHODS, Method, Ranges, batches, estimate_ranges, select_images
from edgecompress.calibration.graph import (GRID_PRESERVING, drop_requantization, float_feeders, head_decode_nodes,
                                            head_scope, shared_scale_groups)
from edgecompress.calibration.sensitivity import rank_nodes, tensor_sqnr
from edgecompress.errors import UserError
from edgecompress.pipeline.config import require
from edgecompress.targets import Target
from edgecompress.targets import tensorrt_rules

if TYPE_CHECKING:
    from ultralytics.nn.tasks import DetectionModel

LOG = logging.getLogger(__name__)

QuantMode = Literal["none", "ptq", "qat"]
# x86 INT8: both candidates built and the better kept, NNCF on the OpenVINO model, or OpenVINO reading our QDQ
# ONNX. Neither wins everywhere: on yolov8n-raccoon NNCF lost 0.72 mAP50-95 points where the QDQ ONNX gained, on
# yolo11n-bccd it held FP32's accuracy (BENCHMARKS.md).
OpenVINOQuantizer = Literal["auto", "nncf", "qdq"]
SENSITIVITY_IMAGES = 8  # enough to rank layers by quantization noise; the ranking only orders the fallback
# Choosing between two x86 candidates that both hold the budget: a short timing, the candidates taking turns
# for a few rounds so that a shared machine's noise hits both alike; median of the rounds' medians.
CHOICE_TIMING = BenchConfig(warmup=3, runs=25, max_seconds=10.0)
CHOICE_ROUNDS = 3
# x86 candidates both within the budget and this close in latency (relative) run alike: the more accurate is kept.
# Both now use NNCF's placement and timed 30.0 against 30.0 ms and 30.4 against 30.5 ms (BENCHMARKS.md), where
# this machine's timings move by a few percent between rounds.
SAME_SPEED = 0.03


@dataclass(frozen=True)
class QATConfig:
    """Fake-quantized fine-tuning: short, at a small learning rate, from the already trained weights.

    An optimizer step per batch (`nbs` = `batch`) and frozen BatchNorm statistics: Ultralytics' nominal batch of 64
    accumulates 8 batches into each step, which leaves 3 epochs on a small dataset about 10 steps; on yolo11n-bccd
    those lost 1.3 points for the jetson scheme, where 78 steps win back two thirds of PTQ's 0.64 (BENCHMARKS.md).
    Distillation from the float model (`distill`) holds the fine-tuning to what the model did before: with it,
    yolo11n-bccd went from PTQ's -0.64 to +0.56 (jetson) and +0.36 (onnx/arm), against -0.22 and -0.59 without;
    yolov8n-bccd lost by it (onnx/arm -0.28 against +0.02, jetson -0.61 against +0.01), but still recovered half of
    PTQ's loss wherever PTQ lost more than half a point, which without it yolo11n's onnx/arm did not.
    """

    epochs: int = 3
    lr0: float = 1e-4
    batch: int = 8
    nbs: int = 8  # nominal batch: an optimizer step per nbs / batch batches (Ultralytics' gradient accumulation)
    calibration_batches: int = 8  # batches that set the fake quantizers' ranges before training
    freeze_bn: bool = True  # keep BatchNorm running statistics as loaded while training
    distill: float = 1.0  # weight of distillation from the float model (finetune.OutputDistillation); 0 = off

    def __post_init__(self) -> None:
        require(self.epochs >= 1, f"quant.qat.epochs must be >= 1, got {self.epochs}")
        require(0 < self.lr0 < 0.1, f"quant.qat.lr0 must be in (0, 0.1), got {self.lr0}; "
                                    f"QAT starts from trained weights, write e.g. 0.0001")
        require(self.batch >= 1, f"quant.qat.batch must be >= 1, got {self.batch}")
        require(self.nbs >= 1, f"quant.qat.nbs must be >= 1, got {self.nbs}; write the batch for no accumulation")
        require(self.calibration_batches >= 1,
                f"quant.qat.calibration_batches must be >= 1, got {self.calibration_batches}")
        require(self.distill >= 0, f"quant.qat.distill is a loss weight and must be >= 0, got {self.distill}")


@dataclass(frozen=True)
class QuantConfig:
    """`mode`: none (FP32), ptq (post-training INT8 with calibration) or qat (quantization-aware training).

    The scheme follows the target (its Int8Rules) unless `activations` overrides it; weights are always
    symmetric int8, per output channel unless `per_channel` is false.
    """

    mode: QuantMode = "ptq"  # INT8 where the target runs it (every target here); none keeps FP32
    method: Method = "minmax"  # activation range estimation: minmax, percentile, entropy (KL) or mse
    percentile: float = 99.999  # for method percentile: the share of values kept inside the range
    activations: Literal["target", "symmetric", "asymmetric"] = "target"
    per_channel: bool = True
    calibration_images: int = 300  # drawn from the train split; fewer give ranges that vary with the draw
    seed: int = 0
    max_map_drop: float = 1.0  # mAP50-95 points the INT8 model may lose before layers fall back to float
    max_float_layers: int = 16  # the fallback keeps at most this many layers in float
    openvino_quantizer: OpenVINOQuantizer = "auto"  # x86: both, the better kept; NNCF on the IR; our QDQ ONNX
    qat: QATConfig = field(default_factory=QATConfig)

    def __post_init__(self) -> None:
        require(self.method in METHODS, f"quant.method {self.method!r} is unknown; write one of {', '.join(METHODS)}")
        require(50.0 < self.percentile <= 100.0,
                f"quant.percentile must be in (50, 100], got {self.percentile}; write e.g. 99.999")
        require(self.calibration_images >= 1,
                f"quant.calibration_images must be >= 1, got {self.calibration_images}; write e.g. 300")
        require(self.max_map_drop >= 0, f"quant.max_map_drop must be >= 0 points, got {self.max_map_drop}")
        require(self.max_float_layers >= 0, f"quant.max_float_layers must be >= 0, got {self.max_float_layers}")
        choices = typing.get_args(OpenVINOQuantizer)
        require(self.openvino_quantizer in choices,
                f"quant.openvino_quantizer {self.openvino_quantizer!r} is unknown; "
                f"write one of {', '.join(choices)}")

    @property
    def enabled(self) -> bool:
        return self.mode != "none"


@dataclass(frozen=True)
class Scheme:
    """The INT8 scheme one artifact uses: the target's rules with the recipe's overrides applied."""

    symmetric_activations: bool
    per_channel: bool
    weight_qdq_pair: bool  # float weights behind Q/DQ, as TensorRT's ONNX parser expects; else int8 weights + DQ
    # Q/DQ where NNCF puts its FakeQuantize ops, biases float: at the inputs of convolutions, of Add and of the
    # grid-preserving ops (Concat, Split, MaxPool, Resize), one scale across the tensors those ops join, and no
    # second Q/DQ after them. OpenVINO runs each Q/DQ pair as a FakeQuantize: onnxruntime's placement (every op's
    # output, to fuse QLinear kernels) ran at 1.25x Ultralytics' NNCF model's latency; Q/DQ at convolution inputs
    # alone left Split, Add, MaxPool and Resize in bf16 behind 28 FakeQuantize ops of their own (BENCHMARKS.md).
    nncf_placement: bool = False

    @property
    def activation_type(self) -> str:
        return "int8" if self.symmetric_activations else "uint8"

    @property
    def quantized_ops(self) -> list[str] | None:
        """The op types whose inputs carry Q/DQ; None: every op, outputs included."""
        return ["Conv", "Add", *GRID_PRESERVING] if self.nncf_placement else None

    @classmethod
    def of(cls, target: Target, config: QuantConfig) -> Scheme:
        if target.int8 is None:
            raise UserError(f"target '{target.name}' runs no INT8; write quant.mode: none (or --quant none)")
        rules = target.int8
        symmetric = rules.symmetric_activations if config.activations == "target" else config.activations == "symmetric"
        tensorrt = rules.validator == "tensorrt"
        if tensorrt and not (symmetric and config.per_channel):
            raise UserError("TensorRT needs symmetric INT8 activations and per-channel weights; "
                            "write quant.activations: target and quant.per_channel: true for --target jetson")
        return cls(symmetric, config.per_channel, weight_qdq_pair=tensorrt,
                   nncf_placement=target.runtime == "openvino")


@dataclass(frozen=True)
class _Int8Builder:
    """Turns one FP32 ONNX into the target's INT8 artifact, given the layers to keep in float; calibrated once."""

    onnx_fp32: Path
    target: Target
    scheme: Scheme
    nncf: bool  # NNCF quantizes the OpenVINO model (x86), else onnxruntime's QDQ quantizer applies our ranges
    images: list[Path]
    imgsz: int
    ranges: Ranges | None  # None with NNCF, which estimates its own
    decode: list[str]  # the head's decode, always float
    workdir: Path  # shared by the candidates: the calibrated ranges and the FP32 OpenVINO model NNCF reads
    outdir: Path  # this builder's artifacts

    @classmethod
    def prepare(cls, onnx_fp32: Path, config: QuantConfig, target: Target, data: str, imgsz: int,
                workdir: Path, nncf: bool, outdir: Path | None = None) -> _Int8Builder:
        scheme = Scheme.of(target, config)
        outdir = outdir or workdir
        outdir.mkdir(parents=True, exist_ok=True)
        images = select_images(data, config.calibration_images, config.seed)
        ranges = None if nncf else _cached_ranges(onnx_fp32, images, imgsz, config, scheme, workdir)
        decode = head_decode_nodes(onnx.load(str(onnx_fp32), load_external_data=False))
        return cls(onnx_fp32, target, scheme, nncf, images, imgsz, ranges, decode, workdir, outdir)

    def __call__(self, keep_float: Sequence[str]) -> Path:
        if self.nncf:
            return _nncf_openvino(self.onnx_fp32, self.images, self.imgsz, keep_float, self.workdir,
                                  self.outdir)
        qdq = quantize_qdq(self.onnx_fp32, self.ranges, self.outdir / f"{self.onnx_fp32.stem}_int8.onnx",
                           self.scheme, [*self.decode, *keep_float])
        if self.target.int8.validator == "tensorrt":
            tensorrt_rules.check(onnx.load(str(qdq)))
        if self.target.runtime == "openvino":
            dest = self.outdir / f"{self.onnx_fp32.stem}_int8_openvino_model"
            _qdq_to_openvino(qdq, dest, self.onnx_fp32.parent / "metadata.yaml")
            return dest
        return qdq

    def scheme_info(self) -> dict[str, str]:
        scheme = self.scheme
        return {"activations": "uint8 asymmetric" if self.nncf else
                f"{scheme.activation_type} {'symmetric' if scheme.symmetric_activations else 'asymmetric'}",
                "weights": f"int8 symmetric {'per-channel' if scheme.per_channel else 'per-tensor'}",
                "format": "OpenVINO FakeQuantize" if self.nncf else "QDQ"}


def quantize(onnx_fp32: Path, config: QuantConfig, target: Target, data: str, imgsz: int, workdir: Path,
             evaluate: Callable[[Path], float], baseline: float) -> tuple[Path, dict]:
    """PTQ of the FP32 ONNX (exported by edgecompress.pipeline.yolo.export_onnx, which also writes a metadata.yaml
    beside it that OpenVINO artifacts must carry — see edgecompress/targets/runtimes.py convert_onnx) for `target`.
    Returns the target's artifact (QDQ ONNX for onnxruntime/jetson — keep the ONNX metadata_props so
    `ultralytics.YOLO(artifact)` loads it; an OpenVINO IR folder named `*_openvino_model` with metadata.yaml for x86)
    and a JSON-able info dict (method, scheme, calibration images, fallback layers kept in float, timings; on
    x86 also which quantizer was kept and why, see `choose_quantizer`).
    `evaluate(artifact) -> mAP50-95` measures a candidate in its runtime, for the accuracy-aware fallback, which holds
    it to `baseline`: the mAP50-95 of the FP32 model in the target's runtime (onnx_fp32 itself, or its OpenVINO IR),
    which the caller has measured already (the runner reports it as a stage of its own)."""
    onnx_fp32, workdir = Path(onnx_fp32), Path(workdir)
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    names = _quantizers(config, target)
    # Two candidates build artifacts of the same names, so each gets a folder; the one kept moves up.
    builds = {name: _Int8Builder.prepare(onnx_fp32, config, target, data, imgsz, workdir, nncf=name == "nncf",
                                         outdir=_candidate_dir(workdir, name) if len(names) > 1 else None)
              for name in names}
    timings["calibrate_s"] = round(time.perf_counter() - clock, 1)
    first = next(iter(builds.values()))  # the candidates share images, scheme and decode

    @functools.cache  # computed only when a fallback needs it, and once for both candidates
    def ranking() -> list[tuple[str, float]]:
        clock = time.perf_counter()
        # NNCF needs no ranges of ours, but the ranking does
        used = _cached_ranges(onnx_fp32, first.images, imgsz, config, first.scheme, workdir)
        sqnr = tensor_sqnr(onnx_fp32, used, batches(first.images[:SENSITIVITY_IMAGES], imgsz))
        candidates = [n.name for n in onnx.load(str(onnx_fp32), load_external_data=False).graph.node
                      if n.name not in set(first.decode) and n.op_type not in ("Constant", "Shape")
                      and (first.scheme.quantized_ops is None or n.op_type in first.scheme.quantized_ops)]
        timings["sensitivity_s"] = round(time.perf_counter() - clock, 1)
        return rank_nodes(onnx_fp32, sqnr, candidates)

    clock = time.perf_counter()
    results = {name: accuracy_aware(build, evaluate, ranking, baseline, config.max_map_drop,
                                    config.max_float_layers) for name, build in builds.items()}
    timings["quantize_and_evaluate_s"] = round(time.perf_counter() - clock, 1)
    chosen, artifact = names[0], results[names[0]][0]
    choice = {"setting": config.openvino_quantizer, "chosen": chosen,
              "reason": "set by quant.openvino_quantizer"}
    if len(results) > 1:
        clock = time.perf_counter()
        chosen, artifact, choice = _keep_better(results, config, imgsz, workdir)
        timings["choose_s"] = round(time.perf_counter() - clock, 1)
    build, fallback = builds[chosen], results[chosen][1]
    info = {
        "mode": "ptq",
        "quantizer": "nncf" if build.nncf else "onnxruntime",
        "method": "nncf (MIXED preset, its default range estimators)" if build.nncf else config.method,
        "percentile": config.percentile if config.method == "percentile" and not build.nncf else None,
        "scheme": build.scheme_info(),
        "calibration_images": len(build.images),
        "head_decode_float": build.decode,
        "fp32_map50_95": baseline,
        **fallback,
        **({"openvino_quantizer": choice} if target.int8.quantizer == "nncf" else {}),  # only x86 chooses
        "timings": timings,
    }
    (workdir / "quantize.json").write_text(json.dumps(info, indent=1))
    return artifact, info


def _quantizers(config: QuantConfig, target: Target) -> list[str]:
    """The INT8 candidates to build: "nncf" (NNCF on the OpenVINO model) and/or "qdq" (our QDQ ONNX, which
    OpenVINO reads on x86). Only x86 has the choice; `auto` builds both, NNCF first."""
    if target.int8 is None or target.int8.quantizer != "nncf":
        return ["qdq"]
    return ["nncf", "qdq"] if config.openvino_quantizer == "auto" else [config.openvino_quantizer]


@dataclass(frozen=True)
class Candidate:
    """One x86 INT8 candidate as measured: mAP50-95, its drop against FP32, and its OpenVINO latency."""

    map50_95: float
    drop_points: float
    within_budget: bool
    latency_ms: float


def choose_quantizer(candidates: Mapping[str, Candidate], budget: float) -> tuple[str, str]:
    """The candidate to keep, and why: the only one within the budget; if both are, the faster (accuracy
    within the budget is what was asked for, so speed decides) unless they run alike (SAME_SPEED), then the more
    accurate; if neither is, the more accurate."""
    within = [name for name, c in candidates.items() if c.within_budget]
    if len(within) == 1:
        chosen, why = within[0], f"the only candidate within the {budget}-point budget"
    elif within:
        fast, slow = sorted(within, key=lambda n: candidates[n].latency_ms)
        if candidates[slow].latency_ms <= candidates[fast].latency_ms * (1 + SAME_SPEED):
            chosen = max(within, key=lambda n: candidates[n].map50_95)
            why = f"both within the {budget}-point budget and as fast (within {SAME_SPEED:.0%}); the more accurate"
        else:
            chosen, why = fast, f"both within the {budget}-point budget; the faster"
    else:
        chosen = max(candidates, key=lambda n: candidates[n].map50_95)
        why = f"neither within the {budget}-point budget; the more accurate"
    measured = "; ".join(f"{name} {-c.drop_points:+.2f} points, {c.latency_ms:.1f} ms"
                         for name, c in candidates.items())
    return chosen, f"{chosen}: {why} ({measured})"


def _keep_better(results: Mapping[str, tuple[Path, dict]], config: QuantConfig, imgsz: int,
                 workdir: Path) -> tuple[str, Path, dict[str, Any]]:
    """Time the x86 candidates and keep the better (`choose_quantizer`): its name, its artifact moved up into
    workdir (the other candidate's folder is deleted), and the choice with both candidates' figures and
    fallback steps (the other's steps show what its fallback tried)."""
    latency = _latency_ms({name: artifact for name, (artifact, _) in results.items()}, imgsz)
    candidates = {name: Candidate(fallback["int8_map50_95"], fallback["drop_points"],
                                  fallback["within_budget"], latency[name])
                  for name, (_, fallback) in results.items()}
    chosen, reason = choose_quantizer(candidates, config.max_map_drop)
    LOG.info("x86 INT8 quantizer %s", reason)
    kept = workdir / results[chosen][0].name
    _replace(results[chosen][0], kept)
    for name in results:
        shutil.rmtree(_candidate_dir(workdir, name))
    figures = {name: {**asdict(c), "fallback_steps": results[name][1]["fallback_steps"]}
               for name, c in candidates.items()}
    return chosen, kept, {"setting": config.openvino_quantizer, "chosen": chosen, "reason": reason,
                          "candidates": figures}


def _candidate_dir(workdir: Path, name: str) -> Path:
    return workdir / f"candidate-{name}"


def _latency_ms(artifacts: Mapping[str, Path], imgsz: int) -> dict[str, float]:
    """Each OpenVINO artifact's median inference latency, median over CHOICE_ROUNDS rounds taking turns."""
    p50s: dict[str, list[float]] = {name: [] for name in artifacts}
    for _ in range(CHOICE_ROUNDS):
        for name, artifact in artifacts.items():
            p50s[name].append(measure(artifact, "openvino", imgsz, CHOICE_TIMING, [])["inference"]["p50_ms"])
    return {name: round(statistics.median(times), 3) for name, times in p50s.items()}


def qat(model: DetectionModel, config: QuantConfig, target: Target, data: str, imgsz: int, device: str,
        workdir: Path) -> tuple[Path, dict]:
    """Fake-quantized fine-tuning (config.qat) through the same Ultralytics trainer as the fine-tune stage
    (keeping a pruned architecture), then export to the target's artifact exactly like quantize() returns:
    QDQ ONNX with Ultralytics metadata (onnxruntime targets; jetson: must pass tensorrt_rules.check), or an
    OpenVINO IR folder `*_openvino_model` with metadata.yaml (x86). Returns (artifact, JSON-able info with
    "mode": "qat", the scheme, epochs, timings, and "float_layers": []).

    The fake quantization is NVIDIA modelopt's, through Ultralytics' own `train(quantize=8)`: Ultralytics
    calibrates it, keeps it through EMA, checkpoints and reloads, and exports the trained ranges as Q/DQ, so the
    trainer is the fine-tune stage's unchanged. NNCF's torch QAT and torch.ao would each need that plumbing
    written here (torch.ao's eager/FX QAT also needs the model rewritten with stubs or traced, which YOLO's
    head resists, and is being retired in favour of torchao). modelopt trains TensorRT's scheme (symmetric int8,
    per-channel weights, per-tensor activations).

    Every target then gets the trained weights re-quantized exactly as PTQ quantizes (its scheme, ranges
    calibrated on the train split, the head's decode float). Measured on yolov8n-bccd (BENCHMARKS.md), this beat
    exporting modelopt's own Q/DQ for jetson (-0.46 against -0.73 mAP50-95 points): modelopt calibrates on a few
    augmented batches. The onnxruntime targets need uint8 activations anyway (a symmetric QDQ graph runs about
    2.5x slower there, DESIGN.md). BatchNorm folding scales each weight channel's grid along, so the per-channel
    weight grid that training adapted to survives the re-quantization.
    """
    Scheme.of(target, config)  # a scheme the target cannot run fails here, before the long training
    trained, trained_info = qat_train(model, config, data, imgsz, device, Path(workdir) / "train")
    artifact, info = qat_export(trained, config, target, data, imgsz, workdir)
    info.update(epochs_log=trained_info["epochs_log"], timings={**trained_info["timings"], **info["timings"]})
    (Path(workdir) / "quantize.json").write_text(json.dumps(info, indent=1))
    return artifact, info


def qat_train(model: DetectionModel, config: QuantConfig, data: str, imgsz: int, device: str,
              workdir: Path) -> tuple[DetectionModel, dict]:
    """The fake-quantized fine-tuning of `qat`: returns the best epoch's model, carrying its trained quantizers."""
    from edgecompress.pipeline.finetune import FinetuneConfig, finetune

    clock = time.perf_counter()
    # A short run from trained weights: the preserve schedule (no warm-up, whose bias lr 0.1 wrecks a trained model)
    # at QAT's own rate, and no mosaic, so training sees images like the calibration batches and the val split.
    settings = FinetuneConfig(epochs=config.qat.epochs, schedule="preserve", lr0=config.qat.lr0,
                              freeze_bn=config.qat.freeze_bn, batch=config.qat.batch, nbs=config.qat.nbs,
                              mosaic=0.0, close_mosaic=0, distill=config.qat.distill, seed=config.seed)
    trained, info = finetune(model, settings, data, imgsz, device, workdir, reference=model,
                             qat_batches=config.qat.calibration_batches)
    return trained, {"epochs_log": info["epochs_log"], "timings": {"train_s": round(time.perf_counter() - clock, 1)}}


def qat_export(trained: DetectionModel, config: QuantConfig, target: Target, data: str, imgsz: int,
               workdir: Path) -> tuple[Path, dict]:
    """The target's INT8 artifact of a `qat_train` model: its weights, re-quantized for the target (see `qat`)."""
    from ultralytics.utils.torch_utils import strip_qat

    from edgecompress.pipeline.yolo import export_onnx

    workdir = Path(workdir)
    (workdir / "fp32").mkdir(parents=True, exist_ok=True)
    clock = time.perf_counter()
    plain = deepcopy(trained)
    strip_qat(plain)  # the plain layers with the trained weights
    onnx_fp32, _ = export_onnx(plain, imgsz, workdir / "fp32", "model")
    # QAT has no evaluation to choose by: x86's `auto` takes our QDQ ONNX, which kept more of the training at the
    # same speed (BENCHMARKS.md, "QAT on x86": yolov8n-bccd -0.43 against NNCF's -0.96, yolo11n-bccd +0.78 against
    # +0.60 points)
    build = _Int8Builder.prepare(onnx_fp32, config, target, data, imgsz, workdir,
                                 nncf=_quantizers(config, target) == ["nncf"])
    artifact = build([])
    return artifact, {
        "mode": "qat",
        "framework": "nvidia-modelopt via ultralytics train(quantize=8)",
        "scheme": build.scheme_info(),
        "ranges": "nncf" if build.nncf else f"recalibrated ({config.method}, {len(build.images)} images)",
        "epochs": config.qat.epochs,
        "qat": asdict(config.qat),
        "head_decode_float": build.decode,
        "float_layers": [],
        "timings": {"export_s": round(time.perf_counter() - clock, 1)},
    }


def accuracy_aware(build: Callable[[Sequence[str]], Path], evaluate: Callable[[Path], float],
                   ranking: Callable[[], list[tuple[str, float]]], baseline: float, max_drop: float,
                   max_float: int) -> tuple[Path, dict]:
    """Build the INT8 model; while it loses more than `max_drop` points, keep the 1, 2, 4, ... most sensitive
    layers (by `ranking`, computed once and only when needed) in float. Stops at the first model within budget;
    when none is, returns the most accurate one tried, and says so."""
    steps: list[dict[str, Any]] = []
    ranked: list[tuple[str, float]] = []
    count = 0
    best: tuple[float, Path, list[str]] | None = None
    while True:
        keep = [name for name, _ in ranked[:count]]
        artifact = build(keep)
        score = evaluate(artifact)
        drop = round((baseline - score) * 100, 3)
        steps.append({"float_layers": len(keep), "map50_95": score, "drop_points": drop})
        LOG.info("INT8 with %d layers in float: mAP50-95 %.4f (%.2f points below FP32)", len(keep), score, drop)
        if best is None or score > best[0]:
            best = (score, _stash(artifact), keep)
        if drop <= max_drop or count >= max_float:
            break
        if not ranked:
            ranked = ranking()
        count = min(max(1, 2 * count), max_float, len(ranked))
        if count == len(keep):  # nothing left to keep in float
            break
    score, artifact, keep = best
    final = _unstash(artifact)
    return final, {
        "int8_map50_95": score, "drop_points": round((baseline - score) * 100, 3), "budget_points": max_drop,
        "within_budget": (baseline - score) * 100 <= max_drop,
        "float_layers": [{"node": n, "sqnr_db": s} for n, s in ranked if n in keep],
        "fallback_steps": steps,
    }


def _stash(artifact: Path) -> Path:
    """Keep a copy of a candidate artifact, since the next fallback step overwrites the same path."""
    copy = artifact.with_name(artifact.name + ".best")
    _replace(artifact, copy)
    return copy


def _unstash(copy: Path) -> Path:
    artifact = copy.with_name(copy.name.removesuffix(".best"))
    _replace(copy, artifact)
    shutil.rmtree(copy) if copy.is_dir() else copy.unlink()
    return artifact


def _replace(src: Path, dest: Path) -> None:
    if dest.is_dir():
        shutil.rmtree(dest)
    shutil.copytree(src, dest) if src.is_dir() else shutil.copyfile(src, dest)


def _cached_ranges(model: Path, images: Sequence[Path], imgsz: int, config: QuantConfig, scheme: Scheme,
                   workdir: Path) -> Ranges:
    """The calibrated ranges, reused from workdir/ranges.json when model, images and method are the same."""
    key = {"model_bytes": model.stat().st_size, "model_mtime": model.stat().st_mtime_ns,
           "images": [str(p) for p in images], "imgsz": imgsz, "method": config.method,
           "percentile": config.percentile, "symmetric": scheme.symmetric_activations}
    path, key_path = workdir / "ranges.json", workdir / "ranges.key.json"
    if path.is_file() and key_path.is_file() and json.loads(key_path.read_text()) == key:
        return Ranges.load(path)
    ranges = estimate_ranges(model, batches(images, imgsz), config.method, workdir / "calibration",
                             symmetric=scheme.symmetric_activations, percentile=config.percentile)
    ranges.save(path)
    key_path.write_text(json.dumps(key))
    return ranges


def quantize_qdq(model: Path, ranges: Ranges, dest: Path, scheme: Scheme, exclude: Sequence[str]) -> Path:
    """A QDQ ONNX of `model` with `ranges`, every node the scheme places Q/DQ at but `exclude` quantized;
    keeps the ONNX metadata."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import save_tensors_data

    source = onnx.load(str(model), load_external_data=False)
    if scheme.nncf_placement:
        exclude = [*exclude, *float_feeders(source, exclude)]
        ranges = ranges.unified(shared_scale_groups(source, exclude))
    # Our ranges go in as onnxruntime's calibration cache, so quantize_static applies them without calibrating.
    cache = dest.with_suffix(".ranges-ort.json")
    save_tensors_data(ranges.tensors_data(), cache)
    quantize_static(
        str(model), str(dest), None, quant_format=QuantFormat.QDQ, per_channel=scheme.per_channel,
        activation_type=QuantType.QInt8 if scheme.symmetric_activations else QuantType.QUInt8,
        weight_type=QuantType.QInt8, nodes_to_exclude=list(exclude), calibrate_method=CalibrationMethod.MinMax,
        op_types_to_quantize=scheme.quantized_ops,
        calibration_cache_path=str(cache),
        extra_options={"ActivationSymmetric": scheme.symmetric_activations, "WeightSymmetric": True,
                       # TensorRT takes float weights behind Q/DQ and float biases; onnxruntime fuses
                       # DQ-Conv-Q into QLinearConv only with int8 weights and an int32 bias
                       "AddQDQPairToWeight": scheme.weight_qdq_pair,
                       "QuantizeBias": not (scheme.weight_qdq_pair or scheme.nncf_placement),
                       "OpTypesToExcludeOutputQuantization": scheme.quantized_ops or []},
    )
    cache.unlink()
    quantized = onnx.load(str(dest))
    if scheme.nncf_placement:
        drop_requantization(quantized, exclude)
    del quantized.metadata_props[:]
    quantized.metadata_props.extend(source.metadata_props)
    onnx.save(quantized, str(dest))  # Ultralytics' AutoBackend reads names, stride and imgsz from the metadata
    return dest


def _fp32_openvino(onnx_fp32: Path, workdir: Path) -> Path:
    """The FP32 IR that NNCF quantizes, converted once for both candidates and every fallback step."""
    from edgecompress.targets.runtimes import convert_onnx

    dest = workdir / f"{onnx_fp32.stem}_openvino_model"
    if not (dest / "metadata.yaml").is_file():
        convert_onnx("openvino", onnx_fp32, dest, onnx_fp32.parent / "metadata.yaml")
    return dest


def _qdq_to_openvino(qdq: Path, dest: Path, metadata_yaml: Path) -> None:
    from edgecompress.targets.runtimes import convert_onnx

    if dest.exists():
        shutil.rmtree(dest)
    convert_onnx("openvino", qdq, dest, metadata_yaml)


def _nncf_openvino(onnx_fp32: Path, images: Sequence[Path], imgsz: int, keep_float: Sequence[str],
                   workdir: Path, outdir: Path) -> Path:
    """NNCF post-training quantization of the OpenVINO model (workdir's FP32 IR, converted once), the head's
    decode and `keep_float` ignored; the IR goes into outdir."""
    import nncf
    import openvino as ov

    fp32_dir = _fp32_openvino(onnx_fp32, workdir)
    model = ov.Core().read_model(str(fp32_dir / f"{onnx_fp32.stem}.xml"))
    # OpenVINO keeps ONNX node names; a Conv becomes '<name>/WithoutBiases' plus its bias Add '<name>'. The pattern
    # is the head's decode: everything in the head scope outside its cv2/cv3 conv branches (see calibration.graph).
    scope = head_scope(onnx.load(str(onnx_fp32), load_external_data=False))
    names = [f"{name}/WithoutBiases" for name in keep_float] + list(keep_float)
    ignored = nncf.IgnoredScope(patterns=[rf"^{re.escape(scope)}(?!cv[23]\.\d+/)"], names=names, validate=False)
    quantized = nncf.quantize(model, nncf.Dataset(list(batches(images, imgsz))), preset=nncf.QuantizationPreset.MIXED,
                              subset_size=len(images), ignored_scope=ignored)
    dest = outdir / f"{onnx_fp32.stem}_int8_openvino_model"
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    ov.save_model(quantized, str(dest / f"{onnx_fp32.stem}.xml"), compress_to_fp16=False)
    shutil.copyfile(onnx_fp32.parent / "metadata.yaml", dest / "metadata.yaml")
    return dest
