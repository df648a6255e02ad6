"""x86 INT8 variants tried on one model (BENCHMARKS.md, "x86: both quantizers measured"): NNCF settings, and
OpenVINO reading a QDQ ONNX with onnxruntime's placement (every op and its output) or the x86 scheme's
(where NNCF places FakeQuantize), against the rows of a `bench/quant_compare.py`
run on the same --out (its OpenVINO FP32 and the FP32 ONNX beside it, Ultralytics' OpenVINO INT8 and our `auto`
artifact).

    YOLO_OFFLINE=1 .venv/bin/python bench/x86_variants.py --model yolov8n-raccoon --out bench/results/quant_compare

mAP50-95 of every variant; latency of the QDQ variants timed side by side with Ultralytics' INT8 and ours.
Writes <out>/<model>/x86_variants.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")

from common import MODELS, data_path, evaluator, time_interleaved  # noqa: E402

from edgecompress.calibration.data import Batches  # noqa: E402
from edgecompress.calibration.graph import head_decode_nodes, head_scope  # noqa: E402
from edgecompress.calibration.ranges import collect, estimate_ranges  # noqa: E402
from edgecompress.quantize.config import QuantConfig  # noqa: E402
from edgecompress.quantize.qdq import quantize_qdq  # noqa: E402
from edgecompress.quantize.scheme import Scheme  # noqa: E402
from edgecompress.targets import TARGETS  # noqa: E402
from edgecompress.targets.openvino import to_ir  # noqa: E402


def nncf_variants() -> dict[str, dict]:
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters as Advanced
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet as Ranges

    mixed = nncf.QuantizationPreset.MIXED
    return {
        "nncf_minmax": dict(preset=mixed, advanced_parameters=Advanced(
            activations_range_estimator_params=Ranges.MINMAX)),
        "nncf_full_bias_correction": dict(preset=mixed, fast_bias_correction=False),
        "nncf_performance_preset": dict(preset=nncf.QuantizationPreset.PERFORMANCE),
        "nncf_no_bias_correction": dict(preset=mixed, advanced_parameters=Advanced(disable_bias_correction=True)),
        "nncf_minmax_no_bias_correction": dict(preset=mixed, advanced_parameters=Advanced(
            activations_range_estimator_params=Ranges.MINMAX, disable_bias_correction=True)),
    }


def main() -> None:
    import nncf
    import onnx
    import openvino as ov

    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=list(MODELS), default="yolov8n-raccoon")
    parser.add_argument("--out", type=Path, default=Path("bench/results/quant_compare"))
    args = parser.parse_args()
    name, folder = args.model, args.out / args.model
    rows = json.loads((folder / "results.json").read_text())  # made by bench/quant_compare.py --targets x86
    evaluate = evaluator(data_path(name))
    fp32_ir = Path(rows["ov_fp32"]["artifact"])
    fp32 = next((folder / f"run-{name}" / "stages").glob("export-*/model.onnx"))  # the pipeline's FP32 export
    metadata = fp32.parent / "metadata.yaml"
    work = folder / "x86_variants"
    config = QuantConfig("ptq")
    images = evaluate.dataset.calibration_images(config.calibration_images, config.seed)
    results: dict[str, dict] = {}

    def record(label: str, artifact: Path) -> None:
        shutil.copyfile(metadata, artifact / "metadata.yaml")
        results[label] = {"artifact": str(artifact), "map50_95": evaluate(artifact, work / "val")["map50_95"]}
        print(label, results[label]["map50_95"], flush=True)

    # OpenVINO reading our QDQ ONNX: onnxruntime's placement (the onnx target's scheme, the same uint8 ranges) or
    # the x86 scheme's (NNCF's placement)
    ranges = estimate_ranges(collect(fp32, Batches(images, 640), histograms=False), "minmax")
    decode = head_decode_nodes(onnx.load(str(fp32), load_external_data=False))
    for label, target in (("qdq_every_op", "onnx"), ("qdq_x86_scheme", "x86")):
        qdq = quantize_qdq(fp32, ranges, work / f"{label}.onnx", Scheme.of(TARGETS[target], config), decode)
        record(label, to_ir(qdq, work / f"{label}_openvino_model", metadata))
    scope = head_scope(onnx.load(str(fp32), load_external_data=False))
    ignored = nncf.IgnoredScope(patterns=[rf"^{re.escape(scope)}(?!cv[23]\.\d+/)"], validate=False)
    dataset = nncf.Dataset(list(Batches(images, 640)))
    for label, settings in nncf_variants().items():
        model = ov.Core().read_model(str(next(fp32_ir.glob("*.xml"))))
        quantized = nncf.quantize(model, dataset, subset_size=len(images), ignored_scope=ignored, **settings)
        dest = work / f"{label}_openvino_model"
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        ov.save_model(quantized, str(dest / "model.xml"), compress_to_fp16=False)
        record(label, dest)
    timed = {label: (Path(results[label]["artifact"]), "openvino")
             for label in ("qdq_every_op", "qdq_x86_scheme")}
    for key in ("ul_ov_int8", "ours_x86_auto"):
        timed[key] = (Path(rows[key]["artifact"]), "openvino")
        results[key] = {"map50_95": rows[key]["map50_95"]}
    for label, timing in time_interleaved(timed).items():
        results[label]["latency_ms"] = timing["p50_ms"]
    (folder / "x86_variants.json").write_text(json.dumps(results, indent=1))
    fp32_map = rows["ov_fp32"]["map50_95"]
    for label, row in results.items():
        print(f"| {label} | {row['map50_95']:.4f} | {100 * (row['map50_95'] - fp32_map):+.2f} | "
              f"{row.get('latency_ms', '')} |")


if __name__ == "__main__":
    main()
