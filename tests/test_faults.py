"""The faults users' machines and datasets have, each made for real: a full disk (a small tmpfs), a truncated JPEG, a
GPU that is not there, memory that runs out (an address-space limit on the run's process). Each ends with exit 2 and
one line that says what to do, and the rerun once it is fixed reuses the finished stages and reports what an
uninterrupted run reports."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
import yaml
from conftest import FAST_BENCH

from edgecompress.cli import main
from edgecompress.errors import UserError
from edgecompress.pipeline import machine
from edgecompress.yolo.data import Dataset

RECIPE = {"imgsz": 64, "bench": FAST_BENCH, "quant": {"mode": "none"}}  # x86: OpenVINO's C++ writer fills the disk


def write_recipe(path: Path, **overrides: object) -> Path:
    path.write_text(yaml.safe_dump({**RECIPE, **overrides}))
    return path


def accuracy(out: Path) -> list[dict]:
    """Each stage's accuracy from report.json; the validator's own timings are noise, its metrics are not."""
    report = json.loads((out / "report.json").read_text())
    return [{"name": s["name"], **{k: v for k, v in s["accuracy"].items() if k != "val_speed_ms"}}
            for s in report["stages"]]


def one_line_error(code: int, err: str, message: str) -> str:
    """Exit status 2 and the message on the last line, alone: no traceback, nothing after it."""
    assert code == 2, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("compress: error: ") and message in last, err
    return last


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(recipe, output folder) of one uninterrupted x86 run on the demo: what every fixed rerun must report."""
    tmp = tmp_path_factory.mktemp("straight")
    recipe = write_recipe(tmp / "recipe.yaml")
    assert main(["--target", "x86", "--recipe", str(recipe), "--out", str(tmp / "out")]) == 0
    return recipe, tmp / "out"


@contextlib.contextmanager
def small_filesystem(path: Path, megabytes: int) -> Iterator[Callable[[int], None]]:
    """A tmpfs of this size mounted at `path`; yields a function that resizes it (space coming back)."""
    path.mkdir()
    mount = shutil.which("mount")
    proc = subprocess.run([mount, "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(path)],
                          capture_output=True, text=True, check=False) if mount else None
    if proc is None or proc.returncode:
        pytest.skip(f"a small filesystem is needed to fill up, and mounting a tmpfs is not permitted here "
                    f"({proc.stderr.strip() if proc else 'no mount command'}); run as root to test a full disk")
    try:
        yield lambda size: subprocess.run([mount, "-o", f"remount,size={size}m", str(path)], check=True)
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


# --- a full disk -------------------------------------------------------------------------------------------------

def test_full_disk_mid_run_names_the_folder_frees_it_and_resumes(tmp_path: Path, straight, capsys) -> None:
    recipe, uninterrupted = straight
    with small_filesystem(tmp_path / "small", 22) as resize:  # the FP32 ONNX fits, the OpenVINO IR does not
        out = tmp_path / "small" / "out"
        command = ["--target", "x86", "--recipe", str(recipe), "--out", str(out)]
        line = one_line_error(main(command), capsys.readouterr().err, f"no space left in {out} (the output folder, ")
        assert re.search(r"the remaining stages need about \d+\.\d MB .*rerun the same command", line), line
        stages = out / "stages"
        assert not list(stages.glob(".tmp-*")), "the unfinished stage's folder must be removed"
        assert list(stages.glob("export-*/done.json"))
        assert shutil.disk_usage(out).free > 4 * 2**20  # what the half-written IR held is free again

        resize(100)  # space is back: the same command resumes
        assert main(command) == 0
        err = capsys.readouterr().err
        assert "[export] reused" in err and "[openvino-fp32] done in" in err
        assert accuracy(out) == accuracy(uninterrupted)


def test_too_little_space_is_refused_before_any_work(tmp_path: Path, straight, capsys) -> None:
    recipe, _ = straight
    with small_filesystem(tmp_path / "small", 6):
        out = tmp_path / "small" / "out"
        one_line_error(main(["--target", "x86", "--recipe", str(recipe), "--out", str(out)]), capsys.readouterr().err,
                       f"too little free space in {out} (the output folder, 6.0 MB free): the remaining stages need")
        assert not out.exists()


def test_a_full_temporary_folder_is_named_as_such(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the run tells: by errno where there is one, by the filesystem being full where a C++ library gives none."""
    with small_filesystem(tmp_path / "small", 24):  # more than machine.NEARLY_FULL when empty
        monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "small"))
        folders = machine.scratch_folders(tmp_path / "out")
        with pytest.raises(OSError) as filling:
            (tmp_path / "small" / "scratch.bin").write_bytes(bytes(32 * 2**20))
        assert machine.full_folder(filling.value, list(folders)) == tmp_path / "small"
        silent = RuntimeError("basic_ios::clear: iostream error")  # OpenVINO's, with no errno
        assert machine.full_folder(silent, list(folders)) == tmp_path / "small"
        line = machine.space_message("no space left", tmp_path / "small", folders[tmp_path / "small"], 2**30)
        assert "(the temporary folder, 0.0 MB free): the remaining stages need about 1.0 GB" in line
        assert "or set TMPDIR to a folder with more" in line
        (tmp_path / "small" / "scratch.bin").unlink()
        assert machine.full_folder(silent, list(folders)) is None  # a failure with space left is not about space


# --- broken images -----------------------------------------------------------------------------------------------

def truncate(image: Path) -> bytes:
    """Cut a JPEG in half, as an interrupted copy does; returns the original bytes."""
    data = image.read_bytes()
    image.write_bytes(data[: len(data) // 2])
    return data


def test_a_truncated_val_image_is_skipped_by_every_stage_then_counted_once_fixed(dataset_copy: Path, demo, straight,
                                                                                 tmp_path: Path, capsys,
                                                                                 caplog) -> None:
    recipe, uninterrupted = straight
    broken = sorted((dataset_copy.parent / "images" / "val").iterdir())[3]
    original = truncate(broken)
    command = ["--target", "x86", "--recipe", str(recipe), "--model", str(demo[0]), "--data", str(dataset_copy),
               "--out", str(tmp_path / "out")]
    with caplog.at_level(logging.WARNING):
        assert main(command) == 0
    [warning] = [r.getMessage() for r in caplog.records if str(broken.parent) in r.getMessage()]  # once, by name
    assert warning.startswith("skipping 1 image(s) that cannot be used, in every stage")
    assert f": {broken} (image file is truncated" in warning
    caplog.clear()
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert list(report["data"]["unusable"]) == [str(broken)]
    for stage in report["stages"]:  # the validator and the benchmark leave out the same image
        assert stage["accuracy"]["images"] == 11 and stage["benchmark"]["end_to_end"]["runs"] == 3

    broken.write_bytes(original)  # fixed: the evaluations see 12 images again, as an uninterrupted run does
    assert main(command) == 0
    assert "skipping" not in caplog.text and "[export] reused" in capsys.readouterr().err
    assert accuracy(tmp_path / "out") == accuracy(uninterrupted)


def test_a_split_without_a_usable_image_names_the_files(dataset_copy: Path, demo, tmp_path: Path, capsys) -> None:
    images = sorted((dataset_copy.parent / "images" / "val").iterdir())
    for image in images:
        truncate(image)
    one_line_error(main(["--model", str(demo[0]), "--data", str(dataset_copy), "--out", str(tmp_path / "out")]),
                   capsys.readouterr().err, f"none of the 12 images of the 'val' split of {dataset_copy} can be used "
                   f"({', '.join(map(str, images[:5]))} and 7 more); replace them")


def test_every_consumer_gets_the_usable_images_and_the_dataset_is_never_written(dataset_copy: Path,
                                                                               tmp_path: Path) -> None:
    train = sorted((dataset_copy.parent / "images" / "train").iterdir())
    truncate(train[0])
    padded = train[1]  # decodes whole, but does not end with the JPEG end marker: Ultralytics would rewrite it in
    padded.write_bytes(padded.read_bytes() + bytes(16))  # place ("corrupt JPEG restored and saved")
    train[2].write_text("not an image")
    before = snapshot(dataset_copy.parent)
    dataset = Dataset.check(dataset_copy, 1)
    assert set(dataset.unusable) == {train[0], train[2]}
    assert dataset.unusable[train[2]].startswith("cannot identify image file")
    usable = [p for p in train if p not in dataset.unusable]
    assert dataset.images("train") == usable
    assert set(dataset.calibration_images(300)) == set(usable)
    listing = dataset.subset("train", 3, tmp_path / "subset").with_suffix(".txt")
    assert listing.read_text().split() == list(map(str, usable[:3]))
    trained_on = [f for batch in dataset.train_batches(64, count=10, batch=8) for f in batch["im_file"]]
    assert sorted(map(Path, trained_on)) == usable
    assert snapshot(dataset_copy.parent) == before


def test_too_few_usable_images_to_calibrate_names_them(dataset_copy: Path) -> None:
    train = sorted((dataset_copy.parent / "images" / "train").iterdir())
    for image in train[7:]:
        truncate(image)
    dataset = Dataset.check(dataset_copy, 1)
    with pytest.raises(UserError, match=re.escape(f"has 7 images (17 more cannot be used: {train[7]}, ")):
        dataset.calibration_images(300)


# --- a device that is not there ------------------------------------------------------------------------------------

@pytest.mark.skipif(torch.cuda.device_count() > 7, reason="this machine has a CUDA device 7")
def test_a_missing_cuda_device_is_refused_before_any_work(straight, tmp_path: Path, capsys) -> None:
    recipe, uninterrupted = straight
    out = tmp_path / "out"
    shutil.copytree(uninterrupted, out)  # a finished run: the refusal must not touch it
    before = snapshot(out)
    command = ["--target", "x86", "--recipe", str(recipe), "--out", str(out)]
    here = "this machine has none" if not torch.cuda.is_available() else f"this machine has {torch.cuda.device_count()}"
    one_line_error(main([*command, "--device", "7"]), capsys.readouterr().err,
                   f"no CUDA device 7 here ({here}")
    assert snapshot(out) == before
    assert main([*command, "--device", "cpu"]) == 0
    assert "done in" not in capsys.readouterr().err  # every stage reused
    assert accuracy(out) == accuracy(uninterrupted)


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has Apple MPS")
def test_mps_without_apple_silicon_is_refused(tmp_path: Path, capsys) -> None:
    one_line_error(main(["--device", "mps", "--out", str(tmp_path / "out")]), capsys.readouterr().err,
                   "no Apple MPS device here (it needs an Apple-silicon Mac and a PyTorch built with MPS); "
                   "use --device cpu")
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="measuring a training batch against GPU memory needs CUDA")
def test_a_training_batch_beyond_the_gpu_memory_is_refused_before_any_work(tmp_path: Path, capsys) -> None:
    recipe = write_recipe(tmp_path / "recipe.yaml", imgsz=4096, prune={"flops": 0.2}, finetune={"batch": 64})
    one_line_error(main(["--recipe", str(recipe), "--device", "0", "--out", str(tmp_path / "out")]),
                   capsys.readouterr().err, "training at batch 24 (finetune.batch)")  # the demo's train split: 24
    assert not (tmp_path / "out").exists()


# --- memory that runs out --------------------------------------------------------------------------------------------

OOM_BATCH = 120  # the train split listed 5 times over: Ultralytics caps a batch at the split's size
HEADROOM = 150 * 2**20  # address space granted beyond what the run holds when fine-tuning starts: not a batch of 120


@pytest.mark.skipif(not hasattr(resource, "prlimit"), reason="limiting another process's memory needs Linux")
def test_fine_tuning_out_of_memory_names_the_batch_and_resumes(dataset_copy: Path, demo, tmp_path: Path,
                                                               capsys) -> None:
    root = dataset_copy.parent
    images = sorted((root / "images" / "train").iterdir())
    (root / "train.txt").write_text("".join(f"{p}\n" for _ in range(5) for p in images))
    spec = yaml.safe_load(dataset_copy.read_text())
    dataset_copy.write_text(yaml.safe_dump({**spec, "train": "train.txt"}))

    def recipe(batch: int) -> Path:
        return write_recipe(tmp_path / "recipe.yaml", model=str(demo[0]), data=str(dataset_copy), imgsz=64,
                            prune={"flops": 0.2, "criterion": "l1", "allocation": "uniform"},
                            finetune={"epochs": 1, "batch": batch, "schedule": "recover", "workers": 0})

    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "edgecompress.cli", "--recipe", str(recipe(OOM_BATCH)),
                             "--out", str(out)], stderr=subprocess.PIPE, text=True)  # its own process, to limit
    while proc.poll() is None and not list((out / "stages").glob(".tmp-finetune-*")):
        time.sleep(0.01)
    size = int(re.search(r"VmSize:\s+(\d+) kB", Path(f"/proc/{proc.pid}/status").read_text())[1]) * 1024
    resource.prlimit(proc.pid, resource.RLIMIT_AS, (size + HEADROOM, resource.RLIM_INFINITY))
    _, err = proc.communicate()
    one_line_error(proc.returncode, err, f"fine-tuning ran out of memory at batch {OOM_BATCH} (finetune.batch); "
                   f"set finetune.batch: {OOM_BATCH // 2} in the recipe and rerun: the stages finished before it "
                   f"are reused")
    assert not list((out / "stages").glob(".tmp-*"))

    fixed = str(recipe(OOM_BATCH // 2))
    assert main(["--recipe", fixed, "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "[prune] reused" in err and "[finetune] done in" in err
    assert main(["--recipe", fixed, "--out", str(tmp_path / "uninterrupted")]) == 0
    assert accuracy(out) == accuracy(tmp_path / "uninterrupted")
