"""onnxruntime on the CPU: FP32 and QDQ INT8 ONNX models."""

from __future__ import annotations

from pathlib import Path

from edgecompress.device.runtime import RUNTIMES, Runtime, Session, frame_of


class OnnxRuntime(Runtime):
    name, module, install, suffix = "onnxruntime", "onnxruntime", "pip install onnxruntime", ".onnx"

    def _load(self, artifact: Path, threads: int, shared: bool) -> Session:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        if shared:  # its pool spins after each run, which slows whatever runs next in this process
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(str(artifact), options, providers=["CPUExecutionProvider"])
        first = session.get_inputs()[0]
        shape = tuple(d if isinstance(d, int) else None for d in first.shape)  # named or None axes are dynamic
        return Session(lambda x: session.run(None, {first.name: x}), shape,
                       frame=frame_of(session.get_modelmeta().custom_metadata_map))


RUNTIMES.add("onnxruntime", OnnxRuntime())
