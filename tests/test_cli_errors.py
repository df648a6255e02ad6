"""Bad input ends with one line naming the problem and the fix, exit status 2, no traceback, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from edgecompress.pipeline.cli import main


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(list(args))
    return code, capsys.readouterr().err


def expect_bad_input(capsys: pytest.CaptureFixture[str], message: str, *args: str) -> None:
    code, err = run_cli(capsys, *args)
    assert code == 2, err
    assert message in err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("compress: error: ")


@pytest.fixture
def segmentation_checkpoint(tmp_path: Path) -> Path:
    from ultralytics.nn.tasks import SegmentationModel

    path = tmp_path / "seg.pt"
    torch.save({"model": SegmentationModel("yolov8n-seg.yaml", nc=1, verbose=False).half(), "train_args": {}}, path)
    return path


def test_missing_checkpoint(capsys, tmp_path: Path, demo) -> None:
    expect_bad_input(capsys, "does not exist", "--model", str(tmp_path / "nope.pt"), "--data", str(demo[1]),
                     "--out", str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_not_a_checkpoint(capsys, tmp_path: Path, demo) -> None:
    fake = tmp_path / "best.pt"
    fake.write_text("this is not a pickle")
    expect_bad_input(capsys, "cannot be loaded", "--model", str(fake), "--data", str(demo[1]),
                     "--out", str(tmp_path / "out"))


def test_segmentation_model_is_not_supported_yet(capsys, tmp_path: Path, demo, segmentation_checkpoint) -> None:
    expect_bad_input(capsys, "is a segmentation model; only detection models are supported yet",
                     "--model", str(segmentation_checkpoint), "--data", str(demo[1]), "--out", str(tmp_path / "o"))


def test_missing_dataset_yaml(capsys, tmp_path: Path, demo) -> None:
    expect_bad_input(capsys, "dataset YAML", "--model", str(demo[0]), "--data", str(tmp_path / "data.yaml"),
                     "--out", str(tmp_path / "out"))


def test_malformed_dataset_yaml(capsys, tmp_path: Path, demo) -> None:
    bad = tmp_path / "data.yaml"
    bad.write_text("train: [images/train\nnames: {0: raccoon\n")
    expect_bad_input(capsys, "is not usable", "--model", str(demo[0]), "--data", str(bad),
                     "--out", str(tmp_path / "out"))


def test_dataset_with_missing_folders(capsys, tmp_path: Path, demo) -> None:
    bad = tmp_path / "data.yaml"
    bad.write_text(yaml.safe_dump({"train": "images/train", "val": "images/val", "names": {0: "raccoon"}}))
    expect_bad_input(capsys, "is not usable", "--model", str(demo[0]), "--data", str(bad),
                     "--out", str(tmp_path / "out"))


def test_class_count_differs_from_the_model(capsys, tmp_path: Path, demo, dataset_copy: Path) -> None:
    spec = yaml.safe_load(dataset_copy.read_text())
    spec["names"] = {0: "raccoon", 1: "fox"}
    dataset_copy.write_text(yaml.safe_dump(spec))
    expect_bad_input(capsys, "has 2 classes but the model has 1", "--model", str(demo[0]),
                     "--data", str(dataset_copy), "--out", str(tmp_path / "out"))


def test_unknown_target(capsys, tmp_path: Path) -> None:
    expect_bad_input(capsys, "unknown target 'x68' (did you mean 'x86'?)", "--target", "x68",
                     "--out", str(tmp_path / "out"))


def test_unwritable_output_folder(capsys, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    expect_bad_input(capsys, "is not writable", "--out", str(blocker / "out"))


def test_output_folder_with_foreign_files(capsys, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    expect_bad_input(capsys, "already holds files that are not an edgecompress run", "--out", str(out))
    assert (out / "thesis.tex").read_text() == "precious"


def test_bad_image_size(capsys, tmp_path: Path) -> None:
    expect_bad_input(capsys, "imgsz must be a multiple of 32", "--imgsz", "100", "--out", str(tmp_path / "out"))


def test_model_without_data(capsys, tmp_path: Path, demo) -> None:
    expect_bad_input(capsys, "give both model and data", "--model", str(demo[0]), "--out", str(tmp_path / "out"))


def test_bad_recipe_file(capsys, tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("target: x86\nbench: {runz: 3}\n")
    expect_bad_input(capsys, "unknown key 'runz' (did you mean 'runs'?)", "--recipe", str(recipe),
                     "--out", str(tmp_path / "out"))


@pytest.mark.parametrize(("flags", "message"), [(("--prune", "0.3"), "pruning"), (("--quant", "ptq"), "ptq")])
def test_capabilities_not_available_yet(capsys, tmp_path: Path, flags: tuple[str, ...], message: str) -> None:
    expect_bad_input(capsys, "not available yet", *flags, "--out", str(tmp_path / "out"))
