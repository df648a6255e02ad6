"""The recipe: every setting of a run, as frozen dataclasses loadable from YAML and validated on construction.

The CLI flags are a shorthand for a recipe; a recipe file is what a CI release build commits. Section
configs for pruning, fine-tuning and quantization live beside the code that uses them, in light modules: validating
a recipe imports no torch, Ultralytics or runtime.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from edgecompress.config import ConfigError, from_dict, require, to_dict
from edgecompress.device.timing import BenchConfig
from edgecompress.prune.config import PruneConfig
from edgecompress.quantize.config import QuantConfig
from edgecompress.search.config import SearchConfig
from edgecompress.targets import get_target
from edgecompress.targets.frame import FrameConfig
from edgecompress.yolo.config import FinetuneConfig


@dataclass(frozen=True)
class EvalConfig:
    """How accuracy is measured: Ultralytics' validator, batch 1, on one split of the dataset."""

    split: Literal["val", "test"] = "val"
    conf: float = 0.001  # Ultralytics' mAP convention: keep low-confidence boxes so the PR curve is complete
    iou: float = 0.7

    def __post_init__(self) -> None:
        require(0.0 <= self.conf < 1.0, f"eval.conf must be in [0, 1), got {self.conf}")
        require(0.0 < self.iou <= 1.0, f"eval.iou must be in (0, 1], got {self.iou}")


@dataclass(frozen=True)
class Gates:
    """Release gates: a run whose final artifact breaks one exits with status 1."""

    max_map_drop: float | None = None  # mAP50-95 points (x100) lost against the baseline checkpoint
    max_latency_ms: float | None = None  # p50 end-to-end latency of the final artifact (frame to detections)

    def __post_init__(self) -> None:
        require(self.max_map_drop is None or self.max_map_drop >= 0,
                f"gates.max_map_drop must be >= 0 points, got {self.max_map_drop}")
        require(self.max_latency_ms is None or self.max_latency_ms > 0,
                f"gates.max_latency_ms must be > 0, got {self.max_latency_ms}")


@dataclass(frozen=True)
class Recipe:
    """One compression run. `model` and `data` empty means the embedded demo."""

    model: str = ""
    data: str = ""
    target: str = "onnx"
    imgsz: int = 640
    device: str = "cpu"  # cpu, a CUDA index or mps: where PyTorch trains and evaluates (checked by the runner)
    prune: PruneConfig = field(default_factory=PruneConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    frame: FrameConfig = field(default_factory=FrameConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    gates: Gates = field(default_factory=Gates)
    search: SearchConfig = field(default_factory=SearchConfig)  # what `compress search` explores and its budget

    def __post_init__(self) -> None:
        require(32 <= self.imgsz <= 4096 and self.imgsz % 32 == 0,
                f"imgsz must be a multiple of 32 (the model's largest stride) between 32 and 4096, "
                f"got {self.imgsz}; try {max(32, round(self.imgsz / 32) * 32)}")
        require(self.device in ("cpu", "mps") or (self.device.isascii() and self.device.isdigit()),
                f"device must be 'cpu', a CUDA index such as '0', or 'mps' (Apple), got {self.device!r}")
        get_target(self.target)  # an unknown name fails here, with the closest names suggested
        require(bool(self.model) == bool(self.data),
                "give both model and data (your checkpoint and its dataset YAML), or neither for the demo")

    @property
    def is_demo(self) -> bool:
        return not self.model

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def with_overrides(self, **changes: Any) -> Recipe:
        """A copy with top-level settings or `section.key` settings replaced (CLI flags over a file)."""
        data = self.to_dict()
        for key, value in changes.items():
            section, _, name = key.partition(".")
            if name:
                data[section][name] = value
            else:
                data[key] = value
        return Recipe.from_dict(data)

    @classmethod
    def from_dict(cls, data: Any) -> Recipe:
        return from_dict(cls, data, "recipe")

    @classmethod
    def load(cls, path: str | Path) -> Recipe:
        """Read a recipe YAML; relative model/data paths are taken relative to the recipe file."""
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"recipe file {path} does not exist; check the --recipe path") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"recipe file {path} cannot be read ({e})") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"recipe file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
        recipe = cls.from_dict(data)
        rebase = {k: str((path.parent / v).resolve()) for k in ("model", "data")
                  if (v := getattr(recipe, k)) and not Path(v).is_absolute()}
        return replace(recipe, **rebase) if rebase else recipe
