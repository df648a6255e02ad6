"""The changes edgecompress makes to Ultralytics' behaviour, applied in one place, explicitly, by whoever starts
work on a user's dataset (the runner, the Python API, tests and bench scripts), never as an import side effect.

Written against the Ultralytics release pinned in pyproject.toml (PINNED); another release is refused by pip.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

LOG = logging.getLogger("edgecompress")
PINNED = "8.4.190"
THREADS_ENV = "EDGECOMPRESS_THREADS"


def _no_cache_write(_prefix: str, _path: Path, x: dict[str, Any], version: str) -> None:
    """Ultralytics writes labels/*.cache beside a dataset's labels; the user's dataset is never modified."""
    x["version"] = version  # the one side effect its callers rely on


def _decode_only(_image: str | Path, write: Callable[[io.BytesIO], None]) -> None:
    """Ultralytics' image check rewrites a JPEG without its end marker in place ("corrupt JPEG restored and saved");
    the user's dataset is never modified. Re-encoding into memory keeps its verdict: a JPEG that decodes whole is
    used as it is, one that does not (truncated) raises, and the check skips it as corrupt."""
    write(io.BytesIO())


def _open_image(filename: Any, *args: Any, **kwargs: Any) -> Any:
    """Ultralytics' Image.open retries a file Pillow cannot identify after installing pi-heif (offline that fails:
    "No module named 'pi_heif'"); only HEIF files go that way here, so a broken JPEG reads as what it is."""
    from ultralytics.utils import patches as ultralytics_patches

    if Path(str(filename)).suffix.lower() in {".heic", ".heif"}:
        return ultralytics_patches.image_open(filename, *args, **kwargs)
    return ultralytics_patches._image_open(filename, *args, **kwargs)  # Pillow's own


def cpu_threads() -> int:
    """The CPU threads PyTorch work of this process may use: the cores it may run on, or `EDGECOMPRESS_THREADS` where a
    search shares the machine among its trials."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(cores, int(os.environ.get(THREADS_ENV) or cores))


def apply() -> None:
    """Apply every patch (idempotent)."""
    import ultralytics
    import ultralytics.data.dataset as dataset
    import ultralytics.data.utils as data_utils
    import ultralytics.utils.torch_utils as torch_utils
    from PIL import Image

    if ultralytics.__version__ != PINNED:
        LOG.warning("Ultralytics %s is installed; edgecompress is tested with %s (pip install ultralytics==%s)",
                    ultralytics.__version__, PINNED, PINNED)
    dataset.save_dataset_cache_file = _no_cache_write
    data_utils._replace_image = _decode_only
    Image.open = _open_image
    # Ultralytics' select_device (run by its trainer and validator) sets torch to cpu_count - 1 threads: one of two
    # cores here, for the rest of the process. Training and evaluation use every core they may.
    torch_utils.NUM_THREADS = cpu_threads()
