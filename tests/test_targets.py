"""The target registry: every profile's rules, the registry's errors, `compress targets`, and the engine header
Ultralytics reads (the Jetson bundle itself: test_jetson.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgecompress.cli import main
from edgecompress.config import ConfigError
from edgecompress.device.runtime import RUNTIMES
from edgecompress.device.tensorrt import read_engine, write_engine
from edgecompress.errors import UserError
from edgecompress.quantize.quantizers import QUANTIZERS
from edgecompress.targets import ALIASES, TARGETS, Int8Rules, Target, get_target
from edgecompress.targets.tensorrt import JetsonTarget

JETSONS = [t for t in TARGETS.values() if isinstance(t, JetsonTarget)]
INT8_CPUS = [t for t in TARGETS.values() if not isinstance(t, JetsonTarget) and t.int8]


@pytest.mark.parametrize("target", list(TARGETS.values()), ids=list(TARGETS))
def test_every_profile_is_complete(target: Target) -> None:
    assert target.runtime in RUNTIMES
    assert "fp32" in target.precisions
    if rules := target.int8:  # ncnn's wheels have no INT8 tools: its target runs FP32 and FP16 only
        assert rules.quantizers and all(q in QUANTIZERS for q in rules.quantizers)
        assert rules.activation_type == ("int8" if rules.symmetric_activations else "uint8")
    assert target.batch == 1 and target.imgsz % 32 == 0
    assert target.channel_multiple >= 1


@pytest.mark.parametrize("target", JETSONS, ids=[t.name for t in JETSONS])
def test_jetsons_follow_tensorrt_rules(target: Target) -> None:
    rules = target.int8
    assert rules is not None
    assert rules.symmetric_activations and rules.activation_type == "int8"  # zero point 0
    assert rules.strict and rules.placement == "tensorrt"
    assert target.channel_multiple == 8 and "fp16" in target.precisions
    assert target.workspace_mib > 0  # the boards share memory with the application


def test_dla_cores_per_board() -> None:
    assert {t.name: t.dla_cores for t in JETSONS} == {"jetson-orin-nano": 0, "jetson-orin-nx": 2,
                                                      "jetson-agx-orin": 2}


@pytest.mark.parametrize("target", INT8_CPUS, ids=[t.name for t in INT8_CPUS])
def test_cpu_targets_take_asymmetric_uint8_and_no_fp16(target: Target) -> None:
    rules = target.int8
    assert rules is not None and not rules.symmetric_activations and rules.activation_type == "uint8"
    assert "fp16" not in target.precisions and not rules.strict


def test_jetson_is_the_orin_nano() -> None:
    assert get_target("jetson") is TARGETS["jetson-orin-nano"]
    assert all(name in TARGETS for name in ALIASES.values())


@pytest.mark.parametrize(("name", "closest"), [("jetson-orin-nan", "jetson-orin-nano"), ("x68", "x86"),
                                               ("jetson-agx", "jetson-agx-orin"), ("onxx", "onnx")])
def test_unknown_target_suggests_the_closest(name: str, closest: str) -> None:
    with pytest.raises(UserError, match=rf"unknown target '{name}' \(did you mean '{closest}'\?\); choose one of "
                                        r"jetson-orin-nano, .*jetson"):
        get_target(name)


@pytest.mark.parametrize(("changes", "message"), [
    ({"runtime": "tflite"}, "unknown runtime 'tflite'"),
    ({"precisions": ("int4", "fp32")}, "must be a non-empty subset"),
    ({"int8": None}, "give Int8Rules exactly when 'int8'"),
    ({"imgsz": 100}, "imgsz 100 is not a multiple of 32"),
    ({"channel_multiple": 0}, "channel_multiple and batch must be >= 1"),
])
def test_bad_profiles_are_refused(changes: dict, message: str) -> None:
    fields = {"name": "board", "runtime": "onnxruntime", "description": "", "precisions": ("int8", "fp32"),
              "int8": Int8Rules(("qdq",), "uint8", False)}
    with pytest.raises(ConfigError, match=message):
        Target(**{**fields, **changes})


def test_rules_name_quantizers_that_exist() -> None:
    with pytest.raises(ConfigError, match="unknown quantizer 'qdk' \\(did you mean 'qdq'"):
        Int8Rules(("qdk",), "uint8", False)


def test_compress_targets_lists_every_profile_and_what_to_install(capsys) -> None:
    assert main(["targets"]) == 0
    out = capsys.readouterr().out
    for target in TARGETS.values():
        line = next(li for li in out.splitlines() if li.startswith(f"{target.name} "))
        reason = RUNTIMES[target.runtime].unusable()
        assert line.split()[-2:] == ["no" if reason else "yes", "no" if target.unusable() else "yes"]
        if reason:
            assert reason in out
    assert "jetson = jetson-orin-nano" in out


def test_engine_header_is_the_one_ultralytics_reads(tmp_path: Path) -> None:
    from ultralytics.nn.backends.base import BaseBackend

    metadata = {"stride": 32, "names": {"0": "raccoon"}, "imgsz": [96, 96], "dla": "0"}
    plan = bytes(range(256)) * 4  # stands in for engine bytes: the header format does not look inside them
    write_engine(tmp_path / "m.engine", plan, metadata)
    offset, theirs = BaseBackend.engine_header(tmp_path / "m.engine")
    assert theirs == metadata and (tmp_path / "m.engine").read_bytes()[offset:] == plan
    assert read_engine(tmp_path / "m.engine") == (metadata, plan)
    (tmp_path / "m.plan").write_bytes(plan)
    assert read_engine(tmp_path / "m.plan") == ({}, plan)


def test_onnxruntime_targets_take_the_dfl_softmax_on_the_last_axis_with_the_same_outputs(demo, tmp_path: Path) -> None:
    import shutil

    import numpy as np
    import onnx

    from edgecompress.calibration.graph import dfl_softmax_last_axis
    from edgecompress.recipe import Recipe
    from edgecompress.yolo.model import export_onnx, load_model

    exported = export_onnx(load_model(demo[0]), 64, tmp_path / "export", "model")
    rewritten = shutil.copy2(exported, tmp_path / "last-axis.onnx")
    assert dfl_softmax_last_axis(rewritten)
    ops = {n.op_type: n for n in onnx.load(str(rewritten)).graph.node if "/dfl/" in n.name}
    assert "Conv" not in ops and "MatMul" in ops and ops["Softmax"].attribute[0].i == -1
    x = np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)
    before, after = (RUNTIMES["onnxruntime"].load(p).infer(x)[0] for p in (exported, rewritten))
    assert np.allclose(before, after, atol=1e-5)
    plain = tmp_path / "plain.onnx"  # no DFL (as YOLO26's head): left as it is
    info = onnx.helper.make_tensor_value_info
    onnx.save(onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Softmax", ["x"], ["y"], axis=1)], "plain", [info("x", onnx.TensorProto.FLOAT, [1, 4])],
        [info("y", onnx.TensorProto.FLOAT, [1, 4])])), str(plain))
    written = plain.read_bytes()
    assert not dfl_softmax_last_axis(plain) and plain.read_bytes() == written
    recipe = Recipe.from_dict({"model": str(demo[0]), "data": str(demo[1])})
    exports = {name: get_target(name).deploy(get_target(name).preset(recipe))[0] for name in ("onnx", "arm", "x86")}
    assert {name: stage.dfl_last_axis for name, stage in exports.items()} == {"onnx": True, "arm": True, "x86": False}
