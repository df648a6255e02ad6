"""Jetson bundles without TensorRT: the strongly typed FP16 and INT8 ONNX of the demo model (typing, TensorRT's Q/DQ
rules, precision boundaries, accuracy in onnxruntime), and the bundle every board gets (trtexec.sh, DeepStream
config and labels, the layers DLA cannot run). Engines themselves: test_tensorrt.py, where TensorRT runs."""

from __future__ import annotations

import configparser
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from conftest import FAST_BENCH, evaluator

from edgecompress.cli import main
from edgecompress.device.runtime import RUNTIMES
from edgecompress.device.tensorrt import unusable_reason
from edgecompress.quantize.config import QuantConfig
from edgecompress.quantize.ptq import quantize
from edgecompress.quantize.qdq import quantize_qdq
from edgecompress.quantize.quantizers import Job
from edgecompress.quantize.scheme import Scheme
from edgecompress.targets import TARGETS, tensorrt_rules, typed
from edgecompress.targets.deepstream import PARSER_FUNCTION, PARSER_LIBRARY, config_name
from edgecompress.targets.tensorrt import JetsonTarget, prepare_jetson

JETSONS = [t for t in TARGETS.values() if isinstance(t, JetsonTarget)]
IMGSZ = 96
no_tensorrt = pytest.mark.skipif(unusable_reason() is None, reason="TensorRT is usable here: test_tensorrt.py builds")


@pytest.fixture(scope="module")
def fp16_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`compress --target jetson --quant none` on the demo at 96 px: its output folder."""
    tmp = tmp_path_factory.mktemp("jetson")
    (tmp / "recipe.yaml").write_text(yaml.safe_dump({"imgsz": IMGSZ, "bench": FAST_BENCH}))
    assert main(["--target", "jetson", "--quant", "none", "--recipe", str(tmp / "recipe.yaml"),
                 "--out", str(tmp / "out")]) == 0
    return tmp / "out"


def stage(report: dict, name: str) -> dict:
    return next(s for s in report["stages"] if s["name"] == name)


def test_fp16_run_reports_the_strongly_typed_graph_against_fp32(fp16_run: Path) -> None:
    report = json.loads((fp16_run / "report.json").read_text())
    # the FP16 network, then the same with the frame's processing inside (the bundle holds both)
    assert [s["name"] for s in report["stages"]] == ["baseline", "onnx-fp32", "tensorrt-fp16", "tensorrt-fp16-frame"]
    assert report["bundle"]["frame_onnx"]
    fp32, fp16 = stage(report, "onnx-fp32"), stage(report, "tensorrt-fp16")
    assert (fp16["runtime"], fp16["precision"]) == ("onnxruntime", "fp16")
    # the FP16 graph in onnxruntime (the engine's accuracy proxy) within 0.1 mAP50-95 point of FP32
    assert abs(fp16["accuracy"]["map50_95"] - fp32["accuracy"]["map50_95"]) < 0.001
    assert fp16["benchmark"]["file_mb"] < 0.55 * fp32["benchmark"]["file_mb"]  # FP16 weights

    model = onnx.load(str(fp16_run / report["final"]["artifact"] / report["bundle"]["onnx"]))
    keep = typed.fp32_nodes(model)
    assert typed.typing_problems(model, keep) == []
    types = typed.tensor_types(model)
    # every float tensor on the engine's path is FP16 but what the box arithmetic writes and the Casts into it
    produced = {out: n for n in model.graph.node for out in n.output}
    fp32 = {t for t, n in produced.items() if types.get(t) == onnx.TensorProto.FLOAT}
    casts_in = {n.output[0] for n in model.graph.node if n.op_type == "Cast" and n.output[0] in fp32}
    assert fp32 == {out for n in model.graph.node if n.name in keep for out in n.output} | casts_in
    assert len(casts_in) == 3 and types["images"] == onnx.TensorProto.FLOAT  # distances twice, scores once
    assert {n.op_type for n in model.graph.node if n.name in keep} == {"Sub", "Add", "Div", "Concat", "Mul"}
    weights = [t for t in model.graph.initializer if t.name.endswith(".weight")]
    assert weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)
    assert report["bundle"]["typing"]["fp32_nodes"] == keep
    assert report["bundle"]["typing"]["boundaries"]["head"] == {"casts": 3, "io_casts": 0, "int8_to_float": 0,
                                                                "float_to_int8": 0}


def test_int8_graph_is_strongly_typed_follows_tensorrt_rules_and_minimises_boundaries(tmp_path: Path,
                                                                                    demo: tuple[Path, Path]) -> None:
    from edgecompress.yolo.model import export_onnx, load_model

    evaluate = evaluator(demo[1], IMGSZ)
    fp32 = export_onnx(load_model(demo[0]), IMGSZ, tmp_path / "export", "model")
    baseline = evaluate(fp32, tmp_path / "val")["map50_95"]
    target, config = TARGETS["jetson-orin-nano"], QuantConfig(calibration_images=8, max_float_layers=0)
    qdq, info = quantize(fp32, fp32, config, target, evaluate, tmp_path / "q", baseline)
    model = onnx.load(str(qdq))
    assert tensorrt_rules.violations(model) == []
    keep = typed.fp32_nodes(model)
    assert typed.typing_problems(model, keep) == []
    assert keep == typed.fp32_nodes(onnx.load(str(fp32)))  # the same box arithmetic as the FP16 graph
    scales = [t for t in model.graph.initializer if t.name.endswith("_scale")]
    assert scales and all(t.data_type == onnx.TensorProto.FLOAT16 for t in scales)  # DQ writes FP16 directly
    assert 0 < info["int8_map50_95"] and info["drop_points"] < 5  # the head's decode stayed float

    # TensorRT's placement (Q/DQ at the inputs of convolutions, Add and grid ops) against onnxruntime's (every op's
    # output too): no INT8 tensor is handed to a float layer, and far fewer quantize points in the head
    ours = typed.boundaries(model)
    job = Job(fp32, fp32, target, config, Scheme.of(target, config),
              evaluate.dataset.calibration_images(8, 0), IMGSZ)
    every_output = quantize_qdq(fp32, job.ranges("minmax"), tmp_path / "outputs.onnx",
                                Scheme(symmetric_activations=True, per_channel=True), job.decode)
    theirs = typed.boundaries(onnx.load(str(every_output)))
    assert ours["head"]["int8_to_float"] == ours["graph"]["int8_to_float"] == 0
    assert theirs["head"]["int8_to_float"] > 0
    assert ours["head"]["float_to_int8"] < theirs["head"]["float_to_int8"] / 2
    assert ours["head"]["casts"] == 3  # into the FP32 box arithmetic: the two distance halves and the scores

    x = np.random.default_rng(0).random((1, 3, IMGSZ, IMGSZ), dtype=np.float32)
    got, want = (RUNTIMES["onnxruntime"].load(m).infer(x)[0] for m in (qdq, fp32))
    assert np.abs(got[:, :4] - want[:, :4]).max() < 0.2 * IMGSZ  # boxes in pixels, INT8 noise not garbage


@no_tensorrt
@pytest.mark.parametrize("target", JETSONS, ids=[t.name for t in JETSONS])
def test_every_board_gets_trtexec_deepstream_and_dla_files(tmp_path: Path, fp16_run: Path,
                                                           target: JetsonTarget) -> None:
    report = json.loads((fp16_run / "report.json").read_text())
    published = fp16_run / report["final"]["artifact"]
    metadata = json.loads((published / "metadata.json").read_text())
    info = prepare_jetson(published / report["bundle"]["onnx"], metadata, target, tmp_path / "bundle")
    bundle = tmp_path / "bundle"
    assert info["engine"] is None and unusable_reason() in info["reason"]

    script = (bundle / info["trtexec"]).read_text()
    commands = [li for li in script.splitlines() if li.startswith('"$TRTEXEC" --onnx')]
    assert len(commands) == (2 if target.dla_cores else 1)
    for command in commands:  # strongly typed: the ONNX's types decide, no precision flags
        assert "--onnx=model_fp16.onnx --saveEngine=model" in command and "--stronglyTyped" in command
        assert "--int8" not in command and "--fp16" not in command
        assert f"--memPoolSize=workspace:{target.workspace_mib}" in command
    assert ("--useDLACore=0 --allowGPUFallback" in script) == bool(target.dla_cores)

    labels = (bundle / "labels.txt").read_text().splitlines()
    assert labels == [metadata["names"][str(i)] for i in range(len(labels))] == ["raccoon"]
    for stem, dla in [("model", None), *([("model.dla0", 0)] if target.dla_cores else [])]:
        parser = configparser.ConfigParser()
        parser.read_string((bundle / config_name(stem)).read_text())
        prop = parser["property"]
        assert prop["model-engine-file"] == f"{stem}.plan" and prop["infer-dims"] == f"3;{IMGSZ};{IMGSZ}"
        assert int(prop["num-detected-classes"]) == len(labels) and (bundle / prop["labelfile-path"]).is_file()
        assert prop["parse-bbox-func-name"] == PARSER_FUNCTION and prop["custom-lib-path"] == PARSER_LIBRARY
        assert prop.get("use-dla-core") == (None if dla is None else str(dla))
        assert float(parser["class-attrs-all"]["pre-cluster-threshold"]) == 0.25
        assert prop["network-mode"] == "2"  # FP16 (the INT8 bundle's say 1)
    assert info["deepstream"]["configs"] == [config_name(s) for s, _ in
                                             [("model", None), *([("model.dla0", 0)] if target.dla_cores else [])]]
    assert PARSER_FUNCTION in (bundle / info["deepstream"]["parser"]).read_text()

    assert (bundle / "dla.json").is_file() == bool(target.dla_cores)
    if target.dla_cores:  # the convolutions run on DLA; the decode's 3-D tensors and FP32 arithmetic do not
        fallback = json.loads((bundle / "dla.json").read_text())["gpu_fallback"]
        nodes = {f["node"] for f in fallback}
        assert set(typed.fp32_nodes(onnx.load(str(bundle / info["onnx"])))) <= nodes
        assert not any(f["op"] == "Conv" for f in fallback) and all(f["node"].startswith("/model.22/")
                                                                    for f in fallback)


def test_a_conv_the_fallback_keeps_in_float_reads_float_and_follows_tensorrt_rules(tmp_path: Path,
                                                                                  demo: tuple[Path, Path]) -> None:
    """The bottleneck's first conv shares its input with the residual Add, which TensorRT's placement quantizes:
    kept in float, it must read the float tensor, not the Add's dequantized copy (TensorRT refuses a Conv whose
    input is dequantized and whose weight is not)."""
    from edgecompress.yolo.model import export_onnx, load_model

    fp32 = export_onnx(load_model(demo[0]), IMGSZ, tmp_path / "export", "model")
    target, config = TARGETS["jetson-orin-nano"], QuantConfig(calibration_images=8)
    job = Job(fp32, fp32, target, config, Scheme.of(target, config),
              evaluator(demo[1], IMGSZ).dataset.calibration_images(8, 0), IMGSZ)
    conv = "/model.2/m.0/cv1/conv/Conv"
    exclude = [*job.decode, conv]
    rounded = onnx.load(str(quantize_qdq(fp32, job.ranges("minmax"), tmp_path / "a.onnx", job.scheme, exclude)))
    assert any(conv in v for v in tensorrt_rules.violations(rounded))  # what the fallback built before
    kept = onnx.load(str(quantize_qdq(fp32, job.ranges("minmax"), tmp_path / "b.onnx", job.scheme, exclude, [conv])))
    assert tensorrt_rules.violations(kept) == []
    producers = {out: n.op_type for n in kept.graph.node for out in n.output}
    (node,) = [n for n in kept.graph.node if n.name == conv]
    assert producers[node.input[0]] != "DequantizeLinear" and node.input[1] in {t.name for t in kept.graph.initializer}
    assert sum(n.op_type == "DequantizeLinear" for n in kept.graph.node) > 10  # the rest stays INT8
