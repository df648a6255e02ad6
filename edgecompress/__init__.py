"""edgecompress: prune, quantize, export and measure Ultralytics YOLO detectors for edge targets."""

import os

# Set before anything imports Ultralytics, which reads it once: nothing may reach the network at run time
# (its AMP check, fonts for plots, asset and dataset downloads).
os.environ["YOLO_OFFLINE"] = "1"

__version__ = "0.1.0"
