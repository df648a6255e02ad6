"""Where a run's output goes: everything third-party libraries print or log (Ultralytics, onnxruntime, NNCF,
OpenVINO, Python warnings) into OUT/compress.log, always complete; on the screen only the product's own lines
(edgecompress.progress) and its warnings, unless `echo` asks for the third-party log there too."""

from __future__ import annotations

import io
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from edgecompress import progress

LOG_FILE = "compress.log"
# Libraries that log through handlers of their own rather than propagating to the root logger.
OWN_HANDLERS = ("ultralytics", "nncf")


ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class LogFile(io.TextIOBase):
    """A text stream that holds what is written until `open(path)`, then appends to that file (and, always, to
    `echo` when one is given). The file gets each line as a terminal would end up showing it: colour codes
    removed, a progress bar's carriage-return updates reduced to its last state."""

    def __init__(self, echo: IO[str] | None) -> None:
        self.echo = echo
        self._held: list[str] = []
        self._partial = ""
        self._file: IO[str] | None = None

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if self.echo:
            self.echo.write(text)
        *lines, self._partial = (self._partial + text).split("\n")
        for line in lines:
            self._line(ANSI.sub("", line.rpartition("\r")[2]) + "\n")
        return len(text)

    def _line(self, line: str) -> None:
        if self._file:
            try:
                self._file.write(line)
                self._file.flush()
            except OSError:  # a full disk: the run's own error says so; the log must not fail it first
                self._file = None
        else:
            self._held.append(line)

    def open(self, path: Path) -> None:
        self._file = open(path, "a", encoding="utf-8")
        held, self._held = self._held, []
        for line in held:
            self._line(line)

    def close(self) -> None:
        if self._partial:
            self._line(ANSI.sub("", self._partial.rpartition("\r")[2]) + "\n")
        if self._file:
            self._file.close()
        super().close()


class _Warnings(logging.Handler):
    """The product's own warnings, for the person: as progress messages (the screen shows them)."""

    def emit(self, record: logging.LogRecord) -> None:
        progress.note(record.getMessage(), "warning")


@contextmanager
def captured(echo: IO[str] | None = None) -> Iterator[LogFile]:
    """Within: sys.stdout, sys.stderr and every logger write into the returned LogFile; the product's warnings go
    to edgecompress.progress as well. Everything is restored on the way out."""
    log = LogFile(echo)
    streams = sys.stdout, sys.stderr
    root = logging.getLogger()
    handler = logging.StreamHandler(log)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
    own = {name: logging.getLogger(name) for name in OWN_HANDLERS}
    saved = {name: (logger.handlers[:], logger.propagate) for name, logger in own.items()}
    ours = logging.getLogger("edgecompress")
    warnings = _Warnings(logging.WARNING)
    level = root.level
    sys.stdout = sys.stderr = log
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    for logger in own.values():
        logger.handlers, logger.propagate = [], True
    ours.addHandler(warnings)
    logging.captureWarnings(True)
    _quiet_onnxruntime()
    try:
        yield log
    finally:
        logging.captureWarnings(False)
        ours.removeHandler(warnings)
        for name, logger in own.items():
            logger.handlers, logger.propagate = saved[name]
        root.removeHandler(handler)
        root.setLevel(level)
        sys.stdout, sys.stderr = streams
        log.close()


def _quiet_onnxruntime() -> None:
    """onnxruntime's C++ warnings go straight to the terminal's file descriptor: keep only its errors."""
    try:
        import onnxruntime
    except ImportError:
        return
    onnxruntime.set_default_logger_severity(3)


@contextmanager
def native_output() -> Iterator[None]:
    """Within: what native code and child processes write to the process's standard output and error (pnnx, the
    ncnn converter, prints there from C++) goes to sys.stdout instead, the run's log while `captured`."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            sink.seek(0)
            sys.stdout.write(sink.read().decode(errors="replace"))
