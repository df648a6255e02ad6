"""Our QDQ ONNX writer: onnxruntime's QDQ quantizer applying ranges we calibrated, at the scheme's placement."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import onnx

from edgecompress.calibration.graph import drop_requantization, float_feeders, read_float, shared_scale_groups
from edgecompress.calibration.ranges import Ranges
from edgecompress.quantize.scheme import Scheme


def quantize_qdq(model: Path, ranges: Ranges, dest: Path, scheme: Scheme, exclude: Sequence[str],
                 keep_float: Sequence[str] = ()) -> Path:
    """A QDQ ONNX of `model` with `ranges`, every node the scheme places Q/DQ at but `exclude` quantized, and the
    layers of `keep_float` (the fallback's, among `exclude`) reading float inputs too; keeps the ONNX metadata."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import save_tensors_data

    source = onnx.load(str(model), load_external_data=False)
    if scheme.inputs_only:
        exclude = [*exclude, *float_feeders(source, exclude)]
        ranges = ranges.unified(shared_scale_groups(source, exclude))
    # Our ranges go in as onnxruntime's calibration cache, so quantize_static applies them without calibrating.
    cache = dest.with_suffix(".ranges-ort.json")
    save_tensors_data(ranges.tensors_data(), cache)
    quantize_static(
        str(model), str(dest), None, quant_format=QuantFormat.QDQ, per_channel=scheme.per_channel,
        activation_type=QuantType.QInt8 if scheme.symmetric_activations else QuantType.QUInt8,
        weight_type=QuantType.QInt8, nodes_to_exclude=list(exclude), calibrate_method=CalibrationMethod.MinMax,
        op_types_to_quantize=scheme.quantized_ops,
        calibration_cache_path=str(cache),
        extra_options={"ActivationSymmetric": scheme.symmetric_activations, "WeightSymmetric": True,
                       # int8 weights behind a DequantizeLinear; onnxruntime fuses DQ-Conv-Q into QLinearConv
                       # only with an int32 bias, OpenVINO and TensorRT take float biases
                       "QuantizeBias": not scheme.inputs_only,
                       "OpTypesToExcludeOutputQuantization": scheme.quantized_ops or []},
    )
    cache.unlink()
    quantized = onnx.load(str(dest))
    read_float(quantized, keep_float)
    if scheme.placement == "nncf":
        drop_requantization(quantized, exclude)
    del quantized.metadata_props[:]
    quantized.metadata_props.extend(source.metadata_props)
    onnx.save(quantized, str(dest))  # Ultralytics' AutoBackend reads names, stride and imgsz from the metadata
    return dest
