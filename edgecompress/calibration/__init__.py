"""Calibration for INT8: data selection and preprocessing, range estimation, sensitivity analysis.

Free of torch: numpy, OpenCV, onnx and onnxruntime only.
"""

from edgecompress.calibration.data import RECOMMENDED_IMAGES, batches, letterbox, preprocess, select_images
from edgecompress.calibration.ranges import METHODS, Method, Ranges, estimate_ranges, mse_range, quant_params

__all__ = [
    "METHODS", "RECOMMENDED_IMAGES", "Method", "Ranges", "batches", "estimate_ranges", "letterbox",
    "mse_range", "preprocess", "quant_params", "select_images",
]
