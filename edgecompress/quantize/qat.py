"""Quantization-aware training: fake-quantized fine-tuning through the fine-tune stage's Ultralytics trainer
(keeping a pruned architecture), then the target's INT8 artifact from the trained weights.

The fake quantization is NVIDIA modelopt's, through Ultralytics' own QAT (`prepare_qat`, as `train(quantize=8)`
does): Ultralytics calibrates it, keeps it through EMA, checkpoints and reloads, and exports the trained ranges as
Q/DQ. NNCF's torch QAT and torch.ao would each need that plumbing written here (torch.ao's eager/FX QAT also needs
the model rewritten with stubs or traced, which YOLO's head resists). modelopt trains TensorRT's scheme (symmetric
int8, per-channel weights, per-tensor activations).

Every target then gets the trained weights re-quantized exactly as PTQ quantizes (its scheme, ranges calibrated
on the train split, the head's decode float): that beat exporting modelopt's own Q/DQ (BENCHMARKS.md, "QAT against
PTQ"), and the onnxruntime targets need uint8 activations anyway. BatchNorm folding scales each weight channel's
grid along, so the per-channel weight grid that training adapted to survives the re-quantization.
"""

from __future__ import annotations

import json
import time
from copy import deepcopy
from dataclasses import asdict
from pathlib import Path

from ultralytics.nn.tasks import DetectionModel

from edgecompress.quantize.config import QuantConfig
from edgecompress.quantize.ptq import methods_tried, quantizers
from edgecompress.quantize.quantizers import QUANTIZERS, Job
from edgecompress.quantize.scheme import Scheme
from edgecompress.targets.base import Target
from edgecompress.yolo.config import FinetuneConfig
from edgecompress.yolo.model import Evaluator, export_onnx
from edgecompress.yolo.train import finetune


def qat(model: DetectionModel, config: QuantConfig, target: Target, evaluate: Evaluator,
        workdir: Path) -> tuple[Path, dict]:
    """Fake-quantized fine-tuning (config.qat) on the evaluator's dataset, image size and device, then the target's
    INT8 artifact, as PTQ returns it. Returns (artifact, JSON-able info with "mode": "qat", the scheme, epochs,
    timings, and "float_layers": [])."""
    Scheme.of(target, config)  # a scheme the target cannot run fails here, before the long training
    trained, trained_info = qat_train(model, config, evaluate, Path(workdir) / "train")
    artifact, info = qat_export(trained, config, target, evaluate, workdir)
    info.update(epochs_log=trained_info["epochs_log"], timings={**trained_info["timings"], **info["timings"]})
    (Path(workdir) / "quantize.json").write_text(json.dumps(info, indent=1))
    return artifact, info


def qat_train(model: DetectionModel, config: QuantConfig, evaluate: Evaluator,
              workdir: Path) -> tuple[DetectionModel, dict]:
    """The fake-quantized fine-tuning of `qat`: returns the best epoch's model, carrying its trained quantizers."""
    clock = time.perf_counter()
    # A short run from trained weights: the preserve schedule (no warm-up, whose bias lr 0.1 wrecks a trained model)
    # at QAT's own rate, and no mosaic, so training sees images like the calibration batches and the val split.
    settings = FinetuneConfig(epochs=config.qat.epochs, schedule="preserve", lr0=config.qat.lr0,
                              freeze_bn=config.qat.freeze_bn, batch=config.qat.batch, nbs=config.qat.nbs,
                              mosaic=0.0, close_mosaic=0, distill=config.qat.distill, seed=config.seed)
    trained, info = finetune(model, settings, evaluate, workdir, reference=model,
                             qat_batches=config.qat.calibration_batches)
    return trained, {"epochs_log": info["epochs_log"], "timings": {"train_s": round(time.perf_counter() - clock, 1)}}


def qat_export(trained: DetectionModel, config: QuantConfig, target: Target, evaluate: Evaluator,
               workdir: Path) -> tuple[Path, dict]:
    """The target's INT8 artifact of a `qat_train` model: its weights, re-quantized for the target (see above).
    QAT has no evaluation to choose a quantizer by: `auto` takes the target's first that writes our QDQ ONNX,
    which kept more of the training at the same speed on x86 (BENCHMARKS.md, "QAT on x86")."""
    from ultralytics.utils.torch_utils import strip_qat

    workdir = Path(workdir)
    (workdir / "fp32").mkdir(parents=True, exist_ok=True)
    clock = time.perf_counter()
    plain = deepcopy(trained)
    strip_qat(plain)  # the plain layers with the trained weights
    onnx_fp32 = export_onnx(plain, evaluate.imgsz, workdir / "fp32", "model")
    names = quantizers(config, target)
    name = "qdq" if "qdq" in names else names[0]
    fp32 = target.convert(onnx_fp32, workdir / "fp32", "model") if QUANTIZERS[name].reads_runtime_artifact \
        else onnx_fp32
    images = evaluate.dataset.calibration_images(config.calibration_images, config.seed)
    job = Job(onnx_fp32, fp32, target, config, Scheme.of(target, config), images, evaluate.imgsz)
    # the trained weights' ranges chosen by the same measurement as PTQ's (the most accurate method)
    tried = methods_tried(QUANTIZERS[name], job, workdir, lambda a: evaluate(a, workdir / "eval")["map50_95"])
    method = max(tried, key=lambda m: tried[m][1])
    artifact = tried[method][0]
    return artifact, {
        "mode": "qat",
        "framework": "nvidia-modelopt via ultralytics' prepare_qat",
        "quantizer": name,
        "method": method,
        "methods": {m: {"map50_95": score} for m, (_, score) in tried.items()},
        "scheme": QUANTIZERS[name].describe(job, method),
        "epochs": config.qat.epochs,
        "qat": asdict(config.qat),
        "head_decode_float": job.decode,
        "float_layers": [],
        "timings": {"export_s": round(time.perf_counter() - clock, 1), **job.timings},
    }
