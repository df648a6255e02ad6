"""Untrusted checkpoints: a pickle that would run code is refused before it runs; --trust-checkpoint is the way past."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from edgecompress.cli import main
from edgecompress.yolo.model import load_model


class Payload:
    """Unpickling this calls os.system: the classic malicious-checkpoint payload."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple:
        return os.system, (self.command,)


@pytest.fixture
def malicious(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "payload-ran"
    path = tmp_path / "best.pt"
    torch.save({"model": Payload(f"touch {marker}"), "train_args": {}}, path)
    return path, marker


def test_malicious_checkpoint_is_refused_and_its_payload_never_runs(malicious, demo, tmp_path, capsys) -> None:
    path, marker = malicious
    code = main(["--model", str(path), "--data", str(demo[1]), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert "references posix.system" in err and "--trust-checkpoint" in err and "Traceback" not in err
    assert not marker.exists(), "the payload ran"
    assert not (tmp_path / "out").exists()


def test_trust_checkpoint_is_the_only_way_past(malicious, demo, tmp_path, capsys) -> None:
    path, marker = malicious
    code = main(["--model", str(path), "--data", str(demo[1]), "--out", str(tmp_path / "out"), "--trust-checkpoint"])
    assert marker.exists(), "with --trust-checkpoint the file is unpickled fully"
    assert code == 2 and "holds no Ultralytics model" in capsys.readouterr().err


def test_genuine_checkpoints_load_through_the_allow_list(demo) -> None:
    model = load_model(demo[0], trust=False)
    assert type(model).__name__ == "DetectionModel" and model.names == {0: "raccoon"}
    assert next(model.parameters()).dtype == torch.float32 and not model.training
