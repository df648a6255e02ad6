"""matplotlib, set up once for every plot the product draws: files only (no display), no font download."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def pyplot() -> Any:
    """matplotlib.pyplot on the file-only Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig: Any, path: Path, dpi: int = 120) -> None:
    """Lay out and write `fig` as PNG under a temporary name, then rename it into place, and close it."""
    fig.tight_layout()
    tmp = path.with_name(f".tmp-{path.name}")
    fig.savefig(tmp, format="png", dpi=dpi)
    pyplot().close(fig)
    tmp.replace(path)
