"""torch-pruning's view of an Ultralytics detector: its dependency graph, which layers must keep their channels,
and which groups are tied (a split block's two halves lose equal counts, so it folds back to the stock block)."""

from __future__ import annotations

import contextlib
import fnmatch
import types
from collections.abc import Iterator
from typing import Any

import torch
import torch_pruning as tp
from torch import nn
from ultralytics.nn.modules import Detect
from ultralytics.nn.modules.block import Attention
from ultralytics.nn.tasks import DetectionModel

from edgecompress.config import require
from edgecompress.yolo.blocks import SplitBlock


def build_graph(model: DetectionModel) -> tp.DependencyGraph:
    """Trace the model in training mode, where the head returns raw feature maps (no box decoding, no top-k)."""
    # Channel dependencies do not depend on the input size: the smallest input that keeps every level 2x2.
    example = torch.zeros(1, 3, 64, 64, device=next(model.parameters()).device)
    with traceable(model):
        return tp.DependencyGraph().build_dependency(
            model, example_inputs=example, output_transform=flat_tensors, verbose=False)


@contextlib.contextmanager
def traceable(model: nn.Module) -> Iterator[None]:
    """Training mode without moving BN statistics, and attention reduced to its channel coupling.

    Torch-pruning maps channel indices through every reshape; through attention's head reshapes its index
    lists grow by the spatial size and exhaust memory. Attention layers are never pruned (protected_layers),
    so for tracing it is enough that input and output channels stay coupled through `pe` and `proj`.
    """
    was_training = model.training
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in bns]
    attention = [m for m in model.modules() if isinstance(m, Attention)]
    for bn in bns:
        bn.momentum = 0.0
    for m in attention:
        m.forward = types.MethodType(lambda self, x: self.proj(self.pe(x)), m)
    model.train()
    try:
        yield
    finally:
        model.train(was_training)
        for bn, momentum in zip(bns, momenta):
            bn.momentum = momentum
        for m in attention:
            del m.forward


def flat_tensors(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    items = out.values() if isinstance(out, dict) else out if isinstance(out, (list, tuple)) else []
    return [t for item in items for t in flat_tensors(item)]


def protected_layers(model: DetectionModel, ignore: tuple[str, ...]) -> dict[nn.Module, str]:
    """Layers whose channels must not change, with the reason; `ignore` patterns that match nothing are errors."""
    protected: dict[nn.Module, str] = {}
    for m in model.modules():
        if isinstance(m, Detect):
            for head in ("cv2", "cv3", "one2one_cv2", "one2one_cv3"):
                for branch in getattr(m, head, None) or []:
                    protected[last_conv(branch)] = "Detect output conv: its channels are box/class outputs"
        if isinstance(m, Attention):
            for conv in m.modules():
                if isinstance(conv, nn.Conv2d):
                    protected[conv] = "attention: channels are reshaped into fixed-width heads"
    names = dict(model.named_modules())
    for pattern in ignore:
        matched = [m for n, m in names.items() if fnmatch.fnmatch(n, pattern) and isinstance(m, nn.Conv2d)]
        require(bool(matched), f"prune.ignore pattern {pattern!r} matches no conv layer; module names look like "
                               f"'model.22.cv3.0.2' (patterns use fnmatch, e.g. 'model.22.*')")
        for m in matched:
            protected[m] = f"ignored by prune.ignore {pattern!r}"
    return protected


def last_conv(module: nn.Module) -> nn.Conv2d:
    return [m for m in module.modules() if isinstance(m, nn.Conv2d)][-1]


def unsafe(group: tp.Group, protected: dict[nn.Module, str]) -> str:
    """Why this group must be left alone, or ''.

    Attention layers are protected in any direction; other protected layers only against losing outputs
    (pruning the inputs of a Detect output conv is fine)."""
    for item in group:
        module, fn = item.dep.target.module, item.dep.handler
        reason = protected.get(module)
        if reason and (reason.startswith("attention") or fn == tp.prune_conv_out_channels):
            return reason
    return ""


def tie_key(group: tp.Group, names: dict[nn.Module, str]) -> str:
    """Groups holding the outputs of a split block's cv0 or cv1 share a key: they must lose equal counts."""
    for item in group:
        module, fn = item.dep.target.module, item.dep.handler
        if fn == tp.prune_conv_out_channels:  # bound methods: equal, never identical
            name = names.get(module, "")
            for half in (".cv0.conv", ".cv1.conv"):
                if name.endswith(half) and isinstance(_parent(names, name, half), SplitBlock):
                    return name[: -len(half)]
    return ""


def _parent(names: dict[nn.Module, str], name: str, suffix: str) -> nn.Module | None:
    target = name[: -len(suffix)]
    return next((m for m, n in names.items() if n == target), None)


def enable_grads(model: DetectionModel) -> DetectionModel:
    for p in model.parameters():
        p.requires_grad_(True)  # Ultralytics loads with grads off; torch-pruning traces through autograd
    for m in model.modules():
        if m.__class__.__name__ == "DFL":
            m.conv.requires_grad_(False)  # fixed decode weights
    return model.eval()
