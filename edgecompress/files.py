"""Files and their identity: content hashes that name what a stage read, and writes that land whole or not at all."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


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


def copy_over(src: Path, dest: Path) -> None:
    """Copy a file or folder to `dest`, replacing what is there."""
    import shutil

    if dest.is_dir():
        shutil.rmtree(dest)
    shutil.copytree(src, dest) if src.is_dir() else shutil.copyfile(src, dest)
