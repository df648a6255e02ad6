"""What runs on the device: preprocessing, NMS, timing, host facts and the runtimes' loaders.

numpy, OpenCV and pyyaml only, plus the artifact's own runtime when one is loaded: this package never imports
torch, Ultralytics or the pipeline, so `compress bench` runs on a Jetson or a Raspberry Pi that has nothing else
(a test proves it in a venv without them).
"""

# Each runtime's module registers it in edgecompress.device.runtime.RUNTIMES; none imports its library yet.
from edgecompress.device import ncnn, onnxruntime, openvino, tensorrt, torch  # noqa: E402,F401
