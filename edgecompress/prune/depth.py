"""Depth pruning: whole bottleneck blocks removed from C2f/C3k2 repeats."""

from __future__ import annotations

from torch import nn
from ultralytics.nn.modules import C2f, C3k2
from ultralytics.nn.tasks import DetectionModel

from edgecompress.prune.graph import last_conv
from edgecompress.yolo.blocks import C2fSplit


def remove_blocks(model: DetectionModel, count: int) -> list[dict]:
    """Drop `count` bottleneck blocks from C2f/C3k2 repeats, least important first; returns what went.

    A block's importance is the mean |BN scale| of its last layer: a residual block that writes little is
    close to the identity. Only the last block of a chain is dropped (its output feeds only `cv2`), so
    every remaining tensor keeps its width; a block with one repeat left is kept.
    """
    removed = []
    for _ in range(count):
        candidates = []
        for name, m in model.named_modules():
            if type(m) in (C2f, C3k2, C2fSplit) and len(m.m) > 1:
                last = [b for b in m.m[-1].modules() if isinstance(b, nn.BatchNorm2d)][-1]
                candidates.append((last.weight.abs().mean().item(), name, m))
        if not candidates:
            break
        score, name, block = min(candidates, key=lambda t: t[0])
        conv = block.cv2.conv
        keep = conv.in_channels - last_conv(block.m[-1]).out_channels  # its output is cv2's last input slice
        conv.weight = nn.Parameter(conv.weight.data[:, :keep].clone())
        conv.in_channels = keep
        block.m = type(block.m)(list(block.m)[:-1])
        removed.append({"block": f"{name}.m.{len(block.m)}", "bn_scale": round(score, 5)})
    return removed
