"""The runtimes that execute artifacts: load one and get a function from an input batch to its outputs.

numpy-only at import time; each runtime imports its own library when used.
"""

from __future__ import annotations

import importlib
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgecompress.errors import UserError

Infer = Callable[[np.ndarray], list[np.ndarray]]


@dataclass(frozen=True)
class Session:
    """A loaded artifact: its inference function and what it expects and uses."""

    infer: Infer
    input_shape: tuple[int | None, ...]  # None where the artifact takes any size (a dynamic axis)
    device_memory_mb: Callable[[], float] | None = None  # accelerator memory in use now, where the runtime has one
    # what float layers execute in, where the runtime chooses it: OpenVINO's CPU plugin runs "FP32" models in
    # bf16 on CPUs with bf16 instructions, which moves both latency and accuracy
    execution_precision: str | None = None


@dataclass(frozen=True)
class Runtime:
    """How to turn an FP32/QDQ ONNX into this runtime's artifact, and how to run that artifact."""

    name: str
    module: str  # the Python module that must import
    install: str  # what to install when it does not
    suffix: str  # the artifact name's ending, which Ultralytics' AutoBackend also keys on

    def unusable(self) -> str | None:
        """Why this runtime cannot run artifacts on this host (with what to install), or None when it can."""
        if self.name == "tensorrt":  # it can import without a GPU or driver: usable means a builder can be created
            from edgecompress.targets.tensorrt import unusable_reason

            return unusable_reason()
        try:  # importing, not just finding, the module: a broken install is as unusable as a missing one
            importlib.import_module(self.module)
        except ImportError:
            return f"runtime '{self.name}' is not installed here; install it with: {self.install}"
        return None

    def check(self) -> None:
        """Raise a UserError saying what to install when this runtime cannot run here."""
        if reason := self.unusable():
            raise UserError(reason)

    def artifact_path(self, folder: Path, stem: str) -> Path:
        return folder / f"{stem}{self.suffix}"

    def load(self, artifact: Path, threads: int = 0) -> Session:
        self.check()
        return _LOADERS[self.name](Path(artifact), threads)


def _load_onnxruntime(path: Path, threads: int) -> Session:
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    first = session.get_inputs()[0]
    shape = tuple(d if isinstance(d, int) else None for d in first.shape)  # named or None axes are dynamic
    return Session(lambda x: session.run(None, {first.name: x}), shape)


def _load_openvino(path: Path, threads: int) -> Session:
    import openvino as ov

    xml = next(path.glob("*.xml")) if path.is_dir() else path
    config: dict[str, object] = {"PERFORMANCE_HINT": "LATENCY"}  # batch 1 on the edge: latency, not throughput
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    compiled = ov.Core().compile_model(str(xml), "CPU", config)
    request = compiled.create_infer_request()
    shape = tuple(d.get_length() if d.is_static else None for d in compiled.inputs[0].get_partial_shape())
    precision = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()  # "f32", "bf16", ...
    return Session(lambda x: [request.infer({0: x})[o] for o in compiled.outputs], shape,
                   execution_precision=precision)


def _load_torch(path: Path, threads: int) -> Session:
    import torch

    from edgecompress.pipeline.yolo import load_model

    if threads:
        torch.set_num_threads(threads)
    model = load_model(path).float().eval()

    def infer(x: np.ndarray) -> list[np.ndarray]:
        with torch.inference_mode():
            y = model(torch.from_numpy(x))
        return [(y[0] if isinstance(y, (list, tuple)) else y).numpy()]

    return Session(infer, (None, 3, None, None))


def _load_tensorrt(path: Path, threads: int) -> Session:
    from edgecompress.targets.tensorrt import load_engine

    return load_engine(path)  # the GPU (or DLA) runs it: CPU threads do not apply


_LOADERS: dict[str, Callable[[Path, int], Session]] = {
    "onnxruntime": _load_onnxruntime,
    "openvino": _load_openvino,
    "torch": _load_torch,
    "tensorrt": _load_tensorrt,
}

RUNTIMES: dict[str, Runtime] = {
    r.name: r
    for r in (
        Runtime("onnxruntime", "onnxruntime", "pip install onnxruntime", ".onnx"),
        Runtime("openvino", "openvino", "pip install openvino", "_openvino_model"),
        Runtime("torch", "torch", "pip install 'edgecompress[full]'", ".pt"),
        # An engine with Ultralytics' metadata header; the plain engine beside it is `.plan`.
        Runtime("tensorrt", "tensorrt", "on a Jetson it comes with JetPack (sudo apt install nvidia-jetpack; "
                "create the venv with --system-site-packages); on an x86 NVIDIA GPU: pip install tensorrt",
                ".engine"),
    )
}


def artifact_bytes(path: Path) -> int:
    """Size on disk of an artifact: a file, or a folder such as OpenVINO's model directory."""
    path = Path(path)
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def convert_onnx(runtime: str, onnx_path: Path, dest: Path, metadata_yaml: Path) -> None:
    """Write `runtime`'s artifact for an ONNX model at `dest`, carrying Ultralytics' metadata."""
    if runtime == "onnxruntime":
        shutil.copyfile(onnx_path, dest)  # the ONNX already carries the metadata in its metadata_props
        return
    if runtime == "openvino":
        import openvino as ov

        dest.mkdir(parents=True, exist_ok=True)
        model = ov.convert_model(str(onnx_path))
        # The same runtime info as Ultralytics' own OpenVINO export, for tools that read it (OpenVINO Model API).
        model.set_rt_info("YOLO", ["model_info", "model_type"])
        model.set_rt_info(True, ["model_info", "reverse_input_channels"])
        model.set_rt_info(114, ["model_info", "pad_value"])
        model.set_rt_info([255.0], ["model_info", "scale_values"])
        model.set_rt_info("fit_to_window_letterbox", ["model_info", "resize_type"])
        ov.save_model(model, str(dest / f"{onnx_path.stem}.xml"), compress_to_fp16=False)
        shutil.copyfile(metadata_yaml, dest / "metadata.yaml")
        return
    raise ValueError(f"no conversion from ONNX to runtime {runtime!r}")
