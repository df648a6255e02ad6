"""The stage cache: reuse by key, and nothing half-written ever counts as finished."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgecompress.pipeline.cache import Cache


def test_same_key_is_reused_and_other_keys_are_not(tmp_path: Path) -> None:
    cache, calls = Cache(tmp_path), []

    def build(folder: Path) -> dict:
        calls.append(folder)
        (folder / "a.txt").write_text("x")
        return {"artifact": "a.txt"}

    first = cache.stage("export", "k160", build)
    again = cache.stage("export", "k160", build)
    other = cache.stage("export", "k320", build)
    assert (first.reused, again.reused, other.reused) == (False, True, False)
    assert first.folder == again.folder != other.folder
    assert (again.folder / again.info["artifact"]).read_text() == "x"
    assert len(calls) == 2


def test_a_failed_build_leaves_no_finished_stage(tmp_path: Path) -> None:
    cache = Cache(tmp_path)

    def broken(folder: Path) -> dict:
        (folder / "half.onnx").write_text("partial")
        raise KeyboardInterrupt  # as Ctrl-C in the middle of writing an artifact

    with pytest.raises(KeyboardInterrupt):
        cache.stage("export", "key", broken)
    assert not list(tmp_path.glob("export-*"))
    assert cache.sweep() and not list(tmp_path.glob(".tmp-*"))
    entry = cache.stage("export", "key", lambda folder: {"ok": True})
    assert not entry.reused and entry.info == {"ok": True}


def test_sweep_leaves_a_stage_another_live_process_is_building(tmp_path: Path) -> None:
    import subprocess
    import sys

    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / f".tmp-export-abc-{live.pid}").mkdir()  # a search's other trial, still building
        (tmp_path / f".tmp-export-def-{ended.stdout.strip()}").mkdir()  # debris of a killed trial
        assert Cache(tmp_path).sweep() == [f".tmp-export-def-{ended.stdout.strip()}"]
        assert (tmp_path / f".tmp-export-abc-{live.pid}").is_dir()
    finally:
        live.kill()


def test_dataset_fingerprint_follows_content_not_mtimes(dataset_copy: Path) -> None:
    """A copy of the same files (new mtimes) keeps every cached stage; an edited label invalidates them."""
    import os

    from edgecompress.yolo.data import Dataset

    def fingerprint() -> str:
        return Dataset.check(dataset_copy, 1).fingerprint

    before = fingerprint()
    for path in dataset_copy.parent.rglob("*"):
        os.utime(path, (1, 1))  # as a fresh copy or checkout leaves them
    assert fingerprint() == before
    label = next(dataset_copy.parent.rglob("labels/**/*.txt"))
    label.write_text("0 0.5 0.5 0.25 0.25\n")  # same class, another box
    assert fingerprint() != before
