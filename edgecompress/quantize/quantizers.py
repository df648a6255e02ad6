"""The quantizers that make a target's INT8 artifact, by name, and the calibration they share.

A quantizer turns the FP32 model into the target's INT8 artifact given the layers to keep in float (the fallback
calls it again with more). `qdq` writes our QDQ ONNX from our calibrated ranges, which the target then converts
to its runtime's artifact; `nncf` quantizes the OpenVINO IR with NNCF. A target lists the quantizers it has in its
Int8Rules. Light at import: onnx, onnxruntime and NNCF load when a quantizer runs.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from edgecompress.calibration.data import Batches
from edgecompress.calibration.ranges import METHODS, Ranges, Statistics, collect, estimate_ranges
from edgecompress.config import Registry

if TYPE_CHECKING:
    import onnx

    from edgecompress.quantize.config import QuantConfig
    from edgecompress.quantize.scheme import Scheme
    from edgecompress.targets.base import Target


@dataclass
class Job:
    """One PTQ of one FP32 model for one target: the inputs every quantizer and the fallback share, and the
    calibration statistics, collected once on the FP32 ONNX (only when a quantizer or ranking needs them)."""

    onnx_fp32: Path  # the exported FP32 ONNX, a metadata.yaml beside it
    fp32_artifact: Path  # the same model in the target's runtime (the ONNX itself, or its OpenVINO IR)
    target: Target
    config: QuantConfig
    scheme: Scheme
    images: list[Path]  # calibration images, from the train split
    imgsz: int
    timings: dict[str, float] = field(default_factory=dict)
    _ranges: dict[str, Ranges] = field(default_factory=dict)

    @property
    def methods(self) -> list[str]:
        """The calibration methods to try: the recipe's, or every method under `auto`."""
        return list(METHODS) if self.config.method == "auto" else [self.config.method]

    @cached_property
    def proto(self) -> onnx.ModelProto:
        import onnx

        return onnx.load(str(self.onnx_fp32), load_external_data=False)

    @cached_property
    def decode(self) -> list[str]:
        """The head's decode, which every scheme keeps in float."""
        from edgecompress.calibration.graph import head_decode_nodes

        return head_decode_nodes(self.proto)

    @cached_property
    def statistics(self) -> Statistics:
        """Every tensor's statistics over the calibration images, collected once for every method tried."""
        clock = time.perf_counter()
        stats = collect(self.onnx_fp32, Batches(self.images, self.imgsz),
                        histograms=any(METHODS[m].histogram for m in self.methods))
        self.timings["calibrate_s"] = round(time.perf_counter() - clock, 1)
        return stats

    def ranges(self, method: str) -> Ranges:
        """The ranges of one calibration method, in the scheme's symmetry (computed once per method)."""
        if method not in self._ranges:
            self._ranges[method] = estimate_ranges(self.statistics, method, self.scheme.symmetric_activations,
                                                   self.config.percentile)
        return self._ranges[method]


class Quantizer:
    """Builds the target's INT8 artifact into `outdir`, with the head's decode and `keep_float` in float, from the
    ranges of a calibration `method`. `calibrates`: it takes our methods' ranges (else it estimates its own, and
    `method` is None). `reads_runtime_artifact`: it quantizes the FP32 model in the target's runtime
    (Job.fp32_artifact), not the ONNX."""

    calibrates = True
    reads_runtime_artifact = False

    def build(self, job: Job, keep_float: Sequence[str], outdir: Path, method: str | None) -> Path:
        raise NotImplementedError

    def describe(self, job: Job, method: str | None) -> dict[str, str]:
        """The scheme and ranges it used, for the report."""
        raise NotImplementedError


QUANTIZERS: Registry[Quantizer] = Registry("quantizer")


@QUANTIZERS.register("qdq")
class QDQ(Quantizer):
    """onnxruntime's QDQ quantizer applying our ranges, at the target's placement; the target converts the QDQ
    ONNX to its artifact and checks it against its runtime's rules."""

    def build(self, job: Job, keep_float: Sequence[str], outdir: Path, method: str | None) -> Path:
        import onnx

        from edgecompress.quantize.qdq import quantize_qdq

        qdq = quantize_qdq(job.onnx_fp32, job.ranges(method), outdir / f"{job.onnx_fp32.stem}_int8.onnx",
                           job.scheme, [*job.decode, *keep_float], keep_float)
        job.target.check_int8(onnx.load(str(qdq)))
        return job.target.from_qdq(qdq, job.onnx_fp32)

    def describe(self, job: Job, method: str | None) -> dict[str, str]:
        return {**job.scheme.describe(), "ranges": f"{method} over {len(job.images)} images"}


@QUANTIZERS.register("nncf")
class NNCF(Quantizer):
    """NNCF's post-training quantization of the OpenVINO IR (its MIXED preset: asymmetric uint8 activations,
    symmetric per-channel int8 weights; its own range estimators), the head's decode ignored."""

    calibrates = False
    reads_runtime_artifact = True

    def build(self, job: Job, keep_float: Sequence[str], outdir: Path, method: str | None) -> Path:
        import nncf
        import openvino as ov

        from edgecompress.calibration.graph import head_scope
        from edgecompress.device.openvino import xml_of

        model = ov.Core().read_model(str(xml_of(job.fp32_artifact)))
        # OpenVINO keeps ONNX node names; a Conv becomes '<name>/WithoutBiases' plus its bias Add '<name>'. The
        # pattern is the head's decode: everything in the head scope outside its cv2/cv3 conv branches.
        scope = head_scope(job.proto)
        names = [f"{name}/WithoutBiases" for name in keep_float] + list(keep_float)
        ignored = nncf.IgnoredScope(patterns=[rf"^{re.escape(scope)}(?!cv[23]\.\d+/)"], names=names, validate=False)
        quantized = nncf.quantize(model, nncf.Dataset(list(Batches(job.images, job.imgsz))),
                                  preset=nncf.QuantizationPreset.MIXED, subset_size=len(job.images),
                                  ignored_scope=ignored)
        dest = outdir / f"{job.onnx_fp32.stem}_int8_openvino_model"
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        ov.save_model(quantized, str(dest / f"{job.onnx_fp32.stem}.xml"), compress_to_fp16=False)
        shutil.copyfile(job.onnx_fp32.parent / "metadata.yaml", dest / "metadata.yaml")
        return dest

    def describe(self, job: Job, method: str | None) -> dict[str, str]:
        return {"activations": "uint8 asymmetric", "weights": "int8 symmetric per-channel",
                "format": "OpenVINO FakeQuantize", "ranges": f"NNCF's own (MIXED preset) over {len(job.images)} "
                                                             f"images"}
