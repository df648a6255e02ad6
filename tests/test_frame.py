"""The whole frame inside the artifact (edgecompress.targets.frame): real artifacts of the demo, wrapped every way,
in onnxruntime and OpenVINO, against the host's letterbox and NMS; a Jetson bundle with the frame inside against
TensorRT's rules; the recipe's checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgecompress.config import ConfigError
from edgecompress.device.detector import Detector
from edgecompress.device.images import read_images
from edgecompress.device.postprocess import Thresholds
from edgecompress.device.runtime import RUNTIMES
from edgecompress.targets import TARGETS, get_target
from edgecompress.targets.frame import INPUTS, FrameConfig

IMGSZ = 160
EVAL = Thresholds(conf=0.001, iou=0.7)
WRAPS = [(target, inp) for target in ("onnx", "x86") for inp in INPUTS]


@pytest.fixture(scope="module")
def networks(tmp_path_factory: pytest.TempPathFactory, demo: tuple[Path, Path]) -> dict[str, Path]:
    """The demo's FP32 network as each CPU target runs it: the ONNX, and its OpenVINO IR."""
    from edgecompress.yolo.model import export_onnx, load_model

    folder = tmp_path_factory.mktemp("networks")
    onnx_path = export_onnx(load_model(demo[0]), IMGSZ, folder / "export", "model")
    return {"onnx": onnx_path, "x86": get_target("x86").convert(onnx_path, folder, "model")}


@pytest.fixture(scope="module")
def frames(demo: tuple[Path, Path]) -> list[np.ndarray]:
    """The demo's val images, decoded: sizes from 184x274 to 640x480, none square."""
    from edgecompress.device.images import dataset_images

    decoded, _ = read_images(dataset_images(demo[1]))
    return decoded


@pytest.mark.parametrize("inp", INPUTS)
def test_wrapped_artifact_detects_what_the_host_path_detects(tmp_path: Path, networks: dict[str, Path],
                                                             frames: list[np.ndarray], inp: str) -> None:
    """In float32 throughout (onnxruntime) the same detections, boxes to the in-graph resize's rounding. (OpenVINO
    runs float in bf16 here, so there only accuracy is compared, below.)"""
    wrapped = TARGETS["onnx"].wrap(networks["onnx"], FrameConfig(input=inp), tmp_path)
    session = RUNTIMES["onnxruntime"].load(wrapped)
    assert session.takes == inp and session.imgsz == IMGSZ and session.frame["nms"]
    inside, host = Detector(session, IMGSZ), Detector(RUNTIMES["onnxruntime"].load(networks["onnx"]), IMGSZ)
    found = 0
    for frame in frames:
        ours, theirs = inside(frame), host(frame)
        found += len(ours)
        assert ours.shape[1] == 6 and np.all(np.diff(ours[:, 4]) <= 0)  # best first
        assert np.all(ours[:, [0, 2]] <= frame.shape[1]) and np.all(ours[:, [1, 3]] <= frame.shape[0])
        assert len(ours) == len(theirs)
        assert np.abs(ours - theirs).max(initial=0) < (1.0 if inp == "frame" else 1e-3)
    assert found >= 5  # raccoons at the deployed confidence, 0.25


def test_host_and_inside_nms_keep_the_same_box_among_equal_scores(tmp_path: Path, networks: dict[str, Path]) -> None:
    """An INT8 head gives many anchors the same score: among overlapping boxes of equal score, the host's NMS keeps
    the one onnxruntime's NonMaxSuppression keeps (the lowest anchor), else the two paths' mAP differ by tenths of a
    point on the same network (BENCHMARKS.md, "The whole frame")."""
    import onnx

    from edgecompress.device.postprocess import postprocess
    from edgecompress.targets.frame import post_graph

    raw = np.zeros((1, 5, 8), np.float32)  # one class; anchors 0-2 overlap and tie, 3 ties apart, 4-7 below conf
    raw[0, :4, :4] = np.array([[100, 100, 40, 40], [104, 100, 40, 40], [100, 104, 40, 40], [300, 300, 20, 20]]).T
    raw[0, 4, :4] = 0.5
    config = FrameConfig(input="tensor").with_thresholds(EVAL.conf, EVAL.iou)
    graph = tmp_path / "nms.onnx"
    onnx.save(post_graph(raw.shape, config, onnx.load(str(networks["onnx"]))), str(graph))
    import onnxruntime as ort

    inside = postprocess(ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"]).run(None, {
        "output0": raw})[0], EVAL)
    host = postprocess(raw, EVAL)
    assert len(host) == len(inside) == 2
    np.testing.assert_allclose(host, inside, atol=1e-4)
    assert host[0, 0] == pytest.approx(80.0)  # anchor 0's box (centre 100, width 40)


@pytest.mark.parametrize(("target", "inp"), WRAPS, ids=[f"{t}-{i}" for t, i in WRAPS])
def test_accuracy_inside_matches_the_network_fed_by_the_host(tmp_path: Path, networks: dict[str, Path],
                                                             demo: tuple[Path, Path], target: str, inp: str) -> None:
    """The issue's check: the artifact with the frame inside scores the plain artifact's mAP50-95 to 0.1 point,
    both fed the eval images as a device feeds them, at the eval thresholds."""
    from conftest import evaluator

    evaluate = evaluator(demo[1], IMGSZ)
    runtime = TARGETS[target].runtime
    twin = TARGETS[target].wrap(networks[target], FrameConfig(input=inp).with_thresholds(EVAL.conf, EVAL.iou),
                                tmp_path)
    inside = evaluate.frames(Detector(RUNTIMES[runtime].load(twin), IMGSZ, EVAL), tmp_path)
    host = evaluate.frames(Detector(RUNTIMES[runtime].load(networks[target]), IMGSZ, EVAL), tmp_path)
    assert inside["images"] == host["images"] == 12 and inside["protocol"] == "frames"
    assert abs(inside["map50_95"] - host["map50_95"]) <= 0.001
    assert host["map50_95"] > 0.2


def test_frames_protocol_agrees_with_ultralytics_validator_on_the_network(tmp_path: Path, networks: dict[str, Path],
                                                                         demo: tuple[Path, Path]) -> None:
    """The same network, by Ultralytics' validator and fed frames: the two protocols differ only where the images
    are resized (its validator shrinks with INTER_AREA and rounds sizes up, a device's letterbox uses bilinear), so
    at 640, where the demo's images are scaled up, they agree."""
    from conftest import evaluator

    from edgecompress.yolo.model import export_onnx, load_model

    network = export_onnx(load_model(demo[0]), 640, tmp_path / "export", "model")
    evaluate = evaluator(demo[1], 640)
    validator = evaluate(network, tmp_path)["map50_95"]
    fed = evaluate.frames(Detector(RUNTIMES["onnxruntime"].load(network), 640, EVAL), tmp_path)["map50_95"]
    assert abs(validator - fed) < 0.01


def test_nms_inside_loads_and_validates_in_ultralytics(tmp_path: Path, networks: dict[str, Path],
                                                       demo: tuple[Path, Path]) -> None:
    """`input: tensor` with NMS inside keeps Ultralytics' input: its YOLO() loads it as an end-to-end model."""
    from ultralytics import YOLO

    wrapped = TARGETS["onnx"].wrap(networks["onnx"], FrameConfig(input="tensor"), tmp_path)
    model = YOLO(str(wrapped), task="detect")
    image = min((demo[1].parent / "images" / "val").iterdir())
    boxes = model.predict(str(image), imgsz=IMGSZ, verbose=False)[0].boxes
    host = Detector(RUNTIMES["onnxruntime"].load(networks["onnx"]), IMGSZ)(read_images([image])[0][0])
    assert np.allclose(boxes.data.numpy(), host, atol=1e-3)
    metrics = model.val(data=str(demo[1]), imgsz=IMGSZ, batch=1, plots=False, verbose=False, project=str(tmp_path))
    assert metrics.box.map > 0.1


@pytest.mark.parametrize(("changes", "message"), [
    ({"input": "frame", "nms": False}, "frame.input: frame needs frame.nms: true"),
    ({"input": "camera"}, "frame.input must be one of target, frame, letterboxed, tensor; got 'camera'"),
    ({"max_det": 5000}, "frame.max_det must be between 1 and 3840"),
    ({"conf": 1.0}, r"frame.conf must be in \[0, 1\)"),
])
def test_frame_config_refuses_what_cannot_work(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        FrameConfig(**changes)


def test_each_target_fills_in_its_measured_input() -> None:
    from edgecompress.recipe import Recipe

    chosen = {name: target.preset(Recipe(target=name)).frame.input for name, target in TARGETS.items()}
    assert chosen == {"jetson-orin-nano": "frame", "jetson-orin-nx": "frame", "jetson-agx-orin": "frame",
                      "x86": "letterboxed", "arm": "letterboxed", "onnx": "letterboxed", "ncnn": "tensor"}
    assert Recipe(target="x86", frame=FrameConfig(input="tensor", nms=False)).frame.enabled is False


def test_jetson_bundle_with_the_frame_inside_passes_tensorrt_rules(tmp_path: Path, networks: dict[str, Path],
                                                                   demo: tuple[Path, Path]) -> None:
    import onnx
    import yaml

    from edgecompress.calibration.data import Batches
    from edgecompress.calibration.graph import head_decode_nodes
    from edgecompress.calibration.ranges import collect, estimate_ranges
    from edgecompress.device.tensorrt import unusable_reason
    from edgecompress.quantize.config import QuantConfig
    from edgecompress.quantize.qdq import quantize_qdq
    from edgecompress.quantize.scheme import Scheme
    from edgecompress.targets import tensorrt_rules
    from edgecompress.targets.tensorrt import prepare_jetson
    from edgecompress.yolo.data import Dataset

    jetson, fp32 = get_target("jetson-orin-nx"), networks["onnx"]
    images = Dataset.check(demo[1], 1).calibration_images(8)
    ranges = estimate_ranges(collect(fp32, Batches(images, IMGSZ), histograms=False), "minmax", symmetric=True)
    decode = head_decode_nodes(onnx.load(str(fp32)))
    qdq = quantize_qdq(fp32, ranges, tmp_path / "model_int8.onnx", Scheme.of(jetson, QuantConfig("ptq")), decode)
    config = FrameConfig(input="frame")
    wrapped = jetson.wrap(qdq, config, tmp_path)  # checks the rules itself
    model = onnx.load(str(wrapped))
    assert tensorrt_rules.violations(model) == []
    assert set(head_decode_nodes(model)) == set(decode)  # the head found behind the NMS
    ops = {n.op_type for n in model.graph.node}
    assert {"Resize", "Pad", "NonMaxSuppression", "TopK", "QuantizeLinear"} <= ops
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [onnx.TensorProto.UINT8]

    metadata = yaml.safe_load((fp32.parent / "metadata.yaml").read_text())
    info = prepare_jetson(qdq, metadata, jetson, tmp_path / "bundle", frame=(wrapped, config.describe(IMGSZ)))
    bundle = tmp_path / "bundle"
    assert info["frame_onnx"] == wrapped.name and (bundle / wrapped.name).is_file()
    assert json.loads((bundle / "frame.json").read_text())["input"] == "frame"
    commands = [li for li in (bundle / "trtexec.sh").read_text().splitlines() if li.startswith('"$TRTEXEC" --onnx=')]
    assert len(commands) == 3  # the network on the GPU and on DLA core 0, the frame artifact on the GPU
    frame_command = next(c for c in commands if f"--onnx={wrapped.name}" in c)
    assert "--saveEngine=model_frame.plan" in frame_command and "--useDLACore" not in frame_command
    assert f"--minShapes=frame:1x32x32x3 --optShapes=frame:1x{IMGSZ}x{IMGSZ}x3 --maxShapes=frame:1x1920x1920x3" \
        in frame_command
    if unusable_reason() is not None:
        assert info["engine"] is None and not list(bundle.glob("*.plan"))
