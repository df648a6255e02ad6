"""Calibration for INT8: inputs, activation statistics and the methods that turn them into ranges (a registry),
where Q/DQ go in an Ultralytics ONNX graph, and per-layer sensitivity. Free of torch."""
