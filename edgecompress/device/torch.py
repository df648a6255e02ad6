"""PyTorch, for the uncompressed checkpoint the report measures every artifact against (on the host only: a
device never has a .pt to time, and this module imports torch only when one is loaded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgecompress.device.runtime import RUNTIMES, Runtime, Session


class Torch(Runtime):
    name, module, install, suffix = "torch", "torch", "pip install 'edgecompress[full]'", ".pt"

    def _load(self, artifact: Path, threads: int, shared: bool) -> Session:
        import torch

        from edgecompress.yolo.model import load_model  # the safe loader: an untrusted pickle runs no code

        if threads:
            torch.set_num_threads(threads)
        model = load_model(artifact).float().eval()

        def infer(x: np.ndarray) -> list[np.ndarray]:
            with torch.inference_mode():
                y = model(torch.from_numpy(x))
            return [(y[0] if isinstance(y, (list, tuple)) else y).numpy()]

        return Session(infer, (None, 3, None, None))


RUNTIMES.add("torch", Torch())
