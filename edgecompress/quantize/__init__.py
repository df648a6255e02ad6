"""INT8 quantization per target: post-training (ptq: calibration, quantizers, the accuracy-aware fallback) and
quantization-aware training (qat). Import the submodules; this package itself loads nothing heavy."""
