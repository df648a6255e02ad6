"""The stage interface: every step of the flow is a small class with a name, its settings, and
`run(parent, folder, run) -> info`, reading one artifact and writing one artifact (or measurements) into a folder.

A stage's key, which names its cached output, is derived here and only here: from the stage's name, its parent's
key, its settings and the run facts it declares it depends on (`facts`).
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgecompress.config import to_dict
from edgecompress.files import digest

if TYPE_CHECKING:
    from edgecompress.pipeline.cache import Entry
    from edgecompress.pipeline.runner import Run


@dataclass(frozen=True)
class Artifact:
    """One stage's model and how to run it. `sources` are the models it was made from, by kind: "torch" (the
    PyTorch checkpoint it descends from) and "onnx" (the FP32 ONNX), so a stage can read the form it needs."""

    name: str  # the report's name for it: baseline, prune, onnx-fp32, openvino-int8, ...
    path: Path
    runtime: str  # a name in edgecompress.device.runtime.RUNTIMES
    precision: str
    key: str
    size: dict[str, Any]  # parameters and GFLOPs of the network it holds
    info: dict[str, Any] = field(default_factory=dict)  # what the stage that made it reports
    sources: Mapping[str, Path] = field(default_factory=dict)


class Stage(ABC):
    """One step of the flow. `name` labels its log lines and its folder; `facts` are the run facts its output
    depends on besides its parent and settings (the names Run.fact knows)."""

    name: str
    facts: tuple[str, ...] = ()
    publishes_folder = False  # the run publishes this stage's folder (a device bundle), not its artifact
    # The most disk space it takes while it runs, in copies of the user's model's FP32 weights: the run's estimate of
    # the space it needs (the largest each stage's folder grew on the demo, yolov8n pruned 20%, x86 and onnx + QAT).
    disk = 0.0

    def settings(self) -> Any:
        """This stage's configuration (a config dataclass or a JSON-able dict): part of its key."""
        return None

    def key(self, parent: Artifact | None, run: Run) -> str:
        settings = self.settings()
        if dataclasses.is_dataclass(settings):
            settings = to_dict(settings)
        return digest({"stage": self.name, "parent": parent.key if parent else None, "settings": settings,
                       **{fact: run.fact(fact) for fact in self.facts}})

    def summary(self, info: dict[str, Any]) -> str:
        """What this stage did or found, in a few words for the person watching (its finished line)."""
        return ""

    @abstractmethod
    def run(self, parent: Artifact | None, folder: Path, run: Run) -> dict[str, Any]:
        """Write this stage's files into `folder`; return a JSON-able info dict whose file references are relative
        to it (a model stage names its artifact under "artifact")."""

    def output(self, parent: Artifact | None, entry: Entry) -> Artifact | None:
        """The artifact this stage made, from its finished entry; None for stages that only measure or bundle."""
        return None


class ModelStage(Stage):
    """A stage that makes a model: `output_name`, `runtime` and `precision` describe its artifact, and
    `source_kind` ("torch", "onnx" or None) says which of its artifact's sources it is."""

    output_name: str
    runtime: str
    precision: str
    source_kind: str | None = None

    def output(self, parent: Artifact | None, entry: Entry) -> Artifact:
        path = entry.folder / entry.info["artifact"]
        sources = {**(parent.sources if parent else {}), **({self.source_kind: path} if self.source_kind else {})}
        size = entry.info.get("size") or parent.size
        return Artifact(self.output_name, path, self.runtime, self.precision, entry.key, size, entry.info, sources)
