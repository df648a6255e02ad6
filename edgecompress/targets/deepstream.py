"""The DeepStream side of a Jetson bundle: an nvinfer config per engine, labels.txt, and the source of the bounding-box
parser that reads the engine's output.

The engine's output is Ultralytics' raw detection tensor, `output0`, (1, 4 + classes, anchors): box centre x, y,
width and height in pixels of the letterboxed input, then each class's score after the sigmoid; no NMS inside. No
stock DeepStream parser reads that layout: the community DeepStream-Yolo library's NvDsInferParseYolo expects the
(anchors, 6) tensor its own export script appends (x1, y1, x2, y2, score, class). So the bundle ships a small
parser for the layout as it is (PARSER_SOURCE, built with one g++ line on the device) and lets nvinfer cluster
with NMS (cluster-mode=2), with Ultralytics' predict defaults: confidence 0.25, IoU 0.7, 300 boxes.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

LABELS = "labels.txt"
PARSER_SOURCE = "nvdsparsebbox_ultralytics.cpp"
PARSER_LIBRARY = "libnvdsparsebbox_ultralytics.so"
PARSER_FUNCTION = "NvDsInferParseUltralytics"
BUILD = (f"g++ -std=c++17 -O2 -shared -fPIC -I/opt/nvidia/deepstream/deepstream/sources/includes "
         f"-I/usr/local/cuda/include {PARSER_SOURCE} -o {PARSER_LIBRARY}")
CONFIDENCE, IOU, MAX_BOXES = 0.25, 0.7, 300  # Ultralytics' predict defaults (conf, iou, max_det)


def config_name(stem: str) -> str:
    return f"config_infer_primary_{stem}.txt"


def write(folder: Path, metadata: dict[str, Any], builds: list[tuple[str, int | None]], int8: bool) -> dict[str, Any]:
    """labels.txt, the parser's source and one nvinfer config per engine ((stem, DLA core) of `builds`; `int8`: the
    engine's ONNX has Q/DQ) into the bundle `folder`; returns the file names for the report."""
    names = {int(k): v for k, v in metadata["names"].items()}
    (folder / LABELS).write_text("".join(f"{names[i]}\n" for i in range(len(names))))
    source = resources.files("edgecompress.targets") / PARSER_SOURCE
    (folder / PARSER_SOURCE).write_text(source.read_text())
    configs = []
    for stem, dla in builds:
        configs.append(config_name(stem))
        (folder / configs[-1]).write_text(nvinfer_config(f"{stem}.plan", metadata, len(names), dla, int8))
    return {"configs": configs, "labels": LABELS, "parser": PARSER_SOURCE, "build": BUILD}


def nvinfer_config(engine: str, metadata: dict[str, Any], classes: int, dla_core: int | None, int8: bool) -> str:
    """The [property] and [class-attrs-all] groups of a gst-nvinfer config for one engine of the bundle."""
    height, width = metadata["imgsz"]
    lines = [
        f"# DeepStream gst-nvinfer config for {engine} (edgecompress bundle; the engine comes from trtexec.sh).",
        f"# Output layout: one tensor output0 (1, {4 + classes}, anchors): box centre x, y, width, height in input",
        f"# pixels, then {classes} class scores after the sigmoid; no NMS in the engine, nvinfer clusters (NMS).",
        "# The parser is not DeepStream-Yolo's NvDsInferParseYolo (which reads the (anchors, 6) tensor its own",
        "# export appends): build the one beside this file, on the device, before deepstream-app:",
        f"#   {BUILD}",
        "# YOLO26 as exported here keeps its one-to-many head, which needs NMS like YOLOv8/YOLO11; its NMS-free",
        "# end-to-end head (an Ultralytics export with nms=False, output (1, 300, 6) x1, y1, x2, y2, score, class)",
        "# is read by DeepStream-Yolo's NvDsInferParseYolo as is, with cluster-mode=4 (no clustering).",
        "[property]",
        "gpu-id=0",
        "net-scale-factor=0.0039215697906911373",  # 1/255: Ultralytics feeds RGB scaled to 0..1
        "model-color-format=0",  # RGB
        f"model-engine-file={engine}",  # no onnx-file: nvinfer would rebuild it weakly typed, not as measured
        f"labelfile-path={LABELS}",
        f"infer-dims=3;{height};{width}",
        "batch-size=1",
        f"network-mode={1 if int8 else 2}",  # INT8 / FP16; for a prebuilt engine a label: its ONNX's typing rules
        f"num-detected-classes={classes}",
        "interval=0",
        "gie-unique-id=1",
        "process-mode=1",
        "network-type=0",
        "maintain-aspect-ratio=1",  # letterbox, centred, as Ultralytics preprocesses
        "symmetric-padding=1",
        "cluster-mode=2",
        f"parse-bbox-func-name={PARSER_FUNCTION}",
        f"custom-lib-path={PARSER_LIBRARY}",
    ]
    if dla_core is not None:
        lines += ["enable-dla=1", f"use-dla-core={dla_core}"]
    lines += ["", "[class-attrs-all]", f"pre-cluster-threshold={CONFIDENCE}", f"nms-iou-threshold={IOU}",
              f"topk={MAX_BOXES}", ""]
    return "\n".join(lines)
