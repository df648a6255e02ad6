"""PTQ: config validation, TensorRT rule validator, QDQ models in real runtimes, accuracy-aware fallback, and
x86's choice between NNCF and OpenVINO reading our QDQ ONNX."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from tiny_models import branching, detector, ramp_inputs

from edgecompress.calibration.ranges import collect, estimate_ranges
from edgecompress.calibration.sensitivity import lost_signal
from edgecompress.config import ConfigError, from_dict
from edgecompress.device.runtime import RUNTIMES
from edgecompress.quantize.config import QuantConfig
from edgecompress.quantize.fallback import accuracy_aware
from edgecompress.quantize.ptq import Candidate, choose_quantizer, quantize
from edgecompress.quantize.qdq import quantize_qdq
from edgecompress.quantize.scheme import Scheme
from edgecompress.targets import TARGETS, tensorrt_rules
from edgecompress.targets.openvino import to_ir

DECODE = ["/model.1/Sigmoid", "/model.1/Mul"]
TENSORRT = Scheme(symmetric_activations=True, per_channel=True, placement="tensorrt")
ONNXRUNTIME = Scheme(symmetric_activations=False, per_channel=True)
OPENVINO = Scheme(symmetric_activations=False, per_channel=True, placement="nncf")


@pytest.fixture
def fp32(tmp_path):
    return detector(tmp_path / "m.onnx")


def qdq(fp32, tmp_path, scheme, exclude=DECODE, name="q.onnx"):
    ranges = estimate_ranges(collect(fp32, ramp_inputs(), histograms=False), "minmax",
                             symmetric=scheme.symmetric_activations)
    return quantize_qdq(fp32, ranges, tmp_path / name, scheme, exclude)


def test_config_from_dict_nested_and_errors_name_the_value():
    config = from_dict(QuantConfig, {"mode": "ptq", "method": "entropy", "qat": {"epochs": 2}}, "quant")
    assert config.enabled and config.method == "entropy" and config.qat.epochs == 2
    with pytest.raises(ConfigError, match="unknown calibration method 'entrophy' \\(did you mean 'entropy'"):
        from_dict(QuantConfig, {"method": "entrophy"}, "quant")
    with pytest.raises(ConfigError, match="percentile must be in \\(50, 100\\], got 101"):
        QuantConfig(percentile=101)
    with pytest.raises(ConfigError, match="lr0 .* got 0.5.*write e.g. 0.0001"):
        from_dict(QuantConfig, {"qat": {"lr0": 0.5}}, "quant")
    assert QuantConfig().quantizer == "auto"
    with pytest.raises(ConfigError, match="quantizer 'both' is unknown; write auto or one of qdq, nncf"):
        QuantConfig(quantizer="both")


def test_tensorrt_artifact_passes_and_keeps_metadata(fp32, tmp_path):
    model = onnx.load(str(qdq(fp32, tmp_path, TENSORRT)))
    assert tensorrt_rules.violations(model) == []
    assert {p.key: p.value for p in model.metadata_props}["stride"] == "8"


def _mutate(model: onnx.ModelProto, op: str, index: int, array: np.ndarray) -> None:
    """Replace input `index` (an initializer) of the first `op` node quantizing an activation."""
    inits = {t.name: t for t in model.graph.initializer}
    node = next(n for n in model.graph.node if n.op_type == op and n.input[0] not in inits
                and not n.input[0].startswith("w"))
    inits[node.input[index]].CopyFrom(numpy_helper.from_array(array, node.input[index]))


def test_validator_rejects_each_broken_rule(fp32, tmp_path):
    good = str(qdq(fp32, tmp_path, TENSORRT))

    def broken(change) -> list[str]:
        model = onnx.load(good)
        change(model)
        return tensorrt_rules.violations(model)

    def old_opset(m):
        m.opset_import[0].version = 12

    def asymmetric(m):
        _mutate(m, "QuantizeLinear", 2, np.array(3, np.int8))

    def uint8(m):
        _mutate(m, "QuantizeLinear", 2, np.array(128, np.uint8))

    def per_channel_activation(m):
        _mutate(m, "QuantizeLinear", 1, np.array([0.1, 0.2], np.float32))

    def weight_per_tensor(m):
        dq = next(n for n in m.graph.node if n.op_type == "DequantizeLinear" and n.input[0].startswith("w0"))
        m.graph.initializer.append(numpy_helper.from_array(np.array(2 / 127, np.float32), "per_tensor_scale"))
        dq.input[1] = "per_tensor_scale"

    def weight_axis_1(m):
        for n in m.graph.node:
            if n.op_type in ("QuantizeLinear", "DequantizeLinear") and n.input[0].startswith("w1"):
                next(a for a in n.attribute if a.name == "axis").i = 1

    def q_without_dq(m):
        q = next(n for n in m.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "images")
        dq = next(n for n in m.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == q.output[0])
        conv = next(n for n in m.graph.node if n.op_type == "Conv" and n.input[0] == dq.output[0])
        conv.input[0] = q.output[0]

    def float_input_int8_weight(m):
        conv = next(n for n in m.graph.node if n.op_type == "Conv")
        conv.input[0] = "images"

    cases = {
        old_opset: "opset 12 < 13", asymmetric: "is not 0 (asymmetric)", uint8: "zero point is uint8",
        per_channel_activation: "activation quantized per channel", weight_per_tensor: "weight quantized per tensor",
        weight_axis_1: "on axis 1", q_without_dq: "feeds ['/model.0/conv/Conv'] directly",
        float_input_int8_weight: "only its weight is quantized",
    }
    for change, message in cases.items():
        problems = broken(change)
        assert any(message in p for p in problems), (change.__name__, problems)

    every_output = Scheme(symmetric_activations=True, per_channel=True)  # quantizes the Sigmoid's output too
    decode_quantized = tensorrt_rules.violations(onnx.load(str(qdq(fp32, tmp_path, every_output, exclude=[],
                                                                   name="all.onnx"))))
    assert any("/model.1/Sigmoid: part of the head's decode" in p for p in decode_quantized)
    with pytest.raises(tensorrt_rules.TensorRTRuleError, match="opset 12"):
        m = onnx.load(good)
        old_opset(m)
        tensorrt_rules.check(m)


@pytest.mark.parametrize("scheme", [ONNXRUNTIME, TENSORRT, OPENVINO],
                         ids=["uint8-asymmetric", "int8-symmetric", "nncf-placement"])
def test_qdq_models_run_in_onnxruntime_and_openvino(fp32, tmp_path, scheme):
    quantized = qdq(fp32, tmp_path, scheme)
    x = ramp_inputs()[1]
    expected = RUNTIMES["onnxruntime"].load(fp32).infer(x)[0]
    (tmp_path / "metadata.yaml").write_text("stride: 8\n")
    ov_dir = to_ir(quantized, tmp_path / "q_openvino_model", tmp_path / "metadata.yaml")
    for runtime, artifact in (("onnxruntime", quantized), ("openvino", ov_dir)):
        got = RUNTIMES[runtime].load(artifact).infer(x)[0]
        # outputs are 640 * sigmoid(...): 8-bit steps of inputs (~3/127) move them by a few pixels at most
        assert np.abs(got - expected).max() < 0.02 * 640, runtime
        assert np.abs(got - expected).max() > 0, runtime  # it really ran quantized


def test_each_target_gets_its_runtimes_placement(fp32, tmp_path):
    config = QuantConfig()
    assert Scheme.of(TARGETS["x86"], config) == OPENVINO
    assert Scheme.of(TARGETS["onnx"], config) == ONNXRUNTIME
    assert Scheme.of(TARGETS["jetson-orin-nano"], config) == TENSORRT

    def quantized_tensors(scheme: Scheme) -> set[str]:
        model = onnx.load(str(qdq(fp32, tmp_path, scheme, exclude=[], name=f"{scheme.placement}.onnx")))
        return {n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}

    # OpenVINO and TensorRT: the two convolutions' inputs only (the input image, the Relu's output); no Q/DQ after
    # a convolution or around Relu, Sigmoid and Mul, and no int32 bias
    assert quantized_tensors(OPENVINO) == quantized_tensors(TENSORRT) == {"images", "b"}
    assert {"images", "b", "c"} <= quantized_tensors(ONNXRUNTIME)  # and a convolution's output, for QLinearConv


def test_openvino_placement_quantizes_once_per_grid(tmp_path):
    fp32 = branching(tmp_path / "branching.onnx")
    quantized = qdq(fp32, tmp_path, OPENVINO)
    model = onnx.load(str(quantized))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    quantizers = {n.input[0]: n for n in model.graph.node
                  if n.op_type == "QuantizeLinear" and n.input[0] not in inits}
    # Split, Concat and MaxPool run on quantized values: Q/DQ at the Split's input and the Concat's and Add's
    # inputs, none again after them (s0, s1, g, h: already on the grid)
    assert set(quantizers) == {"images", "b", "e", "f"}
    # the tensors the Split and Concat join share one scale and zero point: their widest range
    grid = [(float(inits[quantizers[t].input[1]]), int(inits[quantizers[t].input[2]])) for t in ("b", "f")]
    assert grid[0] == grid[1]
    ranges = estimate_ranges(collect(fp32, ramp_inputs(), histograms=False), "minmax")
    widest = max(ranges.tensors[t][1] for t in ("b", "s0", "s1", "f", "g", "h"))
    assert grid[0][0] == pytest.approx(widest / 255, rel=1e-6)  # uint8, low 0 (all after Relu)
    x = ramp_inputs()[1]
    expected = RUNTIMES["onnxruntime"].load(fp32).infer(x)[0]
    (tmp_path / "metadata.yaml").write_text("stride: 8\n")
    to_ir(quantized, tmp_path / "q_openvino_model", tmp_path / "metadata.yaml")
    for runtime, artifact in (("onnxruntime", quantized), ("openvino", tmp_path / "q_openvino_model")):
        got = RUNTIMES[runtime].load(artifact).infer(x)[0]
        assert 0 < np.abs(got - expected).max() < 0.02 * 640, runtime


def test_fallback_stops_once_the_budget_holds(fp32, tmp_path):
    ranges = estimate_ranges(collect(fp32, ramp_inputs(), histograms=False), "minmax")
    # A wide range on the body activation makes its layers the damaging ones, so the fallback has work to do.
    wide = type(ranges)(ranges.method, False, None, ranges.images,
                        {**ranges.tensors, "b": (0.0, ranges.tensors["b"][1] * 40)})
    x = ramp_inputs()[2]
    reference = RUNTIMES["onnxruntime"].load(fp32).infer(x)[0]

    def score(artifact):  # a real accuracy in the real runtime: 1 - mean relative error vs FP32
        out = RUNTIMES["onnxruntime"].load(artifact).infer(x)[0]
        return 1.0 - float(np.mean(np.abs(out - reference))) / 640

    built = []

    def build(keep):
        built.append(list(keep))
        return quantize_qdq(fp32, wide, tmp_path / "int8.onnx", ONNXRUNTIME, [*DECODE, *keep])

    def ranking():  # the signal each layer loses in the quantized model itself
        measured = quantize_qdq(fp32, wide, tmp_path / "ranking.onnx", ONNXRUNTIME, DECODE)
        return lost_signal(measured, ramp_inputs(),
                           ["/model.0/conv/Conv", "/model.0/act/Relu", "/model.1/cv2.0/cv2.0.0/Conv"])

    int8_drop = (1.0 - score(build([]))) * 100
    one_float_drop = (1.0 - score(build([ranking()[0][0]]))) * 100
    assert one_float_drop < int8_drop
    built.clear()

    budget = (int8_drop + one_float_drop) / 2  # met with one layer in float, not with none
    artifact, info = accuracy_aware(build, score, ranking, 1.0, budget, max_float=3)
    assert built == [[], [ranking()[0][0]]]  # stopped at the first step within budget
    assert info["within_budget"] and [s["float_layers"] for s in info["fallback_steps"]] == [0, 1]
    assert artifact.is_file() and [f["node"] for f in info["float_layers"]] == [ranking()[0][0]]

    built.clear()
    _, info = accuracy_aware(build, score, ranking, 1.0, int8_drop + 1, max_float=3)
    assert built == [[]] and info["float_layers"] == []  # within budget at once: nothing kept in float


def test_x86_choice_keeps_the_only_candidate_within_budget_else_the_faster_else_the_more_accurate():
    # yolov8n-raccoon's measured figures (BENCHMARKS.md): NNCF faster but 0.72 points down, the QDQ ONNX +1.40
    raccoon = {"nncf": Candidate(0.4353, 0.72, False, 20.1), "qdq": Candidate(0.4565, -1.40, True, 25.1)}
    chosen, reason = choose_quantizer(raccoon, 0.5)
    assert chosen == "qdq" and reason == ("qdq: the only candidate within the 0.5-point budget "
                                          "(nncf -0.72 points, 20.1 ms; qdq +1.40 points, 25.1 ms)")
    assert choose_quantizer(dict(reversed(raccoon.items())), 0.5)[0] == "qdq"  # not the first, not the faster
    both = {"nncf": Candidate(0.6011, 0.32, True, 30.6), "qdq": Candidate(0.6010, 0.33, True, 39.4)}
    assert choose_quantizer(both, 0.5) == ("nncf", "nncf: all within the 0.5-point budget; the faster "
                                                   "(nncf -0.32 points, 30.6 ms; qdq -0.33 points, 39.4 ms)")
    slower_nncf = {"nncf": Candidate(0.6011, 0.32, True, 41.0), "qdq": Candidate(0.6010, 0.33, True, 39.4)}
    assert choose_quantizer(slower_nncf, 0.5)[0] == "qdq"
    alike = {"nncf": Candidate(0.6011, 0.32, True, 30.4), "qdq": Candidate(0.6037, 0.07, True, 30.9)}  # 1.6% apart
    assert choose_quantizer(alike, 0.5) == ("qdq", "qdq: all within the 0.5-point budget and as fast (within 3%); "
                                                   "the more accurate (nncf -0.32 points, 30.4 ms; qdq -0.07 points, "
                                                   "30.9 ms)")
    assert choose_quantizer({**alike, "qdq": Candidate(0.6037, 0.07, True, 31.4)}, 0.5)[0] == "nncf"  # 3.3% apart
    neither = {"nncf": Candidate(0.40, 4.0, False, 20.0), "qdq": Candidate(0.41, 3.0, False, 25.0)}
    chosen, reason = choose_quantizer(neither, 0.5)
    assert chosen == "qdq" and "none within" in reason


def test_x86_auto_builds_both_and_keeps_the_better(tmp_path, demo):
    """A real x86 `auto` PTQ of the demo at 96 px: both candidates built, evaluated and timed in OpenVINO."""
    from conftest import evaluator

    from edgecompress.yolo.model import export_onnx, load_model

    checkpoint, data = demo
    evaluate = evaluator(data, 96)

    def map50_95(artifact):
        return evaluate(artifact, tmp_path / "val")["map50_95"]

    (tmp_path / "export").mkdir()
    fp32 = export_onnx(load_model(checkpoint), 96, tmp_path / "export", "model")
    ir = TARGETS["x86"].convert(fp32, tmp_path / "export", "model")
    baseline = map50_95(ir)
    config = QuantConfig(calibration_images=8, max_float_layers=0, max_map_drop=1.0)
    artifact, info = quantize(fp32, ir, config, TARGETS["x86"], evaluate, tmp_path / "q", baseline)

    choice = info["quantizer_choice"]
    assert json.loads((tmp_path / "q" / "quantize.json").read_text())["quantizer_choice"] == choice
    assert choice["setting"] == "auto" and list(choice["candidates"]) == ["nncf", "qdq"]
    steps = [figures.pop("fallback_steps") for figures in choice["candidates"].values()]
    assert [len(s) for s in steps] == [1, 1]  # max_float_layers 0: one try each
    candidates = {name: Candidate(**figures) for name, figures in choice["candidates"].items()}
    assert all(c.latency_ms > 0 and 0 < c.map50_95 <= 1 for c in candidates.values())
    assert (choice["chosen"], choice["reason"]) == choose_quantizer(candidates, 1.0)
    kept = candidates[choice["chosen"]]
    assert info["quantizer"] == choice["chosen"]
    assert (info["int8_map50_95"], info["drop_points"]) == (kept.map50_95, kept.drop_points)
    # the kept candidate is workdir's one artifact: it loads in Ultralytics and scores what it did when chosen
    assert artifact == tmp_path / "q" / "model_int8_openvino_model" and (artifact / "metadata.yaml").is_file()
    assert not list((tmp_path / "q").glob("candidate-*"))
    assert map50_95(artifact) == kept.map50_95


def test_a_layer_kept_float_reads_float_values_through_concat_and_maxpool(tmp_path):
    fp32 = branching(tmp_path / "branching.onnx")
    head_conv = "/model.1/cv2.0/cv2.0.0/Conv"  # reads MaxPool(Concat(Split(b), Add(...)))
    model = onnx.load(str(qdq(fp32, tmp_path, OPENVINO, exclude=[*DECODE, head_conv])))
    inits = {t.name for t in model.graph.initializer}
    # the Split, Concat and MaxPool in front of it stay float: b reaches it unrounded; the inner conv and the Add
    # still read quantized s1 and e
    assert {n.input[0] for n in model.graph.node
            if n.op_type == "QuantizeLinear" and n.input[0] not in inits} == {"images", "s1", "e"}
    x = ramp_inputs()[1]
    expected = RUNTIMES["onnxruntime"].load(fp32).infer(x)[0]
    got = RUNTIMES["onnxruntime"].load(tmp_path / "q.onnx").infer(x)[0]
    assert 0 < np.abs(got - expected).max() < 0.02 * 640


@pytest.fixture(scope="module")
def demo_onnx(tmp_path_factory, demo):
    from edgecompress.yolo.model import export_onnx, load_model

    return export_onnx(load_model(demo[0]), 96, tmp_path_factory.mktemp("demo-onnx"), "model")


@pytest.mark.parametrize("target", ["onnx", "arm", "x86", "jetson-orin-nano"])
def test_every_calibration_method_gives_each_target_a_valid_artifact(demo_onnx, demo, tmp_path, target):
    """The (method, target) pairs: each builds, passes its runtime's rules (TensorRT's validator for jetson) and runs;
    a QDQ model the product builds that breaks a rule is the product's error, never the user's."""
    from conftest import evaluator

    from edgecompress.calibration.ranges import METHODS
    from edgecompress.quantize.quantizers import QUANTIZERS, Job

    t = TARGETS[target]
    config = QuantConfig(calibration_images=8)
    images = evaluator(demo[1], 96).dataset.calibration_images(8)
    job = Job(demo_onnx, demo_onnx, t, config, Scheme.of(t, config), images, 96)
    x = np.random.default_rng(0).random((1, 3, 96, 96), dtype=np.float32)
    for method in METHODS:
        artifact = QUANTIZERS["qdq"].build(job, [], tmp_path / method, method)
        qdq = tmp_path / method / "model_int8.onnx"
        if target.startswith("jetson"):
            assert tensorrt_rules.violations(onnx.load(str(qdq))) == [], method
        (out,) = RUNTIMES[t.int8_runtime].load(artifact).infer(x)
        assert out.shape == (1, 5, 189) and np.isfinite(out).all(), method
        assert all(lo <= hi for lo, hi in job.ranges(method).tensors.values()), method
