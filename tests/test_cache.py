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
