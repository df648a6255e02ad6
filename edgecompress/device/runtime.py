"""The runtimes that execute artifacts: the registry, and what every runtime offers (load an artifact, get a
function from an input batch to its outputs). Each runtime is one module of this package that registers itself;
each imports its own library only when used."""

from __future__ import annotations

import importlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress.config import Registry
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
    # what an artifact with the frame's processing inside does besides the network (its metadata's `frame`, written
    # by edgecompress.targets.frame: `input` and `imgsz` among others); None for a plain export
    frame: dict[str, Any] | None = None

    @property
    def takes(self) -> str:
        """What the artifact is fed: `frame` (the decoded frame, any size), `letterboxed` (the frame letterboxed,
        uint8 BGR) or `tensor` (float RGB 0-1 NCHW, letterboxed)."""
        return self.frame["input"] if self.frame else "tensor"

    @property
    def imgsz(self) -> int | None:
        """The square size the network runs at; None where the artifact takes any (a dynamic input)."""
        return int(self.frame["imgsz"]) if self.frame else self.input_shape[-1]


class Runtime(ABC):
    """How to run one kind of artifact. `suffix` ends the artifact's name (Ultralytics' AutoBackend keys on it
    too); `module` is the Python module that must import; `install` says how to get it."""

    name: str
    module: str
    install: str
    suffix: str

    def unusable(self) -> str | None:
        """Why this runtime cannot run artifacts on this host (with what to install), or None when it can."""
        try:  # importing, not just finding, the module: a broken install is as unusable as a missing one
            importlib.import_module(self.module)
        except ImportError:
            return f"runtime '{self.name}' is not installed here; install it with: {self.install}"
        return None

    def check(self) -> None:
        """Raise a UserError saying what to install when this runtime cannot run here."""
        if reason := self.unusable():
            raise UserError(reason)

    def version(self) -> str:
        return getattr(importlib.import_module(self.module), "__version__", "unknown")

    def artifact_path(self, folder: Path, stem: str) -> Path:
        return folder / f"{stem}{self.suffix}"

    def owns(self, artifact: Path) -> bool:
        """Whether `artifact` (by its name) is this runtime's."""
        return artifact.name.endswith(self.suffix)

    def load(self, artifact: Path, threads: int = 0, shared: bool = False) -> Session:
        """Load `artifact` to run on `threads` CPU threads (0: the runtime's default). `shared`: the session takes
        turns with others in this process (interleaved timing), so its threads must not spin while idle."""
        self.check()
        return self._load(Path(artifact), threads, shared)

    @abstractmethod
    def _load(self, artifact: Path, threads: int, shared: bool) -> Session: ...


RUNTIMES: Registry[Runtime] = Registry("runtime")


def runtime_of(artifact: Path) -> Runtime:
    """The runtime that runs an artifact, from its name as Ultralytics' AutoBackend reads it."""
    for runtime in RUNTIMES.values():
        if runtime.owns(artifact):
            return runtime
    endings = ", ".join(f"*{r.suffix}" for r in RUNTIMES.values())
    raise UserError(f"cannot tell the runtime of {artifact}: pass an artifact named {endings}")


def frame_of(metadata: dict[str, Any]) -> dict[str, Any] | None:
    """An artifact's `frame` metadata (Session.frame): a dict, or in an ONNX's metadata_props its JSON."""
    frame = metadata.get("frame")
    return json.loads(frame) if isinstance(frame, str) else frame


def artifact_bytes(path: Path) -> int:
    """Size on disk of an artifact: a file, or a folder such as OpenVINO's model directory."""
    path = Path(path)
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size
