"""The changes edgecompress makes to Ultralytics' behaviour, applied in one place, explicitly, by whoever starts
work on a user's dataset (the runner, the Python API, tests and bench scripts), never as an import side effect.

Written against the Ultralytics release pinned in pyproject.toml (PINNED); another release is refused by pip.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

LOG = logging.getLogger("edgecompress")
PINNED = "8.4.190"


def _no_cache_write(_prefix: str, _path: Path, x: dict[str, Any], version: str) -> None:
    """Ultralytics writes labels/*.cache beside a dataset's labels; the user's dataset is never modified."""
    x["version"] = version  # the one side effect its callers rely on


def apply() -> None:
    """Apply every patch (idempotent)."""
    import ultralytics
    import ultralytics.data.dataset as dataset

    if ultralytics.__version__ != PINNED:
        LOG.warning("Ultralytics %s is installed; edgecompress is tested with %s (pip install ultralytics==%s)",
                    ultralytics.__version__, PINNED, PINNED)
    dataset.save_dataset_cache_file = _no_cache_write
