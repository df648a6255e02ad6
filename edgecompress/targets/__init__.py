"""Deployment targets, by name: each a frozen profile of what its device runs and how the pipeline must shape a
model for it (edgecompress.targets.base). Adding a target is one module and one row here.

Light at import: `compress bench` and recipe validation read targets on machines without torch.
"""

from __future__ import annotations

from edgecompress.config import Registry, suggest
from edgecompress.errors import UserError
from edgecompress.targets.base import Int8Rules, Target
from edgecompress.targets.ncnn import NCNN
from edgecompress.targets.onnxruntime import ARM, ONNX
from edgecompress.targets.openvino import X86
from edgecompress.targets.tensorrt import AGX_ORIN, ORIN_NANO, ORIN_NX

TARGETS: Registry[Target] = Registry("target")
for _target in (ORIN_NANO, ORIN_NX, AGX_ORIN, X86, ARM, ONNX, NCNN):
    TARGETS.add(_target.name, _target)
ALIASES = {"jetson": "jetson-orin-nano"}

__all__ = ["ALIASES", "TARGETS", "Int8Rules", "Target", "get_target"]


def get_target(name: str) -> Target:
    """The target called `name` (or an alias of one); an unknown name is a UserError that suggests the closest."""
    name = ALIASES.get(name, name)
    if name not in TARGETS:
        names = [*TARGETS, *ALIASES]
        raise UserError(f"unknown target '{name}'{suggest(name, names)}; choose one of {', '.join(names)}")
    return TARGETS[name]
