"""The INT8 scheme one artifact uses: the target's rules (data, edgecompress.targets.base.Int8Rules) with the
recipe's overrides applied."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from edgecompress.calibration.graph import GRID_PRESERVING
from edgecompress.errors import UserError

if TYPE_CHECKING:
    from edgecompress.quantize.config import QuantConfig
    from edgecompress.targets.base import Target


@dataclass(frozen=True)
class Scheme:
    symmetric_activations: bool
    per_channel: bool
    # "outputs": onnxruntime's, every op's inputs and outputs, which its QLinear kernels fuse.
    # "nncf": where NNCF puts its FakeQuantize ops, biases float: at the inputs of convolutions, of Add and of the
    # grid-preserving ops (Concat, Split, MaxPool, Resize), one scale across the tensors those ops join, and no
    # second Q/DQ after them (OpenVINO runs each Q/DQ pair as a FakeQuantize; BENCHMARKS.md, "x86 QDQ with NNCF's
    # whole placement").
    # "tensorrt": at the inputs of convolutions, Add and MaxPool only, as NVIDIA ModelOpt places them for TensorRT:
    # TensorRT fuses a Conv into INT8 from the DequantizeLinear right at its input, and moves the quantization of a
    # Concat's, Split's or Resize's output back through it to the producers, so those carry no Q/DQ of their own.
    placement: Literal["outputs", "nncf", "tensorrt"] = "outputs"

    @property
    def inputs_only(self) -> bool:
        """Q/DQ only at the inputs of convolutions, Add and the grid-preserving ops, biases float."""
        return self.placement != "outputs"

    @property
    def activation_type(self) -> str:
        return "int8" if self.symmetric_activations else "uint8"

    @property
    def quantized_ops(self) -> list[str] | None:
        """The op types whose inputs carry Q/DQ; None: every op, outputs included."""
        return {"outputs": None, "nncf": ["Conv", "Add", *GRID_PRESERVING],
                "tensorrt": ["Conv", "Add", "MaxPool"]}[self.placement]

    def describe(self) -> dict[str, str]:
        return {"activations": f"{self.activation_type} {'symmetric' if self.symmetric_activations else 'asymmetric'}",
                "weights": f"int8 symmetric {'per-channel' if self.per_channel else 'per-tensor'}", "format": "QDQ"}

    @classmethod
    def of(cls, target: Target, config: QuantConfig) -> Scheme:
        if target.int8 is None:
            raise UserError(f"target '{target.name}' runs no INT8; write quant.mode: none (or --quant none)")
        rules = target.int8
        symmetric = rules.symmetric_activations if config.activations == "target" else config.activations == "symmetric"
        if rules.strict and not (symmetric and config.per_channel):
            raise UserError(f"target '{target.name}' needs symmetric INT8 activations and per-channel weights; "
                            f"write quant.activations: target and quant.per_channel: true")
        return cls(symmetric, config.per_channel, rules.placement)
