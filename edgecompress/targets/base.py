"""What a deployment target is: its runtime, its INT8 rules as data, its preset, and its plan (which stages, in
which order). One module per runtime family subclasses `Target`; the registry is in edgecompress.targets.

Light at import (no torch, Ultralytics or runtime): `compress bench` and recipe validation read targets too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from edgecompress.config import require
from edgecompress.errors import UserError
from edgecompress.targets.frame import INPUTS

if TYPE_CHECKING:
    import onnx

    from edgecompress.pipeline.stage import Stage
    from edgecompress.recipe import Recipe
    from edgecompress.targets.frame import FrameConfig

PRECISIONS = ("int8", "fp16", "fp32")


@dataclass(frozen=True)
class Int8Rules:
    """How a target's runtime wants INT8: the hardware facts that decide the quantization scheme."""

    quantizers: tuple[str, ...]  # quantize.quantizers names that make its artifact; `auto` builds each, keeps one
    activation_type: Literal["uint8", "int8"]
    symmetric_activations: bool
    # where Q/DQ go (edgecompress.quantize.scheme.Scheme): "outputs" (onnxruntime's: every quantizable op's inputs and
    # outputs, for its QLinear kernels), "nncf" (NNCF's: inputs of Conv, Add and the grid-preserving ops, one scale
    # across what those join) or "tensorrt" (ModelOpt's for TensorRT: inputs of Conv, Add and MaxPool)
    placement: Literal["outputs", "nncf", "tensorrt"] = "outputs"
    strict: bool = False  # the runtime accepts only symmetric activations and per-channel weights (TensorRT)

    def __post_init__(self) -> None:
        from edgecompress.quantize.quantizers import QUANTIZERS

        for name in self.quantizers:
            QUANTIZERS[name]  # an unknown name fails here, with the closest one suggested


@dataclass(frozen=True)
class Target:
    """What a deployment target needs from the pipeline, and the defaults its device runs at."""

    name: str
    description: str
    runtime: str  # a name in edgecompress.device.runtime.RUNTIMES: what runs its artifact
    precisions: tuple[str, ...]  # what the runtime executes, fastest first
    int8: Int8Rules | None = None  # None: the runtime runs no INT8 (here)
    channel_multiple: int = 1  # pruning keeps channel counts a multiple of this (prune.round_to)
    imgsz: int = 640  # default square input size of `compress bench` on an artifact with a dynamic shape
    batch: int = 1
    # where its deployed artifact starts (frame.input: target), chosen per runtime by measuring latency and accuracy
    # (edgecompress.targets.frame; BENCHMARKS.md, "The whole frame"); `frame`: all inside
    frame_input: str = "frame"

    def __post_init__(self) -> None:
        from edgecompress.device.runtime import RUNTIMES

        RUNTIMES[self.runtime]
        unknown = set(self.precisions) - set(PRECISIONS)
        require(bool(self.precisions) and not unknown,
                f"target {self.name}: precisions {self.precisions} must be a non-empty subset of {PRECISIONS}")
        require(("int8" in self.precisions) == (self.int8 is not None),
                f"target {self.name}: give Int8Rules exactly when 'int8' is among its precisions")
        require(self.channel_multiple >= 1 and self.batch >= 1,
                f"target {self.name}: channel_multiple and batch must be >= 1")
        require(self.imgsz % 32 == 0, f"target {self.name}: imgsz {self.imgsz} is not a multiple of 32")
        require(self.frame_input in INPUTS, f"target {self.name}: frame_input {self.frame_input!r} is not one of "
                                            f"{', '.join(INPUTS)}")

    # ------------------------------------------------------------------------------------- what a run asks

    def unusable(self) -> str | None:
        """Why a run for this target cannot go on here (its runtime missing, with what to install), or None."""
        from edgecompress.device.runtime import RUNTIMES

        return RUNTIMES[self.runtime].unusable()

    def preset(self, recipe: Recipe) -> Recipe:
        """The recipe with this target's defaults filled in (INT8 where it runs it; channel counts pruned to its
        multiple, which is what its kernels compute in), and checked against what the target can do."""
        changes: dict[str, object] = {}
        if recipe.prune.round_to < self.channel_multiple:
            changes["prune.round_to"] = self.channel_multiple
        if recipe.frame.input == "target":
            changes["frame.input"] = self.frame_input
        if recipe.quant.mode is None:
            changes["quant.mode"] = "ptq" if self.int8 else "none"
        elif recipe.quant.mode != "none" and self.int8 is None:
            raise UserError(f"target '{self.name}' runs no INT8 here; use --quant none (its float precisions: "
                            f"{', '.join(p for p in self.precisions if p != 'int8')})")
        if self.int8 and recipe.quant.quantizer not in ("auto", *self.int8.quantizers):
            raise UserError(f"target '{self.name}' quantizes with {', '.join(self.int8.quantizers)}, not "
                            f"{recipe.quant.quantizer!r}; write quant.quantizer: auto")
        return recipe.with_overrides(**changes) if changes else recipe

    def plan(self, recipe: Recipe) -> list[Stage]:
        """The stages of a run for this (preset) recipe, in order: training, then this target's own."""
        from edgecompress.pipeline import stages

        return [*stages.training(recipe, self), *self.deploy(recipe)]

    def deploy(self, recipe: Recipe) -> list[Stage]:
        """The stages after training: the FP32 export, INT8 where the recipe asks for it, and the final network
        wrapped with the frame's processing (`frame`) where the recipe puts any inside."""
        from edgecompress.pipeline import stages

        dfl = self.runtime == "onnxruntime"  # the ONNX is its artifact: the decode's softmax in onnxruntime's layout
        export = stages.Export("onnx", "onnxruntime", "fp32", simplify=True, dfl_last_axis=dfl)
        return [export, *stages.int8(self, recipe), *stages.frame(self, recipe)]

    # --------------------------------------------------------------------------- what its stages call

    @property
    def int8_runtime(self) -> str:
        """The runtime its INT8 artifact is evaluated in, here."""
        return self.runtime

    @property
    def int8_name(self) -> str:
        """The report's name for its INT8 artifact."""
        return f"{self.int8_runtime}-int8"

    def convert(self, onnx_fp32: Path, folder: Path, stem: str) -> Path:
        """Its runtime's FP32 artifact made from the exported ONNX (which carries Ultralytics' metadata, with a
        metadata.yaml beside it)."""
        raise NotImplementedError(f"target {self.name} runs the ONNX itself")

    def from_qdq(self, qdq: Path, onnx_fp32: Path) -> Path:
        """Its runtime's INT8 artifact made from a QDQ ONNX (beside it), checked against the runtime's rules."""
        return qdq

    def wrap(self, network: Path, config: FrameConfig, folder: Path) -> Path:
        """Its runtime's artifact of `network` (its FP32 or INT8 artifact) with the frame's processing inside, in
        `folder`, named as `network` plus the config's suffix."""
        from edgecompress.targets.frame import wrap_onnx

        return wrap_onnx(network, config, folder / f"{network.stem}{config.suffix}.onnx")

    def check_int8(self, model: onnx.ModelProto) -> None:
        """Raise when a QDQ model breaks the runtime's rules (a product error: the quantizer made it)."""
