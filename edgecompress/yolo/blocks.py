"""Rewrites of Ultralytics blocks that hard-code equal channel halves, so torch-pruning can prune them.

C2f and its subclass C3k2 compute `cv1(x).chunk(2, 1)`, C2PSA `cv1(x).split((c, c), 1)`: one conv whose two
output halves go different ways (the first straight to `cv2`, the second through bottlenecks or attention).
Torch-pruning cannot keep such halves equal (and mis-maps C2PSA's split), so before pruning each block becomes
a split form with two convs (`cv0`, `cv1`); after
pruning it is folded back into the stock class, so a saved checkpoint holds only Ultralytics classes and loads
with plain `ultralytics.YOLO(path)`. Folding needs both halves the same width: the pruner keeps them paired.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from ultralytics.nn.modules import C2PSA, C2f, C3k2, Conv

__all__ = ["SplitBlock", "C2fSplit", "C2PSASplit", "split_blocks", "fold_blocks"]


class SplitBlock(nn.Module):
    """A block whose `cv1` output halves are two convs, `cv0` and `cv1`: same function, prunable halves."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.stock = type(block)  # the class to fold back into
        c = block.c
        self.cv0 = _conv_slice(block.cv1, slice(0, c))
        self.cv1 = _conv_slice(block.cv1, slice(c, 2 * c))
        self.m = block.m
        self.cv2 = block.cv2
        _copy_bookkeeping(block, self)

    def fold(self) -> nn.Module:
        """The stock block computing the same function; the halves must have equal widths."""
        c0, c1 = self.cv0.conv.out_channels, self.cv1.conv.out_channels
        if c0 != c1:
            raise ValueError(f"cannot fold a {self.stock.__name__} whose halves differ ({c0} vs {c1} channels)")
        block = self.stock.__new__(self.stock)
        nn.Module.__init__(block)
        block.c = c0
        block.cv1 = _conv_cat(self.cv0, self.cv1)
        block.cv2 = self.cv2
        block.m = self.m
        _copy_bookkeeping(self, block)
        return block


class C2fSplit(SplitBlock):
    """C2f / C3k2: the second half runs through the bottleneck chain, every stage's output goes to cv2."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.cv0(x), self.cv1(x)]
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class C2PSASplit(SplitBlock):
    """C2PSA: the second half runs through the attention blocks."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv2(torch.cat((self.cv0(x), self.m(self.cv1(x))), 1))


SPLITS = {C2f: C2fSplit, C3k2: C2fSplit, C2PSA: C2PSASplit}


def split_blocks(model: nn.Module) -> int:
    """Replace every C2f/C3k2/C2PSA in `model` by its split form, in place; returns how many were replaced."""
    return _replace(model, lambda m: type(m) in SPLITS, lambda m: SPLITS[type(m)](m))


def fold_blocks(model: nn.Module) -> int:
    """Undo `split_blocks` in place (after pruning); returns how many blocks were folded."""
    return _replace(model, lambda m: isinstance(m, SplitBlock), lambda m: m.fold())


def _copy_bookkeeping(src: nn.Module, dst: nn.Module) -> None:
    for name in ("i", "f", "type", "np"):  # Ultralytics' layer bookkeeping, read by DetectionModel.forward
        if hasattr(src, name):
            setattr(dst, name, getattr(src, name))


def _replace(model: nn.Module, match, build) -> int:
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if match(child):
                setattr(parent, name, build(child))
                count += 1
    return count


def _conv_slice(conv: Conv, rows: slice) -> Conv:
    """A copy of `conv` (conv + BN + act) computing only its output channels `rows`."""
    return _conv_with(conv, lambda t: t[rows].clone())


def _conv_cat(a: Conv, b: Conv) -> Conv:
    """One Conv whose outputs are those of `a` followed by those of `b` (same input, kernel and act)."""
    tensors = {id(t): u for t, u in zip(_tensors(a), _tensors(b))}
    return _conv_with(a, lambda t: torch.cat([t, tensors[id(t)]]))


def _tensors(conv: Conv) -> list[torch.Tensor]:
    return [conv.conv.weight, conv.bn.weight, conv.bn.bias, conv.bn.running_mean, conv.bn.running_var]


def _conv_with(conv: Conv, change) -> Conv:
    """A deep copy of `conv` with every per-output-channel tensor replaced by `change(tensor)`."""
    out = copy.deepcopy(conv)
    for module, name in ((out.conv, "weight"), (out.bn, "weight"), (out.bn, "bias")):
        old = getattr(module, name)
        setattr(module, name, nn.Parameter(change(_source(conv, module, name)).data, old.requires_grad))
    out.bn.running_mean = change(conv.bn.running_mean)
    out.bn.running_var = change(conv.bn.running_var)
    out.conv.out_channels = out.bn.num_features = out.conv.weight.shape[0]
    return out


def _source(conv: Conv, copied: nn.Module, name: str) -> torch.Tensor:
    return getattr(conv.conv if isinstance(copied, nn.Conv2d) else conv.bn, name)
