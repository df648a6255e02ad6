"""TensorRT engines on the device: load and run one with only `tensorrt`, numpy and the CUDA runtime library
(reached through ctypes, so a device needs neither torch nor pycuda). Building engines is the Jetson target's
(edgecompress.targets.tensorrt).

Engines come in two forms: `.engine` carries Ultralytics' metadata header (a 4-byte little-endian length, the JSON
metadata, then the serialized engine; `ultralytics.YOLO(path)` loads it), `.plan` is the bare engine that trtexec
and DeepStream read.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress.device.runtime import RUNTIMES, Runtime, Session, frame_of
from edgecompress.errors import UserError

INSTALL = ("on a Jetson it comes with JetPack (sudo apt install nvidia-jetpack; create the venv with "
           "--system-site-packages); on an x86 NVIDIA GPU: pip install tensorrt")


class TensorRT(Runtime):
    name, module, install, suffix = "tensorrt", "tensorrt", INSTALL, ".engine"

    def owns(self, artifact: Path) -> bool:
        return artifact.name.endswith((".engine", ".plan"))

    def unusable(self) -> str | None:
        return unusable_reason()  # it can import without a GPU or driver: usable means a builder can be created

    def _load(self, artifact: Path, threads: int, shared: bool) -> Session:
        return load_engine(artifact)  # the GPU (or DLA) runs it: CPU threads do not apply


@functools.cache
def unusable_reason() -> str | None:
    """Why TensorRT cannot build or run engines here, or None when it can. Detected once per process: importing
    is not enough (the package imports on machines without an NVIDIA driver), a builder must also be created."""
    try:
        import tensorrt as trt
    except (ImportError, OSError) as e:  # OSError: the package is there but libnvinfer is not
        return f"TensorRT is not usable here: `import tensorrt` fails ({e}); {INSTALL}"
    try:
        builder = trt.Builder(trt.Logger(trt.Logger.ERROR))
    except Exception as e:  # the bindings raise TypeError/RuntimeError when no CUDA device or driver answers
        builder, error = None, f"{type(e).__name__}: {e}"
    else:
        error = "the builder is None"
    if builder is None:
        return (f"TensorRT {trt.__version__} imports but cannot create a builder ({error}): "
                f"this host has no usable NVIDIA GPU and driver")
    return None


def write_engine(path: Path, plan: bytes, metadata: dict[str, Any]) -> None:
    """An engine with Ultralytics' header: 4-byte little-endian signed length, JSON metadata, then the engine."""
    meta = json.dumps(metadata).encode()
    path.write_bytes(len(meta).to_bytes(4, byteorder="little", signed=True) + meta + plan)


def read_engine(path: Path) -> tuple[dict[str, Any], bytes]:
    """The metadata header ({} for a bare plan) and the serialized engine of an engine file."""
    data = Path(path).read_bytes()
    n = int.from_bytes(data[:4], byteorder="little")
    if 0 < n <= len(data) - 4:  # as Ultralytics reads it: a length that fits and JSON that parses is a header
        try:
            return json.loads(data[4:4 + n]), data[4 + n:]
        except ValueError:  # (UnicodeDecodeError is one) engine bytes are not JSON
            pass
    return {}, data


class _CudaRuntime:
    """The few CUDA runtime calls running an engine needs, through ctypes on libcudart (present wherever TensorRT
    runs), so a device needs no pycuda, cuda-python or torch."""

    HOST_TO_DEVICE, DEVICE_TO_HOST = 1, 2  # cudaMemcpyKind

    def __init__(self) -> None:
        self.lib = ctypes.CDLL(_find_cudart())
        self.stream = ctypes.c_void_p()
        self.call("cudaStreamCreate", ctypes.byref(self.stream))

    def call(self, name: str, *args: Any) -> None:
        status = getattr(self.lib, name)(*args)
        if status:
            raise RuntimeError(f"CUDA {name} failed with error {status}")

    def malloc(self, nbytes: int) -> int:
        pointer = ctypes.c_void_p()
        self.call("cudaMalloc", ctypes.byref(pointer), ctypes.c_size_t(max(nbytes, 1)))
        return int(pointer.value or 0)

    def copy(self, dst: int, src: int, nbytes: int, kind: int) -> None:
        self.call("cudaMemcpyAsync", ctypes.c_void_p(dst), ctypes.c_void_p(src), ctypes.c_size_t(nbytes),
                  ctypes.c_int(kind), self.stream)

    def synchronize(self) -> None:
        self.call("cudaStreamSynchronize", self.stream)

    def used_mb(self) -> float:
        """Device memory in use (all processes; on a Jetson the GPU shares system memory, so the system's)."""
        free, total = ctypes.c_size_t(), ctypes.c_size_t()
        self.call("cudaMemGetInfo", ctypes.byref(free), ctypes.byref(total))
        return (total.value - free.value) / 2**20


def _find_cudart() -> str:
    found = ctypes.util.find_library("cudart")
    candidates = [found] if found else []
    for root in (Path("/usr/local/cuda/lib64"), Path("/usr/local/cuda/targets/aarch64-linux/lib"),
                 *(Path(p) / "nvidia" / "cuda_runtime" / "lib" for p in sys.path)):  # pip's nvidia-cuda-runtime
        candidates += sorted(str(p) for p in root.glob("libcudart.so*")) if root.is_dir() else []
    if not candidates:
        raise UserError("libcudart (the CUDA runtime) is not found; on a Jetson install JetPack's CUDA "
                        "(sudo apt install nvidia-jetpack), elsewhere pip install nvidia-cuda-runtime-cu12")
    return candidates[0]


def load_engine(path: Path) -> Session:
    """Load an engine (either form) to run batches of numpy input; outputs come back in the engine's I/O order."""
    import tensorrt as trt

    if reason := unusable_reason():
        raise UserError(reason)
    cuda = _CudaRuntime()
    baseline_mb = cuda.used_mb()  # after the CUDA context, before the engine: what the engine itself takes
    metadata, plan = read_engine(path)
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    if metadata.get("dla") is not None:
        runtime.DLA_core = int(metadata["dla"])
    engine = runtime.deserialize_cuda_engine(plan)
    if engine is None:
        raise UserError(f"{path} is not an engine TensorRT {trt.__version__} on this device can load; engines "
                        f"are tied to the TensorRT version and GPU that built them: rebuild it here")
    context = engine.create_execution_context()
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    if len(inputs) != 1:
        raise UserError(f"{path} has {len(inputs)} inputs {inputs}; a YOLO detector engine has one")
    (name_in,) = inputs
    name_out = [n for n in names if n != name_in]
    dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names}
    buffers: dict[str, tuple[int, np.ndarray]] = {}  # name -> (device pointer, host array), for the current shape

    def bind(shape: tuple[int, ...]) -> None:
        """(Re)allocate every binding for an input shape; an engine built static binds once."""
        for pointer, _ in buffers.values():
            cuda.call("cudaFree", ctypes.c_void_p(pointer))
        buffers.clear()
        if not context.set_input_shape(name_in, shape):
            raise ValueError(f"input shape {shape} is outside the engine's optimization profile")
        for n in names:
            host = np.empty(tuple(context.get_tensor_shape(n)), dtypes[n])
            buffers[n] = (cuda.malloc(host.nbytes), host)
            context.set_tensor_address(n, buffers[n][0])

    def infer(x: np.ndarray) -> list[np.ndarray]:
        x = np.ascontiguousarray(x, dtype=dtypes[name_in])  # an FP16-input engine takes half floats
        if name_in not in buffers or buffers[name_in][1].shape != x.shape:
            bind(x.shape)
        cuda.copy(buffers[name_in][0], x.ctypes.data, x.nbytes, cuda.HOST_TO_DEVICE)
        if not context.execute_async_v3(cuda.stream.value):
            raise RuntimeError(f"TensorRT failed to run {path}")
        for n in name_out:
            pointer, host = buffers[n]
            cuda.copy(host.ctypes.data, pointer, host.nbytes, cuda.DEVICE_TO_HOST)
        cuda.synchronize()
        return [buffers[n][1].copy() for n in name_out]

    shape = tuple(d if d >= 0 else None for d in engine.get_tensor_shape(name_in))
    return Session(infer, shape, lambda: cuda.used_mb() - baseline_mb, frame=frame_of(metadata))


RUNTIMES.add("tensorrt", TensorRT())
