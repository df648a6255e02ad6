"""What a person sees while `compress` runs: a live progress line on a terminal, one plain line per step on a pipe,
no third-party output on either (it all goes to OUT/compress.log), and progress as JSON lines on request."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import pytest

MAX_LINES = 30
# marks of what Ultralytics, torch, onnxruntime and NNCF print (stage names like onnxruntime-int8 are ours)
THIRD_PARTY = ("Ultralytics", "WARNING", "UserWarning", "TracerWarning", "DeprecationWarning", "Please consider",
               "INFO:nncf", "export success", "Traceback")


@pytest.fixture
def recipe(fast_recipe) -> Path:
    # the demo as a user runs it, smaller: every stage of a PTQ run, and its warnings (a small calibration set)
    return fast_recipe(quant={"calibration_images": 24, "method": "minmax"})


def command(recipe: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "edgecompress.cli", "--recipe", str(recipe), "--out", str(out), *extra]


def screen(raw: str) -> list[str]:
    """The lines a terminal ends up showing: each carriage-return update replaced by the next, escapes removed."""
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", raw.replace("\r\n", "\n"))
    return [line.rpartition("\r")[2] for line in text.split("\n") if line.rpartition("\r")[2].strip()]


def test_terminal_shows_live_progress_and_no_third_party_output(tmp_path: Path, recipe: Path) -> None:
    main, child = pty.openpty()
    proc = subprocess.Popen(command(recipe, tmp_path / "out"), stdin=child, stdout=child, stderr=child)
    os.close(child)
    chunks = []
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    assert proc.wait() == 0
    raw = b"".join(chunks).decode(errors="replace")
    lines = screen(raw)
    assert "\r" in raw and "█" in raw, "no live progress line on the terminal"
    assert len(lines) <= MAX_LINES, lines
    assert not [line for line in lines if any(word in line for word in THIRD_PARTY)], lines
    assert any(line.startswith("[export] done in") for line in lines)
    log = (tmp_path / "out" / "compress.log").read_text()
    assert "Ultralytics 8.4" in log and "ONNX: export success" in log  # what the screen did not show


def test_pipe_gets_plain_lines_and_json_progress_goes_to_its_file(tmp_path: Path, recipe: Path) -> None:
    events_file = tmp_path / "events.jsonl"
    proc = subprocess.run(command(recipe, tmp_path / "out", "--json-progress", str(events_file)),
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert len(lines) <= MAX_LINES, lines
    assert "\r" not in proc.stderr and "\x1b" not in proc.stderr
    assert not [line for line in lines if any(word in line for word in THIRD_PARTY)], lines
    assert any(line.startswith("warning: calibrating on 24 images") for line in lines)
    assert any(re.match(r"\[quantize-onnx\] INT8: try 1: layers in float 0, mAP50-95 [0-9.]+", line) for line in lines)
    events = [json.loads(line) for line in events_file.read_text().splitlines()]
    finished = [e["stage"] for e in events if e["event"] == "stage_end"]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert {f"evaluate-{s['name']}" for s in report["stages"]} <= set(finished)
    ticks = [e for e in events if e["event"] == "progress" and e["task"] == "evaluation"]
    assert ticks and ticks[-1]["done"] == ticks[-1]["total"] == 12  # the demo's val images, one by one
    assert all(e["stage"] and e["time"] for e in events)
