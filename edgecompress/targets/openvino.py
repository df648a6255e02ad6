"""OpenVINO on an x86 CPU: the FP32 ONNX converted to an IR, and INT8 from NNCF or from our QDQ ONNX."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edgecompress.targets.base import Int8Rules, Target

if TYPE_CHECKING:
    from edgecompress.pipeline.stage import Stage
    from edgecompress.recipe import Recipe
    from edgecompress.targets.frame import FrameConfig


@dataclass(frozen=True)
class OpenVINOTarget(Target):
    def deploy(self, recipe: Recipe) -> list[Stage]:
        from edgecompress.pipeline import stages

        # INT8 is held to the FP32 IR, measured in OpenVINO (which runs "FP32" in bf16 where the CPU has it)
        export, *int8 = super().deploy(recipe)
        return [export, stages.Convert(self), *int8]

    def convert(self, onnx_fp32: Path, folder: Path, stem: str) -> Path:
        return to_ir(onnx_fp32, folder / f"{stem}_openvino_model", onnx_fp32.parent / "metadata.yaml")

    def wrap(self, network: Path, config: FrameConfig, folder: Path) -> Path:
        from edgecompress.device.runtime import RUNTIMES
        from edgecompress.targets.frame import wrap_openvino

        ending = RUNTIMES[self.runtime].suffix  # an IR folder's, as Ultralytics' AutoBackend reads it
        return wrap_openvino(network, config, folder / f"{network.name.removesuffix(ending)}{config.suffix}{ending}")

    def from_qdq(self, qdq: Path, onnx_fp32: Path) -> Path:
        return to_ir(qdq, qdq.with_name(f"{qdq.stem}_openvino_model"), onnx_fp32.parent / "metadata.yaml")


def to_ir(onnx_path: Path, dest: Path, metadata_yaml: Path) -> Path:
    """An OpenVINO IR folder (`*_openvino_model`, as Ultralytics exports it) of an ONNX model, with its metadata."""
    import openvino as ov

    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    model = ov.convert_model(str(onnx_path))
    # The same runtime info as Ultralytics' own OpenVINO export, for tools that read it (OpenVINO Model API).
    model.set_rt_info("YOLO", ["model_info", "model_type"])
    model.set_rt_info(True, ["model_info", "reverse_input_channels"])
    model.set_rt_info(114, ["model_info", "pad_value"])
    model.set_rt_info([255.0], ["model_info", "scale_values"])
    model.set_rt_info("fit_to_window_letterbox", ["model_info", "resize_type"])
    ov.save_model(model, str(dest / f"{onnx_path.stem}.xml"), compress_to_fp16=False)
    shutil.copyfile(metadata_yaml, dest / "metadata.yaml")
    return dest


# NNCF's MIXED preset: asymmetric uint8 activations, symmetric per-channel int8 weights, Q/DQ where NNCF puts its
# FakeQuantize ops (OpenVINO runs each Q/DQ pair as one: onnxruntime's placement ran 1.25x slower, BENCHMARKS.md).
# oneDNN blocks channels by 8 (AVX2) or 16 (AVX-512); 16 suits both (BENCHMARKS.md, "Pruning": latency fell with
# FLOPs about 0.75 times rounded to 16, about 0.5 times unrounded).
# OpenVINO's Interpolate (the resize of a letterbox inside the graph) ran 10-20x slower than cv2.resize here, so the
# host letterboxes with OpenCV and the artifact does the rest (BENCHMARKS.md, "The whole frame").
X86 = OpenVINOTarget("x86", "x86 CPU with OpenVINO", "openvino", ("int8", "fp32"),
                     Int8Rules(("nncf", "qdq"), "uint8", symmetric_activations=False, placement="nncf"),
                     channel_multiple=16, frame_input="letterboxed")
