"""TensorRT for the Jetson targets: build engines from a QDQ ONNX, and run them, with only `tensorrt`, numpy and
the CUDA runtime library (reached through ctypes, so a device needs neither torch nor pycuda).

Every build writes the equivalent `trtexec` command beside the ONNX, so a host without TensorRT still hands over
everything the device needs: the validated QDQ ONNX, its metadata and the command that builds the engine there.

Engines come in two forms: `.engine` carries Ultralytics' metadata header (a 4-byte little-endian length, the JSON
metadata, then the serialized engine; `ultralytics.YOLO(path)` loads it), `.plan` is the bare engine that trtexec
and DeepStream read.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress import __version__
from edgecompress.errors import UserError
from edgecompress.targets import Target, get_target
from edgecompress.targets.runtimes import RUNTIMES, Session

TIMING_CACHE = "timing.cache"
TRTEXEC_SCRIPT = "trtexec.sh"
METADATA = "metadata.json"
_NO_ENGINE = "the engine is built on the device: copy this folder there and run trtexec.sh, or " \
             "`python3 -m edgecompress.targets.tensorrt FOLDER --target NAME` for the .engine with metadata"


@functools.cache
def unusable_reason() -> str | None:
    """Why TensorRT cannot build or run engines here, or None when it can. Detected once per process: importing
    is not enough (the package imports on machines without an NVIDIA driver), a builder must also be created."""
    install = RUNTIMES["tensorrt"].install
    try:
        import tensorrt as trt
    except (ImportError, OSError) as e:  # OSError: the package is there but libnvinfer is not
        return f"TensorRT is not usable here: `import tensorrt` fails ({e}); {install}"
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


def prepare_jetson(onnx_path: Path, metadata: dict[str, Any], target: Target, folder: Path,
                   timing_cache: Path | None = None) -> dict[str, Any]:
    """Make `folder` the bundle a Jetson needs: the QDQ ONNX, its Ultralytics metadata, the trtexec command, and,
    where TensorRT is usable here, the engines (GPU, plus DLA core 0 on boards with DLA) in both forms.

    `metadata` is the dict of the metadata.yaml that export_onnx writes. Returns JSON-ready facts for the report;
    "engine" is None, with a "reason", when this host cannot build engines.
    """
    folder.mkdir(parents=True, exist_ok=True)
    onnx_copy = folder / onnx_path.name
    if onnx_copy.resolve() != onnx_path.resolve():
        shutil.copyfile(onnx_path, onnx_copy)
    (folder / METADATA).write_text(json.dumps(metadata, indent=1))
    cache = timing_cache or folder / TIMING_CACHE
    builds = _builds(target)
    (folder / TRTEXEC_SCRIPT).write_text(trtexec_script(onnx_copy.name, builds, target, cache.name))
    info: dict[str, Any] = {"target": target.name, "onnx": onnx_copy.name, "trtexec": TRTEXEC_SCRIPT,
                            "engine": None, "engines": []}
    if reason := unusable_reason():
        return {**info, "reason": f"{reason}; {_NO_ENGINE}"}
    info["engines"] = [build_engine(onnx_copy, folder, stem, dla, target, metadata, cache)
                       for stem, dla in builds]
    info["engine"] = info["engines"][0]["engine"]
    return info


def _builds(target: Target) -> list[tuple[str, int | None]]:
    """(file stem, DLA core) of each engine to build: the GPU, and DLA core 0 where the board has one."""
    return [("model", None)] + ([("model.dla0", 0)] if target.dla_cores else [])


def trtexec_script(onnx_name: str, builds: list[tuple[str, int | None]], target: Target, cache_name: str) -> str:
    """A shell script with the trtexec command for each engine, the same settings build_engine uses."""
    lines = [
        "#!/bin/sh",
        f"# TensorRT engines for {target.description}, from the QDQ ONNX beside this file (edgecompress "
        f"{__version__}).",
        "# Run it on the device. These write bare .plan engines (trtexec, DeepStream); for the .engine that",
        f"# ultralytics.YOLO() loads: python3 -m edgecompress.targets.tensorrt . --target {target.name}",
        "set -e",
        'cd "$(dirname "$0")"',
        # JetPack installs trtexec outside PATH
        'TRTEXEC="${TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}"',
    ]
    for stem, dla in builds:
        flags = ["--int8"] + (["--fp16"] if target.fp16_fallback else [])
        if target.workspace_mib:
            flags.append(f"--memPoolSize=workspace:{target.workspace_mib}")  # MiB
        if dla is not None:
            flags += [f"--useDLACore={dla}", "--allowGPUFallback"]
        lines.append(f'"$TRTEXEC" --onnx={onnx_name} --saveEngine={stem}.plan {" ".join(flags)} '
                     f"--timingCacheFile={cache_name}")
    return "\n".join(lines) + "\n"


def build_engine(onnx_path: Path, folder: Path, stem: str, dla_core: int | None, target: Target,
                 metadata: dict[str, Any], timing_cache: Path) -> dict[str, Any]:
    """Build one engine from a QDQ ONNX: INT8 where the graph has Q/DQ, the other layers in FP16 (or FP32 where
    the target has no FP16 fallback), within the target's workspace, reusing and updating the timing cache."""
    import tensorrt as trt

    start = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    major = int(trt.__version__.split(".")[0])
    # TensorRT < 10 needs explicit batch asked for; 10 has nothing else and deprecates the flag.
    network = builder.create_network(0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise UserError(f"TensorRT {trt.__version__} cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    if target.workspace_mib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, target.workspace_mib << 20)
    # TensorRT >= 11 is strongly typed: it removed these flags, and the ONNX's own types decide each layer.
    wanted = ["INT8"] + (["FP16"] if target.fp16_fallback else [])
    flags = [f for f in wanted if hasattr(trt.BuilderFlag, f)]
    for flag in flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)  # layers the DLA cannot run go to the GPU
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    if not config.set_timing_cache(cache, ignore_mismatch=False):  # a cache from another device or version
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT {trt.__version__} failed to build {stem} from {onnx_path}; "
                           f"its log above says why")
    timing_cache.write_bytes(bytes(memoryview(config.get_timing_cache().serialize())))
    plan_bytes = bytes(memoryview(plan))
    (folder / f"{stem}.plan").write_bytes(plan_bytes)
    header = {**metadata, **({"dla": str(dla_core)} if dla_core is not None else {})}  # Ultralytics' DLA key
    write_engine(folder / f"{stem}.engine", plan_bytes, header)
    return {"device": "gpu" if dla_core is None else f"dla{dla_core}", "engine": f"{stem}.engine",
            "plan": f"{stem}.plan", "flags": flags, "workspace_mib": target.workspace_mib,
            "build_s": round(time.perf_counter() - start, 1), "tensorrt": trt.__version__,
            "file_mb": round(len(plan_bytes) / 2**20, 3)}


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
    return Session(infer, shape, lambda: cuda.used_mb() - baseline_mb)


def main(argv: list[str]) -> int:
    """`python -m edgecompress.targets.tensorrt FOLDER_OR_ONNX --target NAME`: build the engines on the device, from
    the folder the pipeline wrote (its QDQ ONNX and metadata.json) or from one ONNX."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m edgecompress.targets.tensorrt",
                                description="Build TensorRT engines (.engine with Ultralytics' metadata, and .plan) "
                                            "from a QDQ ONNX, on the device that will run them.")
    p.add_argument("source", type=Path, help="the folder the pipeline wrote for a Jetson target, or a QDQ .onnx")
    p.add_argument("--target", default="jetson", help="jetson-orin-nano (= jetson), jetson-orin-nx, jetson-agx-orin")
    args = p.parse_args(argv)
    try:
        target = get_target(args.target)
        folder = args.source if args.source.is_dir() else args.source.parent
        onnx_files = [args.source] if args.source.is_file() else sorted(folder.glob("*.onnx"))
        if len(onnx_files) != 1:
            raise UserError(f"{args.source} holds {len(onnx_files)} .onnx files; pass the one to build")
        meta_file = folder / METADATA
        if not meta_file.is_file():  # without it the .engine would not load in Ultralytics
            raise UserError(f"{meta_file} is missing; build from the folder compress wrote for the Jetson target")
        metadata = json.loads(meta_file.read_text())
        info = prepare_jetson(onnx_files[0], metadata, target, folder)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    if info["engine"] is None:  # on the device itself: say only why TensorRT cannot run here
        print(f"error: {unusable_reason()}", file=sys.stderr)
        return 2
    print(json.dumps(info, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
