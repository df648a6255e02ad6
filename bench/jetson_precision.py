"""Precision boundaries of the Jetson INT8 ONNX against the other placements of the same model: ours (TensorRT's
placement, strongly typed), onnxruntime's (Q/DQ on every op's output too, same ranges), and the one Ultralytics
builds its TensorRT 11 INT8 engine from (NVIDIA ModelOpt's INT8 quantization with Ultralytics' arguments:
`ultralytics.utils.export.engine.modelopt_quantize_onnx`, its float parts FP16 as ModelOpt writes them).

    YOLO_OFFLINE=1 nice -n 10 .venv/bin/python bench/jetson_precision.py [--models yolov8n-bccd yolo11n-bccd]
        [--imgsz 640] [--images 64] [--accuracy] [--out bench/results/jetson_precision]

Counts come from the graphs (edgecompress.targets.typed.boundaries); placement does not depend on the image size
or the calibration images, so a short calibration serves. `--accuracy` also evaluates our graphs in onnxruntime
(the pipeline's protocol), ours before typing too, so the placement's and FP16's shares of INT8's loss show apart.
ModelOpt's graph is not evaluated: it keeps float weights behind Q/DQ pairs with FP16 scales, which onnxruntime's
CPU optimizer (WeightBiasQuantization) mis-folds (boxes off by ~100 px on the demo model).
Writes <out>/results.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnx
from common import data_path, evaluator, model_path

from edgecompress.calibration.data import Batches
from edgecompress.quantize.config import QuantConfig
from edgecompress.quantize.qdq import quantize_qdq
from edgecompress.quantize.quantizers import Job
from edgecompress.quantize.scheme import Scheme
from edgecompress.targets import TARGETS, typed
from edgecompress.yolo.model import export_onnx, load_model

# Ultralytics' modelopt_quantize_onnx: the head's output convolutions and DFL stay float
ULTRALYTICS_EXCLUDE = [r".*\.2/Conv$", r".*/dfl/"]


def placements(name: str, imgsz: int, images: int, accuracy: bool, out: Path) -> dict[str, dict]:
    from modelopt.onnx.quantization import quantize as modelopt_quantize

    target = TARGETS["jetson-orin-nano"]
    evaluate = evaluator(data_path(name), imgsz)
    fp32 = export_onnx(load_model(model_path(name)), imgsz, out / name, "model")
    config = QuantConfig(calibration_images=images)
    job = Job(fp32, fp32, target, config, Scheme.of(target, config),
              evaluate.dataset.calibration_images(images, 0), imgsz)
    untyped = quantize_qdq(fp32, job.ranges("minmax"), out / name / "ours_untyped.onnx", job.scheme, job.decode)
    ours = target.from_qdq(quantize_qdq(fp32, job.ranges("minmax"), out / name / "ours.onnx", job.scheme,
                                        job.decode), fp32)
    every_output = quantize_qdq(fp32, job.ranges("minmax"), out / name / "onnxruntime.onnx",
                                Scheme(symmetric_activations=True, per_channel=True), job.decode)
    calibration = np.concatenate(list(Batches(job.images, imgsz)))
    ultralytics = out / name / "ultralytics_modelopt.onnx"
    modelopt_quantize(str(fp32), quantize_mode="int8", calibration_data={"images": calibration},
                      calibration_method="max", calibration_eps=["cpu"], nodes_to_exclude=ULTRALYTICS_EXCLUDE,
                      output_path=str(ultralytics))
    rows = {}
    for row, path in (("ours (tensorrt placement, typed)", ours), ("ours before typing (fp32 float parts)", untyped),
                      ("onnxruntime placement", every_output), ("ultralytics (modelopt int8)", ultralytics)):
        model = onnx.load(str(path))
        quantized = sum(1 for n in model.graph.node if n.op_type == "QuantizeLinear")
        rows[row] = {"boundaries": typed.boundaries(model), "quantize_nodes": quantized,
                     "opset": next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))}
        if accuracy and path != ultralytics:
            rows[row]["map50_95"] = evaluate(path, out / name / "val")["map50_95"]
    if accuracy:
        rows["fp32"] = {"map50_95": evaluate(fp32, out / name / "val")["map50_95"]}
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["yolov8n-bccd", "yolo11n-bccd"])
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--images", type=int, default=64, help="calibration images (placement does not depend on them)")
    p.add_argument("--accuracy", action="store_true", help="evaluate our graphs in onnxruntime too")
    p.add_argument("--out", type=Path, default=Path("bench/results/jetson_precision"))
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = {name: placements(name, args.imgsz, args.images, args.accuracy, args.out) for name in args.models}
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    print("| model | graph | Q nodes | head: INT8->float | head: float->INT8 | head: FP16/FP32 casts "
          "| graph: INT8->float | graph: float->INT8 | mAP50-95 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, rows in results.items():
        for row, r in rows.items():
            score = f"{r['map50_95']:.4f}" if "map50_95" in r else ""
            if "boundaries" not in r:
                print(f"| {name} | {row} | | | | | | | {score} |")
                continue
            head, graph = r["boundaries"]["head"], r["boundaries"]["graph"]
            print(f"| {name} | {row} | {r['quantize_nodes']} | {head['int8_to_float']} | {head['float_to_int8']} "
                  f"| {head['casts']} | {graph['int8_to_float']} | {graph['float_to_int8']} | {score} |")


if __name__ == "__main__":
    main()
