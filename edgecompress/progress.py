"""Progress of long work, as events: a run's stages, the steps inside them (epochs, sensitivity groups, calibration
images, fallback steps, evaluation and benchmark runs) and the messages a person should read.

Work reports through `task()` and `note()` wherever it is; whoever shows progress installs sinks with
`reporting()` (the CLI: a live bar on a terminal, one plain line per step on a pipe, JSON lines for machines). With
no sink installed, reporting costs nothing and prints nothing (the Python API, tests, bench scripts).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import IO, Any, Protocol


class Sink(Protocol):
    def emit(self, event: dict[str, Any]) -> None: ...


_sinks: ContextVar[tuple[Sink, ...]] = ContextVar("edgecompress_progress_sinks", default=())
_stage: ContextVar[str] = ContextVar("edgecompress_progress_stage", default="")


@contextmanager
def reporting(*sinks: Sink) -> Iterator[None]:
    """Send every event of the work inside to `sinks`."""
    token = _sinks.set(_sinks.get() + sinks)
    try:
        yield
    finally:
        _sinks.reset(token)


def emit(event: dict[str, Any]) -> None:
    for sink in _sinks.get():
        sink.emit({"time": round(time.time(), 3), "stage": _stage.get(), **event})


def note(text: str, level: str = "info") -> None:
    """A line for the person running the work: `info` (what happened) or `warning` (what they may act on)."""
    emit({"event": "message", "level": level, "text": text})


@contextmanager
def stage(name: str) -> Iterator[None]:
    """The events inside belong to stage `name`."""
    token = _stage.set(name)
    try:
        yield
    finally:
        _stage.reset(token)


@dataclass
class Task:
    """One long step with `total` parts (None: unknown). `advance` reports each part done, with its metrics.
    `each`: every part is a step a person follows (an epoch, a fallback try), not a tick (an image, a run)."""

    name: str
    total: int | None
    unit: str
    each: bool = False
    done: int = 0
    started: float = field(default_factory=time.perf_counter)

    def advance(self, n: int = 1, **metrics: Any) -> None:
        self.done += n
        elapsed = time.perf_counter() - self.started
        eta = elapsed / self.done * (self.total - self.done) if self.total and self.done else None
        emit({"event": "progress", "task": self.name, "done": self.done, "total": self.total, "unit": self.unit,
              "each": self.each, "metrics": metrics, "elapsed_s": round(elapsed, 1),
              "eta_s": None if eta is None else round(eta, 1)})


@contextmanager
def task(name: str, total: int | None = None, unit: str = "", each: bool = False) -> Iterator[Task]:
    """Report a long step: its start, each part done (`Task.advance`), its end."""
    work = Task(name, total, unit, each)
    emit({"event": "task", "task": name, "total": total, "unit": unit})
    try:
        yield work
    finally:
        emit({"event": "task_end", "task": name, "done": work.done,
              "elapsed_s": round(time.perf_counter() - work.started, 1)})


# ------------------------------------------------------------------------------------------------------- sinks

class JsonLines:
    """Every event as one JSON object a line (`--json-progress`), for CI systems and notebooks."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def emit(self, event: dict[str, Any]) -> None:
        self.stream.write(json.dumps(event, default=str) + "\n")
        self.stream.flush()


class Lines:
    """Plain lines for a log that is not a terminal (CI): each finished stage and each message; of a task, each step
    (Task.each: epochs, fallback tries), else a line at most every QUIET seconds while it runs."""

    QUIET = 30.0

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self._last: dict[str, float] = {}

    def write(self, line: str) -> None:
        self.stream.write(line + "\n")
        self.stream.flush()

    def emit(self, event: dict[str, Any]) -> None:
        kind = event["event"]
        if kind == "stage_end":
            self.write(stage_line(event))
        elif kind == "message":
            self.write(message_line(event))
        elif kind == "task":
            self._last[event["task"]] = event["time"]
        elif kind == "progress":
            if event["each"] or (event["time"] - self._last.get(event["task"], event["time"]) >= self.QUIET
                       and event["done"] != event["total"]):
                self._last[event["task"]] = event["time"]
                self.write(f"[{event['stage']}] {progress_text(event)}")


class Terminal:
    """A live line on a terminal: the running stage and its task's bar, replaced by the stage's finished line."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self._live = ""

    def _clear(self) -> None:
        if self._live:
            self.stream.write("\r\033[K")
            self._live = ""

    def _show(self, text: str) -> None:
        width = 118
        self.stream.write("\r\033[K" + text[:width])
        self.stream.flush()
        self._live = text

    def write(self, line: str) -> None:
        self._clear()
        self.stream.write(line + "\n")
        self.stream.flush()

    def emit(self, event: dict[str, Any]) -> None:
        kind = event["event"]
        if kind == "stage":
            self._show(f"[{event['stage']}] ...")
        elif kind == "stage_end":
            self.write(stage_line(event))
        elif kind == "message":
            self.write(message_line(event))
        elif kind == "progress":
            self._show(f"[{event['stage']}] {progress_text(event, bar=True)}")


def stage_line(event: dict[str, Any]) -> str:
    how = "reused" if event["reused"] else f"done in {_duration(event['seconds'])}"
    return f"[{event['stage']}] {how}" + (f": {event['summary']}" if event.get("summary") else "")


def message_line(event: dict[str, Any]) -> str:
    prefix = "warning: " if event["level"] == "warning" else ""
    return f"{prefix}{event['text']}"


def progress_text(event: dict[str, Any], bar: bool = False) -> str:
    """'fine-tune: epoch 3/5 ███░░ : loss 2.1, mAP50-95 0.41 (1 min 20 s left)'."""
    done, total = event["done"], event["total"]
    text = f"{event['task']}: {event['unit']} {done}" + (f"/{total}" if total else "")
    if bar and total:
        filled = round(20 * done / total)
        text += f" {'█' * filled}{'░' * (20 - filled)}"
    metrics = ", ".join(f"{k} {_number(v)}" for k, v in event["metrics"].items())
    if metrics:
        text += f": {metrics}"
    if event.get("eta_s") and done != total:
        text += f" ({_duration(event['eta_s'])} left)"
    return text


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _duration(seconds: float) -> str:
    return f"{int(seconds) // 60} min {int(seconds) % 60:02d} s" if seconds >= 60 else f"{seconds:.1f} s"
