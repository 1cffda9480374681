"""Post-training static quantization: float ONNX -> QDQ ONNX, calibrated on user data.

Preserves: the model's interface (same input and output names, shapes and float dtype) and its
function up to quantization error. Produces a standard QDQ model (QuantizeLinear/DequantizeLinear
around each op) that onnxruntime and Netron open: weights int8 symmetric per output channel, biases
int32 at scale x_scale*w_scale, activations int8 (or int16 for "int16x8") per tensor, asymmetric.
"w4a8": the same with the weights of every Conv/Gemm/MatMul int4 (ONNX INT4, opset 21; see
passes/int4.py for the scales), and `weight_bits` chooses 4 or 8 bits layer by layer.

The calibration itself is onnxruntime.quantization's (MinMax, Percentile, Entropy): a maintained
implementation of exactly these methods, rather than a copy of it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnx
from onnx import numpy_helper

from edgecomp.errors import ToolError, UserError
from edgecomp.passes.base import PassResult

SCHEMES = ("int8", "int16x8", "w4a8", "mixed")  # mixed: `weight_bits` per layer (edgecomp/mixed.py)
METHODS = ("minmax", "percentile", "entropy")
MIN_CALIB_SAMPLES = 4
CORRECTION_SAMPLES = 64  # calibration samples int4 bias correction averages over (passes/int4.py)
GPTQ_SAMPLES = 32  # calibration samples whose layer inputs steer int4 rounding (passes/int4.py int4_weights)


QDQ_OPSET = 13  # per-channel QuantizeLinear/DequantizeLinear (their `axis`) need opset 13


def _at_least_opset(model: onnx.ModelProto, version: int) -> onnx.ModelProto:
    """`model` converted to opset `version` if it is older, so the QDQ model is valid ONNX."""
    current = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), version)
    if current >= version:
        return model
    from onnx import version_converter

    try:
        return version_converter.convert_version(model, version)
    except Exception as exc:  # the converter raises several kinds, all meaning "cannot convert"
        raise UserError(
            f"cannot convert the model from opset {current} to {version} for quantization: {exc}"
        ) from exc


def quantize(model: onnx.ModelProto, samples: list[list[np.ndarray]], scheme: str = "int8",
             method: str = "minmax", weight_bits: dict[str, int] | None = None) -> PassResult:  # fmt: skip
    """Quantize `model` (already checked by the front end) on calibration `samples`: a QDQ model;
    report: the scheme, calibration method and number of samples. `weight_bits` (layer name, as
    passes/int4.py layer_name says -> 4 or 8) overrides the weights' width layer by layer."""
    from edgecomp.passes.int4 import (
        INT4_OPSET,
        bias_corrections,
        int4_weights,
        linear_layers,
        name_layers,
        set_weight_bits,
    )

    if scheme == "mixed":  # int8 activations; 4 or 8 bits per layer as `weight_bits` says (passes/mixed.py)
        scheme, weight_bits = "int8", dict(weight_bits or {})
    if scheme == "w4a8" or weight_bits:
        model = name_layers(model)
    if scheme == "w4a8":
        weight_bits = {**{name: 4 for name in linear_layers(model)}, **(weight_bits or {})}
    if weight_bits and any(b == 4 for b in weight_bits.values()):
        base = quantize_base(model, samples, "int16x8" if scheme == "int16x8" else "int8", method, INT4_OPSET)
        four = {name for name, b in weight_bits.items() if b == 4}
        weights = int4_weights(base.float_model, base.model, base.floats, samples[:GPTQ_SAMPLES], layers=four)
        corrections = bias_corrections(base.float_model, base.model, base.floats, samples[:CORRECTION_SAMPLES],
                                       weights=weights)  # fmt: skip
        qmodel, _ = set_weight_bits(base.model, base.floats, weight_bits, corrections=corrections, weights=weights)
        return PassResult(qmodel, {"scheme": scheme, "calib_method": method, "samples": len(samples)})
    return PassResult(quantize_base(model, samples, scheme, method).model,
                      {"scheme": scheme, "calib_method": method, "samples": len(samples)})  # fmt: skip


class Base(NamedTuple):
    """onnxruntime's int8 QDQ model, the float model it quantized (after its pre-processing) and
    that model's float initializers by name."""

    model: onnx.ModelProto
    float_model: onnx.ModelProto
    floats: dict[str, np.ndarray]


def quantize_base(model: onnx.ModelProto, samples: list[list[np.ndarray]], scheme: str = "int8",
                  method: str = "minmax", opset: int = QDQ_OPSET) -> Base:  # fmt: skip
    """onnxruntime's static quantization with int8 weights (the model converted to at least `opset`
    first): the QDQ model, and the float model it quantized (after onnxruntime's pre-processing,
    e.g. BatchNormalization folded) with its initializers by name, for re-quantizing weights to
    other widths (passes/int4.py)."""
    import onnxruntime as ort
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if scheme not in SCHEMES or scheme in ("w4a8", "mixed"):
        raise UserError(f"--quantize must be one of {', '.join(SCHEMES)}, not '{scheme}'")
    if method not in METHODS:
        raise UserError(f"--calib-method must be one of {', '.join(METHODS)}, not '{method}'")
    if len(samples) < MIN_CALIB_SAMPLES:
        raise UserError(
            f"calibration needs at least {MIN_CALIB_SAMPLES} samples, got {len(samples)}: "
            "pass more representative inputs with --calib"
        )
    model = _at_least_opset(model, opset)
    names = [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(samples)

        def get_next(self):
            sample = next(self._it, None)
            return None if sample is None else dict(zip(names, sample, strict=True))

    calib_method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                    "entropy": CalibrationMethod.Entropy}[method]  # fmt: skip
    activation = QuantType.QInt16 if scheme == "int16x8" else QuantType.QInt8
    # ForceQuantizeNoInputCheck: quantize MaxPool, Transpose... even when their input comes in float,
    # so the whole model runs in integer.
    extra = {"ActivationSymmetric": False, "WeightSymmetric": True, "CalibPercentile": 99.999,
             "ForceQuantizeNoInputCheck": True}  # fmt: skip
    if scheme == "int16x8":
        extra["UseQDQContribOps"] = False
    logging.getLogger().setLevel(logging.ERROR)  # onnxruntime warns about pre-processing on every call
    ort.set_default_logger_severity(3)  # and its C++ side about initializers it drops
    with tempfile.TemporaryDirectory() as tmp:
        src, pre, dst = Path(tmp, "float.onnx"), Path(tmp, "pre.onnx"), Path(tmp, "q.onnx")
        onnx.save(model, src)
        try:
            # Folds BatchNormalization into Conv and similar, so fewer ops need integer kernels.
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        except Exception:
            pre = src
        try:  # onnxruntime prints calibration progress to stdout, which is the CLI's own output
            with contextlib.redirect_stdout(io.StringIO()):
                quantize_static(str(pre), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                                activation_type=activation, weight_type=QuantType.QInt8, calibrate_method=calib_method,
                                op_types_to_quantize=_op_types(), extra_options=extra)  # fmt: skip
        except Exception as exc:
            raise ToolError(
                f"quantization failed in onnxruntime: {str(exc).strip().splitlines()[-1][:300]}"
            ) from exc
        float_model = onnx.load(str(pre))
        floats = {t.name: numpy_helper.to_array(t) for t in float_model.graph.initializer
                  if t.data_type == onnx.TensorProto.FLOAT}  # fmt: skip
        return Base(onnx.load(str(dst)), float_model, floats)


# Ops edgecomp has integer kernels for (tables, a mean) that onnxruntime's registries lack: asked
# for by name, onnxruntime puts QuantizeLinear/DequantizeLinear around them too, so a chain of them
# (ReduceMean -> Neg, Div -> Sub) is not left in float between two quantized ops. Pow is not among
# them: its exponent would be quantized too (2 -> 1.9999999, and x ** 1.9999999 is NaN for x < 0);
# between quantized ops it still gets them from its neighbours, its exponent left exact.
INTEGER_EXTRAS = ("PRelu", "Neg", "Abs", "Sqrt", "Log", "Exp", "Reciprocal", "Erf", "Softplus", "Softsign", "Elu",
                  "Sub", "Div", "ReduceMean", "ReduceMax", "ReduceMin", "Max", "Min")  # fmt: skip


def _op_types() -> list[str]:
    """onnxruntime's default set of ops to quantize, plus INTEGER_EXTRAS (without them their outputs
    would stay float)."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return sorted({*QLinearOpsRegistry, *QDQRegistry, *INTEGER_EXTRAS})
