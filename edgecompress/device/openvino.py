"""OpenVINO on the CPU: an IR folder (`*_openvino_model`, as Ultralytics exports it) or its .xml."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from edgecompress.device.runtime import RUNTIMES, Runtime, Session, frame_of


class OpenVINO(Runtime):
    name, module, install, suffix = "openvino", "openvino", "pip install openvino", "_openvino_model"

    def owns(self, artifact: Path) -> bool:
        return artifact.name.endswith((self.suffix, ".xml"))

    def _load(self, artifact: Path, threads: int, shared: bool) -> Session:
        import openvino as ov

        xml = xml_of(artifact)
        compiled = ov.Core().compile_model(str(xml), "CPU", compile_config(threads))
        request = compiled.create_infer_request()
        shape = tuple(d.get_length() if d.is_static else None for d in compiled.inputs[0].get_partial_shape())
        precision = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()  # "f32", "bf16", ...
        metadata = xml.parent / "metadata.yaml"  # Ultralytics' (and ours, for an artifact with the frame inside)

        def infer(x: np.ndarray) -> list[np.ndarray]:
            results = request.infer({0: x})
            return [results[o] for o in compiled.outputs]

        return Session(infer, shape, execution_precision=precision,
                       frame=frame_of(yaml.safe_load(metadata.read_text()) if metadata.is_file() else {}))


def xml_of(artifact: Path) -> Path:
    """The IR's .xml: the artifact itself, or the one inside its folder."""
    return next(artifact.glob("*.xml")) if artifact.is_dir() else artifact


def compile_config(threads: int = 0) -> dict[str, object]:
    """How every OpenVINO model here is compiled: batch 1 on the edge, so latency, not throughput."""
    config: dict[str, object] = {"PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    return config


RUNTIMES.add("openvino", OpenVINO())
