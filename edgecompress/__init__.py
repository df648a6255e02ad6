"""edgecompress: prune, quantize, export and measure Ultralytics YOLO detectors for edge targets.

`from edgecompress import compress` runs the pipeline from Python (edgecompress.api); importing the package
itself loads nothing heavy.
"""

from __future__ import annotations

import os
from typing import Any

# Set before anything imports Ultralytics, which reads it once: nothing may reach the network at run time
# (its AMP check, fonts for plots, asset and dataset downloads).
os.environ["YOLO_OFFLINE"] = "1"

__version__ = "0.1.0"
__all__ = ["Report", "compress", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("compress", "Report"):
        from edgecompress import api

        return getattr(api, name)
    raise AttributeError(f"module 'edgecompress' has no attribute {name!r}")
