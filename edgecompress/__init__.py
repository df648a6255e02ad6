"""edgecompress: prune, quantize, export and measure Ultralytics YOLO detectors for edge targets."""

__version__ = "0.1.0"
