"""x86 INT8 variants tried on one model (BENCHMARKS.md, "x86: both quantizers measured"): NNCF settings, and
OpenVINO reading a QDQ ONNX with onnxruntime's placement (every op and its output) or the x86 scheme's
(where NNCF places FakeQuantize), against the rows of a `bench/quant_compare.py`
run on the same --out (its FP32 ONNX, OpenVINO FP32, Ultralytics' OpenVINO INT8 and our `auto` artifact).

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

from edgecompress.pipeline.yolo import evaluate  # noqa: E402  (first: no label caches in the dataset)
from edgecompress.calibration import batches, select_images  # noqa: E402
from edgecompress.calibration.graph import head_decode_nodes, head_scope  # noqa: E402
from edgecompress.pipeline.quantize import QuantConfig, Scheme, _cached_ranges, quantize_qdq  # noqa: E402
from edgecompress.targets import TARGETS  # noqa: E402
from edgecompress.targets.runtimes import convert_onnx  # noqa: E402
from common import SHARED, time_alternating  # noqa: E402
from quant_compare import MODELS  # noqa: E402


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
    data = str(SHARED / "datasets" / MODELS[name] / "data.yaml")
    fp32 = folder / f"{name}.onnx"
    work = folder / "x86_variants"
    config = QuantConfig("ptq")
    images = select_images(data, config.calibration_images, config.seed)
    results: dict[str, dict] = {}

    def record(label: str, artifact: Path) -> None:
        shutil.copyfile(folder / "metadata.yaml", artifact / "metadata.yaml")
        results[label] = {"artifact": str(artifact), "map50_95": evaluate(
            artifact, data, 640, "val", 0.001, 0.7, "cpu", work / "val")["map50_95"]}
        print(label, results[label]["map50_95"], flush=True)

    # OpenVINO reading our QDQ ONNX: onnxruntime's placement (the onnx target's scheme, the same uint8 ranges) or
    # the x86 scheme's (NNCF's placement)
    ranges = _cached_ranges(fp32, images, 640, config, Scheme.of(TARGETS["x86"], config), work)
    decode = head_decode_nodes(onnx.load(str(fp32), load_external_data=False))
    for label, target in (("qdq_every_op", "onnx"), ("qdq_x86_scheme", "x86")):
        qdq = quantize_qdq(fp32, ranges, work / f"{label}.onnx", Scheme.of(TARGETS[target], config), decode)
        convert_onnx("openvino", qdq, work / f"{label}_openvino_model", folder / "metadata.yaml")
        record(label, work / f"{label}_openvino_model")
    scope = head_scope(onnx.load(str(fp32), load_external_data=False))
    ignored = nncf.IgnoredScope(patterns=[rf"^{re.escape(scope)}(?!cv[23]\.\d+/)"], validate=False)
    dataset = nncf.Dataset(list(batches(images, 640)))
    for label, settings in nncf_variants().items():
        model = ov.Core().read_model(str(folder / f"{name}_openvino_model" / f"{name}.xml"))
        quantized = nncf.quantize(model, dataset, subset_size=len(images), ignored_scope=ignored, **settings)
        dest = work / f"{label}_openvino_model"
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        ov.save_model(quantized, str(dest / f"{name}.xml"), compress_to_fp16=False)
        record(label, dest)
    timed = {label: (Path(results[label]["artifact"]), "openvino")
             for label in ("qdq_every_op", "qdq_x86_scheme")}
    for key in ("ul_ov_int8", "ours_x86_auto"):
        timed[key] = (Path(rows[key]["artifact"]), "openvino")
        results[key] = {"map50_95": rows[key]["map50_95"]}
    for label, timing in time_alternating(timed, runs=50).items():
        results[label]["latency_ms"] = timing["p50_ms"]
    (folder / "x86_variants.json").write_text(json.dumps(results, indent=1))
    fp32_map = rows["ov_fp32"]["map50_95"]
    for label, row in results.items():
        print(f"| {label} | {row['map50_95']:.4f} | {100 * (row['map50_95'] - fp32_map):+.2f} | "
              f"{row.get('latency_ms', '')} |")


if __name__ == "__main__":
    main()
