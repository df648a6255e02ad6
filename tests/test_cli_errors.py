"""The catalogue of bad inputs: each ends with one line naming the problem and the fix, exit status 2, no
traceback, and nothing written anywhere but the output folder."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
import torch
import yaml

from edgecompress.cli import main


def snapshot(folder: Path, skip: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*"))
            if p.is_file() and skip not in p.parents}


def expect_bad_input(capsys: pytest.CaptureFixture[str], tmp_path: Path, message: str, *args: str) -> str:
    """Run `compress ARGS --out tmp_path/out` and check the clean failure; returns stderr."""
    out = tmp_path / "out"
    before = snapshot(tmp_path, out)
    code = main([*args, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("compress: error: ")
    assert snapshot(tmp_path, out) == before, "a bad input changed files outside the output folder"
    return err


def save_model(path: Path, model: torch.nn.Module) -> Path:
    torch.save({"model": model.half(), "train_args": {}}, path)
    return path


# --- checkpoints -----------------------------------------------------------------------------------------------

def test_missing_checkpoint(capsys, tmp_path: Path, demo) -> None:
    expect_bad_input(capsys, tmp_path, "does not exist", "--model", str(tmp_path / "nope.pt"), "--data", str(demo[1]))
    assert not (tmp_path / "out").exists()


def _truncated(path: Path, demo: tuple[Path, Path]) -> None:
    data = demo[0].read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(("name", "write", "message"), [
    ("best.pt", lambda path, demo: path.touch(), "is empty"),
    ("best.pt", _truncated, "is not a PyTorch checkpoint"),
    ("best.pt", lambda path, demo: path.write_text("this is not a pickle"), "is not a PyTorch checkpoint"),
    ("best.pt", lambda path, demo: torch.save({"weights": torch.zeros(3)}, path), "holds no Ultralytics model"),
    ("best.onnx", lambda path, demo: path.write_text("x"), "is not a .pt file"),
], ids=["empty", "truncated", "not-a-pickle", "no-model", "not-pt"])
def test_bad_checkpoint_files(capsys, tmp_path: Path, demo, name: str, write, message: str) -> None:
    path = tmp_path / name
    write(path, demo)
    expect_bad_input(capsys, tmp_path, message, "--model", str(path), "--data", str(demo[1]))


@pytest.mark.parametrize(("cls", "cfg", "kind"), [
    ("SegmentationModel", "yolov8n-seg.yaml", "segmentation"),
    ("PoseModel", "yolov8n-pose.yaml", "pose"),
    ("ClassificationModel", "yolov8n-cls.yaml", "classification"),
])
def test_other_tasks_are_not_supported_yet(capsys, tmp_path: Path, demo, cls: str, cfg: str, kind: str) -> None:
    import ultralytics.nn.tasks as tasks

    path = save_model(tmp_path / "best.pt", getattr(tasks, cls)(cfg, nc=1, verbose=False))
    expect_bad_input(capsys, tmp_path, f"is a {kind} model; only detection models are supported yet",
                     "--model", str(path), "--data", str(demo[1]))


def test_image_size_not_a_multiple_of_the_model_stride(capsys, tmp_path: Path, demo) -> None:
    from ultralytics.nn.tasks import DetectionModel

    path = save_model(tmp_path / "p6.pt", DetectionModel("yolov8n-p6.yaml", nc=1, verbose=False))
    expect_bad_input(capsys, tmp_path, "imgsz 96 is not a multiple of the model's stride 64; try 128",
                     "--model", str(path), "--data", str(demo[1]), "--imgsz", "96")


# --- datasets --------------------------------------------------------------------------------------------------

def test_missing_dataset_yaml(capsys, tmp_path: Path, demo) -> None:
    expect_bad_input(capsys, tmp_path, "does not exist", "--model", str(demo[0]), "--data", str(tmp_path / "d.yaml"))


def test_malformed_dataset_yaml(capsys, tmp_path: Path, demo) -> None:
    (tmp_path / "d.yaml").write_text("train: [images/train\nnames: {0: raccoon\n")
    expect_bad_input(capsys, tmp_path, "is not usable", "--model", str(demo[0]), "--data", str(tmp_path / "d.yaml"))


def test_dataset_with_missing_folders(capsys, tmp_path: Path, demo) -> None:
    (tmp_path / "d.yaml").write_text(yaml.safe_dump({"train": "images/train", "val": "images/val",
                                                     "names": {0: "raccoon"}}))
    expect_bad_input(capsys, tmp_path, "is not usable", "--model", str(demo[0]), "--data", str(tmp_path / "d.yaml"))


def test_class_count_differs_from_the_model(capsys, tmp_path: Path, demo, dataset_copy: Path) -> None:
    spec = yaml.safe_load(dataset_copy.read_text())
    spec["names"] = {0: "raccoon", 1: "fox"}
    dataset_copy.write_text(yaml.safe_dump(spec))
    expect_bad_input(capsys, tmp_path, "has 2 classes but the model has 1", "--model", str(demo[0]),
                     "--data", str(dataset_copy))


def test_huge_class_count_without_names_fails_before_naming_every_class(capsys, tmp_path: Path, demo,
                                                                       dataset_copy: Path) -> None:
    """Ultralytics would build 5 million names (1e15 fills any machine's memory) before the count is compared."""
    spec = yaml.safe_load(dataset_copy.read_text())
    del spec["names"]
    dataset_copy.write_text(yaml.safe_dump({**spec, "nc": 5.0e6}))
    expect_bad_input(capsys, tmp_path, "says nc: 5000000.0 but the model has 1 classes", "--model", str(demo[0]),
                     "--data", str(dataset_copy))


def test_label_class_id_beyond_names(capsys, tmp_path: Path, demo, dataset_copy: Path) -> None:
    label = sorted((dataset_copy.parent / "labels" / "train").iterdir())[3]
    label.write_text("4 0.5 0.5 0.2 0.2\n")
    err = expect_bad_input(capsys, tmp_path, "class id 4 is outside the dataset's 1 names", "--model", str(demo[0]),
                           "--data", str(dataset_copy))
    assert f"{label}, line 1" in err


def test_malformed_label_line(capsys, tmp_path: Path, demo, dataset_copy: Path) -> None:
    label = sorted((dataset_copy.parent / "labels" / "val").iterdir())[0]
    label.write_text("0 0.5 0.5 0.2\n")
    expect_bad_input(capsys, tmp_path, "expected 'class cx cy w h' (5 numbers), got 4 fields",
                     "--model", str(demo[0]), "--data", str(dataset_copy))


def test_pixel_coordinates_in_labels(capsys, tmp_path: Path, demo, dataset_copy: Path) -> None:
    label = sorted((dataset_copy.parent / "labels" / "val").iterdir())[0]
    label.write_text("0 320 240 50 60\n")
    expect_bad_input(capsys, tmp_path, "coordinates must be normalized", "--model", str(demo[0]),
                     "--data", str(dataset_copy))


def test_val_split_without_labels(capsys, tmp_path: Path, demo, dataset_copy: Path) -> None:
    for label in (dataset_copy.parent / "labels" / "val").iterdir():
        label.unlink()
    expect_bad_input(capsys, tmp_path, "the 'val' split of", "--model", str(demo[0]), "--data", str(dataset_copy))


def test_empty_val_split(capsys, tmp_path: Path, demo, dataset_copy: Path) -> None:
    for image in (dataset_copy.parent / "images" / "val").iterdir():
        image.unlink()
    expect_bad_input(capsys, tmp_path, "holds no images", "--model", str(demo[0]), "--data", str(dataset_copy))


def test_too_few_images_to_calibrate(capsys, tmp_path: Path, demo, dataset_copy: Path) -> None:
    for image in sorted((dataset_copy.parent / "images" / "train").iterdir())[3:]:
        image.unlink()
    expect_bad_input(capsys, tmp_path, "has 3 images, too few to calibrate INT8 ranges", "--model", str(demo[0]),
                     "--data", str(dataset_copy), "--imgsz", "64", "--quant", "ptq")


# --- targets, output folder, recipe ------------------------------------------------------------------------------

def test_unknown_target(capsys, tmp_path: Path) -> None:
    expect_bad_input(capsys, tmp_path, "unknown target 'x68' (did you mean 'x86'?)", "--target", "x68")


def test_runtime_not_installed(capsys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # what Python does for a package that is not installed
    expect_bad_input(capsys, tmp_path, "runtime 'openvino' is not installed here; install it with: pip install "
                     "openvino", "--target", "x86")


def test_unwritable_output_folder(capsys, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    code = main(["--out", str(blocker / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "is not writable" in err and blocker.read_text() == "a file where a folder should be"


def test_output_folder_with_foreign_files(capsys, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    expect_bad_input(capsys, tmp_path, "already holds files that are not an edgecompress run")
    assert (out / "thesis.tex").read_text() == "precious"


def test_output_folder_of_another_checkpoint(capsys, tmp_path: Path) -> None:
    from edgecompress.pipeline.cache import MARKER

    out = tmp_path / "out"
    out.mkdir()
    (out / MARKER).write_text(json.dumps({"model": "/elsewhere/best.pt"}))
    expect_bad_input(capsys, tmp_path, "holds the run of another checkpoint (/elsewhere/best.pt)")


def test_bad_image_size(capsys, tmp_path: Path) -> None:
    expect_bad_input(capsys, tmp_path, "imgsz must be a multiple of 32", "--imgsz", "100")


def test_model_without_data(capsys, tmp_path: Path, demo) -> None:
    expect_bad_input(capsys, tmp_path, "give both model and data", "--model", str(demo[0]))


@pytest.mark.parametrize(("text", "message"), [
    ("target: x86\nbench: {runz: 3}\n", "unknown key 'runz' (did you mean 'runs'?)"),
    ("imgsz: [640]\n", "recipe.imgsz: expected int"),
    ("gates: {max_map_drop: -2}\n", "gates.max_map_drop must be >= 0"),
])
def test_bad_recipe_file(capsys, tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "r.yaml").write_text(text)
    expect_bad_input(capsys, tmp_path, message, "--recipe", str(tmp_path / "r.yaml"))

