"""Stage outputs keyed by a hash of their inputs and config, written so that only finished work ever counts.

A stage builds into a private temporary folder and, once every file and its `done.json` are written, the folder
is renamed into place in one step. A run killed at any moment leaves either a finished stage or a temporary
folder that the next run (holding the output folder's lock) deletes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DONE = "done.json"


def digest(parts: Any) -> str:
    """A stable hash of JSON-able parts (dict order does not matter)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_atomic(path: Path, text: str) -> None:
    """Write a file under a temporary name, then rename it into place."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


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
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def sweep(self) -> list[str]:
        """Delete the temporary folders of interrupted stages; call only while holding the output lock."""
        stale = [p for p in self.root.glob(".tmp-*") if p.is_dir()]
        for p in stale:
            shutil.rmtree(p, ignore_errors=True)
        return [p.name for p in stale]

    def stage(self, name: str, parts: dict[str, Any], build: Callable[[Path], dict[str, Any]]) -> Entry:
        """The finished stage for (name, parts): reused when present, else built by `build(folder)`.

        `build` writes its files into the folder it is given and returns a JSON-able info dict whose file
        references are relative to that folder.
        """
        key = digest({"stage": name, **parts})
        final = self.root / f"{name}-{key[:12]}"
        done = final / DONE
        if done.is_file():
            record = json.loads(done.read_text())
            return Entry(name, key, final, record["info"], reused=True, seconds=record["seconds"])
        tmp = self.root / f".tmp-{name}-{key[:12]}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        start = time.perf_counter()
        info = build(tmp)
        seconds = round(time.perf_counter() - start, 2)
        write_atomic(tmp / DONE, json.dumps({"stage": name, "key": key, "parts": parts, "info": info,
                                             "seconds": seconds}, indent=2, default=str))
        if final.exists():  # a folder without done.json is not a finished stage
            shutil.rmtree(final)
        os.rename(tmp, final)
        return Entry(name, key, final, info, reused=False, seconds=seconds)
