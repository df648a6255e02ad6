"""What a run needs from the machine, checked before any work: a PyTorch device that exists here, GPU memory for the
training batch, and free disk space; and what a run says when the disk fills up anyway. (Running out of memory
mid-training is told where the batch size is known: edgecompress.yolo.train.)"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgecompress.errors import UserError, causes

if TYPE_CHECKING:
    from edgecompress.pipeline.stage import Stage
    from edgecompress.recipe import Recipe
    from edgecompress.yolo.data import Dataset

# A failure while a folder's filesystem has less than this free is taken as the disk being full: OpenVINO's C++
# writer, for one, fails with "basic_ios::clear: iostream error" and no errno.
NEARLY_FULL = 16 * 2**20
PUBLISH = 1.0  # the run copies its final artifact to the top of the output folder: at most one model's weights


def check_device(device: str) -> None:
    """Refuse a `device` (the recipe's) that this machine does not have, saying what it has."""
    import torch

    if device == "cpu":
        return
    if device == "mps":
        if not torch.backends.mps.is_available():
            raise UserError("no Apple MPS device here (it needs an Apple-silicon Mac and a PyTorch built with MPS); "
                            "use --device cpu")
        return
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if int(device) >= count:
        raise UserError(f"no CUDA device {device} here ({_cuda_devices(count)}); use --device cpu"
                        + (f" or one of {', '.join(map(str, range(count)))}" if count else ""))


def _cuda_devices(count: int) -> str:
    import torch

    if torch.version.cuda is None:
        return "this machine has none: this PyTorch is built without CUDA"
    if not count:
        return "this machine has none" + (f"; CUDA_VISIBLE_DEVICES is {visible!r}"
                                           if (visible := os.environ.get("CUDA_VISIBLE_DEVICES")) is not None else "")
    return f"this machine has {count}: " + ", ".join(f"{i} ({torch.cuda.get_device_name(i)})" for i in range(count))


def check_training_memory(recipe: Recipe, model: Any, dataset: Dataset) -> None:
    """On a CUDA device, refuse a training batch (fine-tuning, QAT) that does not fit its free memory, by
    Ultralytics' AutoBatch measurement: forward and backward of one batch of `model`, with its estimate of the
    detection loss's memory. Ultralytics caps a batch at the train split's size, and so does this check."""
    if not recipe.device.isdigit():
        return
    for key, batch in _training_batches(recipe):
        _check_batch_fits(model, int(recipe.device), recipe.imgsz, key, min(batch, len(dataset.images("train"))))


def _training_batches(recipe: Recipe) -> Iterator[tuple[str, int]]:
    """The recipe key and batch size of each training stage the recipe runs (fine-tuning, QAT)."""
    from edgecompress.yolo.config import SCHEDULES

    if recipe.finetune.runs(recipe.prune.enabled):  # schedule auto picks one later: the larger batch bounds it
        schedules = list(SCHEDULES) if recipe.finetune.schedule == "auto" else [recipe.finetune.schedule]
        yield "finetune.batch", max(recipe.finetune.settings(s)["batch"] for s in schedules)
    if recipe.quant.mode == "qat":
        yield "quant.qat.batch", recipe.quant.qat.batch


def _check_batch_fits(model: Any, index: int, imgsz: int, key: str, batch: int) -> None:
    from copy import deepcopy

    import torch
    from ultralytics.utils.torch_utils import profile_ops

    device = torch.device("cuda", index)
    free, total = torch.cuda.mem_get_info(device)
    trial = deepcopy(model).train()
    for p in trial.parameters():
        p.requires_grad_(True)
    try:
        [profile] = profile_ops(torch.empty(batch, 3, imgsz, imgsz, device=device), trial, n=1, device=device,
                                max_num_obj=1)
    except torch.OutOfMemoryError:  # the input batch alone
        profile = None
    del trial
    torch.cuda.empty_cache()
    here = f"CUDA device {index} has {_size(free)} free of {_size(total)}"
    if profile is None:  # the trial ran out of memory
        raise UserError(f"training at batch {batch} ({key}) does not fit: {here}; set {key}: {max(1, batch // 2)} "
                        f"or a smaller imgsz")
    need = profile[2] * 2**30
    if need > free:
        raise UserError(f"training at batch {batch} ({key}) needs about {_size(need)} of GPU memory and {here}; "
                        f"set {key}: {max(1, int(batch * free / need))} or a smaller imgsz")


def disk_need(stages: Sequence[Stage], model: Any) -> int:
    """Bytes the `stages` (those left to run) need at most, with the final copy the run publishes: each stage's
    `disk` figure in copies of the user's model's FP32 weights (a pruned model is smaller still)."""
    weights = 4 * sum(p.numel() for p in model.parameters())
    return int((sum(stage.disk for stage in stages) + PUBLISH) * weights)


def free_space(folder: Path) -> int:
    """Bytes free to this user on the filesystem that holds `folder` (or would, once it is created)."""
    while not folder.exists():
        folder = folder.parent
    return shutil.disk_usage(folder).free


def scratch_folders(out: Path) -> dict[Path, tuple[str, str]]:
    """The folders a run writes into, with what to call them and where else to write: its output folder (which
    holds Ultralytics' scratch too) and the temporary folder (onnxruntime's, NNCF's and OpenVINO's scratch)."""
    return {out: ("the output folder", ""),
            Path(tempfile.gettempdir()): ("the temporary folder", " or set TMPDIR to a folder with more")}


def full_folder(error: BaseException, folders: Sequence[Path]) -> Path | None:
    """The folder whose filesystem ran out of space, if that is what ended the run with `error`: an ENOSPC or EDQUOT
    in it or in an error it came from (the folder that holds its file, else the fullest), or any error while one
    of the folders is (nearly) full. Call it before deleting what the failed stage wrote."""
    for e in causes(error):
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            device = _device_of(Path(os.fsdecode(e.filename))) if e.filename else None
            same = [f for f in folders if device is not None and _device_of(f) == device]
            return same[0] if same else min(folders, key=free_space)
    return next((f for f in folders if free_space(f) < NEARLY_FULL), None)


def space_message(opening: str, folder: Path, role: tuple[str, str], need: int) -> str:
    """The one line for a disk too full for the rest of the run (`role`: scratch_folders' name and alternative)."""
    name, elsewhere = role
    return (f"{opening} in {folder} ({name}, {_size(free_space(folder))} free): the remaining stages need about "
            f"{_size(need)} (estimated from the model and the target); free some space{elsewhere} and rerun the "
            f"same command: the stages already finished are reused")


def _device_of(path: Path) -> int:
    while not path.exists():
        path = path.parent
    return path.stat().st_dev


def _size(n: float) -> str:
    return f"{n / 2**30:.1f} GB" if n >= 2**30 else f"{n / 2**20:.1f} MB"
