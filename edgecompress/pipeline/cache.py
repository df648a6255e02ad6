"""Stage outputs keyed by a hash of their inputs and config, written so that only finished work ever counts.

A stage builds into a private temporary folder and, once every file and its `done.json` are written, the folder
is renamed into place in one step. A run killed at any moment leaves either a finished stage or a temporary
folder that the next run (holding the output folder's lock) deletes.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgecompress import progress
from edgecompress.errors import UserError
from edgecompress.files import write_atomic

DONE = "done.json"
MARKER = ".edgecompress-run.json"
LOCK = ".edgecompress.lock"


@dataclass(frozen=True)
class Entry:
    """A finished stage: its folder, its key and what it recorded."""

    name: str
    key: str
    folder: Path
    info: dict[str, Any]
    reused: bool
    seconds: float


class Cache:
    """Finished stages under `root`, one folder each: `<name>-<key[:12]>/` with `done.json` written last."""

    def __init__(self, root: Path) -> None:
        self.root = root  # created with the first stage it builds

    def sweep(self) -> list[str]:
        """Delete the temporary folders of interrupted or failed stages: those whose builder (the pid ending the name)
        has ended. A search's trials share one cache, so a folder another live process is building is left alone."""
        stale = [p for p in self.root.glob(".tmp-*") if p.is_dir() and not _alive(int(p.name.rsplit("-", 1)[1]))]
        for p in stale:
            shutil.rmtree(p, ignore_errors=True)
        return [p.name for p in stale]

    def finished(self, name: str, key: str) -> Entry | None:
        """The finished stage `name` of this key, if there is one."""
        folder = self.root / f"{name}-{key[:12]}"
        if not (folder / DONE).is_file():
            return None
        record = json.loads((folder / DONE).read_text())
        return Entry(name, key, folder, record["info"], reused=True, seconds=record["seconds"])

    def stage(self, name: str, key: str, build: Callable[[Path], dict[str, Any]]) -> Entry:
        """The finished stage `name` of this key: reused when present, else built by `build(folder)`.

        `build` writes its files into the folder it is given and returns a JSON-able info dict whose file
        references are relative to that folder.
        """
        if entry := self.finished(name, key):
            return entry
        final = self.root / f"{name}-{key[:12]}"
        tmp = self.root / f".tmp-{name}-{key[:12]}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        start = time.perf_counter()
        info = build(tmp)
        seconds = round(time.perf_counter() - start, 2)
        write_atomic(tmp / DONE, json.dumps({"stage": name, "key": key, "info": info,
                                             "seconds": seconds}, indent=2, default=str))
        if entry := self.finished(name, key):  # another trial of a search finished the same stage meanwhile
            shutil.rmtree(tmp)
            return entry
        if final.exists():  # a folder without done.json is not a finished stage
            shutil.rmtree(final)
        os.rename(tmp, final)
        return Entry(name, key, final, info, reused=False, seconds=seconds)

    @contextlib.contextmanager
    def exclusive(self, what: str) -> Iterator[None]:
        """Hold the cache's lock named `what` (an flock, released by the OS if the holder dies): the trials of a
        search that share this cache time latency one at a time."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / f".{what}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def _alive(pid: int) -> bool:
    """Whether process `pid` runs on this machine (a folder of one that ended is debris)."""
    if pid == os.getpid():
        return False  # this process sweeps only after its own stage failed or before it starts one
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class OutputFolder:
    """The run's output folder: checked writable and ours, locked against a second concurrent run.

    The lock is an flock, which the OS releases when its holder dies, so a killed run's lock is stale at once
    and the next run takes it over; the pid in the file only serves the messages.
    """

    def __init__(self, path: Path, model: Path) -> None:
        try:
            path.mkdir(parents=True, exist_ok=True)
            probe = path / f".write-test-{os.getpid()}"
            probe.touch()
            probe.unlink()
        except OSError as e:
            raise UserError(f"output folder {path} is not writable ({e.strerror}); choose another with --out") from None
        marker = path / MARKER
        if marker.is_file():
            owner = json.loads(marker.read_text()).get("model")
            if owner != str(model):
                raise UserError(f"output folder {path} holds the run of another checkpoint ({owner}); "
                                f"choose a new --out or delete that folder")
        elif any(p.name != LOCK for p in path.iterdir()):
            raise UserError(f"output folder {path} already holds files that are not an edgecompress run; "
                            f"choose an empty or new folder with --out")
        self._lock = open(path / LOCK, "a+")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released by the OS if this process dies
        except BlockingIOError:
            self._lock.seek(0)
            raise UserError(f"another compress run (pid {self._lock.read().strip() or '?'}) is using {path}; "
                            f"wait for it to finish or choose another --out") from None
        self._lock.seek(0)
        if previous := self._lock.read().strip():
            progress.note(f"took over the lock left by an ended run (pid {previous})")
        self._lock.seek(0)
        self._lock.truncate()
        self._lock.write(str(os.getpid()))
        self._lock.flush()
        write_atomic(marker, json.dumps({"model": str(model)}))

    def release(self) -> None:
        fcntl.flock(self._lock, fcntl.LOCK_UN)
        self._lock.close()
