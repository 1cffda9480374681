"""Load, check and normalise an ONNX model."""

from __future__ import annotations

import shlex
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, version_converter

from edgecomp.errors import UnsupportedModelError, UserError
from edgecomp.frontend.inputs import (
    Number,
    constant_initializer_inputs,
    dims_text,
    freeze_inputs,
    is_dynamic,
    pin_input_shapes,
    real_inputs,
    shape_hint,
)
from edgecomp.frontend.ops import check_ops
from edgecomp.frontend.settle import clear_declared_shapes, settle_shapes

# Opsets below this are converted up (TVM's importer and our tests cover 11+); the newest opset
# onnx itself knows is accepted as is.
MIN_OPSET = 11
CONVERT_TO_OPSET = 13
# Model inputs and outputs: the element types that have a C99 type (codegen/cnames.py C_TYPES).
SUPPORTED_IO_DTYPES = {
    TensorProto.FLOAT: "float32", TensorProto.DOUBLE: "float64", TensorProto.BOOL: "bool",
    TensorProto.INT8: "int8", TensorProto.UINT8: "uint8", TensorProto.INT16: "int16",
    TensorProto.UINT16: "uint16", TensorProto.INT32: "int32", TensorProto.UINT32: "uint32",
    TensorProto.INT64: "int64", TensorProto.UINT64: "uint64",
}  # fmt: skip


def load_model(path: str | Path, input_shapes: dict[str, list[int]] | None = None,
               freeze: dict[str, list[Number]] | None = None, keep_inputs: tuple[str, ...] | list[str] = ()
               ) -> onnx.ModelProto:  # fmt: skip
    """Read `path`, fix its inputs, convert old opsets, settle shapes and constants, check every node.

    `input_shapes` (--input-shape) pins dynamic dimensions, `freeze` (--freeze) makes inputs
    constants, `keep_inputs` (--keep-input) keeps initializers listed as inputs as real inputs.
    Raises UserError (or UnsupportedModelError) with a one-line reason for anything that cannot
    be compiled.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"model file not found: {path}")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf raises DecodeError, RuntimeWarning, ValueError...
        raise UserError(f"{path} is not a readable ONNX model: {_first_line(exc)}") from exc
    return load_model_proto(model, path, input_shapes, freeze, keep_inputs)


def load_model_proto(model: onnx.ModelProto, path: Path, input_shapes: dict[str, list[int]] | None = None,
                     freeze: dict[str, list[Number]] | None = None, keep_inputs: tuple[str, ...] | list[str] = ()
                     ) -> onnx.ModelProto:  # fmt: skip
    """load_model for a model already in memory (`path` names it in messages)."""
    if not model.graph.node and not model.graph.output:
        raise UserError(f"{path} is not a readable ONNX model: it has no graph")
    if not model.graph.output:
        raise UserError(f"{path}: the model's graph has no outputs")
    try:
        onnx.checker.check_model(model)
    except Exception as exc:  # ValidationError, and UnicodeDecodeError for strings that are not UTF-8
        raise UserError(f"{path} is not a valid ONNX model: {_first_line(exc)}") from exc
    before = model
    model = constant_initializer_inputs(model, keep_inputs)
    model = pin_input_shapes(model, input_shapes or {})
    model = freeze_inputs(model, freeze or {})
    model = clear_declared_shapes(model, all_outputs=model is not before)
    _check_static_inputs(model)
    model = _normalise_opset(model)
    model = standard_qdq(model)
    model = widen_subbyte(model)
    model = settle_shapes(model, path)
    check_ops(model)
    _check_io(model)
    return model


# 4- and 2-bit integers are held one per byte on the device, as the 8-bit type of the same sign.
SUBBYTE = {
    TensorProto.INT4: (TensorProto.INT8, -8, 7), TensorProto.UINT4: (TensorProto.UINT8, 0, 15),
    TensorProto.INT2: (TensorProto.INT8, -2, 1), TensorProto.UINT2: (TensorProto.UINT8, 0, 3),
}  # fmt: skip


def widen_subbyte(model: onnx.ModelProto) -> onnx.ModelProto:
    """Hold int4/uint4/int2/uint2 tensors as int8/uint8, one value per byte.

    Preserves every value: inputs and constants widen exactly, and each QuantizeLinear to a
    sub-byte type becomes a QuantizeLinear to the 8-bit type followed by a Clip to the narrow
    range (saturating to 8 bits, then to 4 or 2, is saturating to 4 or 2)."""
    from onnx import numpy_helper

    def narrow(elem: int) -> bool:
        return elem in SUBBYTE

    g = model.graph
    values = [*g.input, *g.output, *g.value_info]
    if (
        not any(narrow(v.type.tensor_type.elem_type) for v in values)
        and not any(narrow(t.data_type) for t in g.initializer)
        and not any(a.name == "output_dtype" and narrow(a.i) for n in g.node for a in n.attribute)
    ):
        return model
    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = model.graph
    for v in [*g.input, *g.output, *g.value_info]:
        if narrow(v.type.tensor_type.elem_type):
            v.type.tensor_type.elem_type = SUBBYTE[v.type.tensor_type.elem_type][0]
    ranges = {}
    for i, t in enumerate(g.initializer):
        if narrow(t.data_type):
            wide, lo, hi = SUBBYTE[t.data_type]
            ranges[t.name] = (wide, lo, hi)
            arr = numpy_helper.to_array(t).astype(helper.tensor_dtype_to_np_dtype(wide))
            g.initializer[i].CopyFrom(numpy_helper.from_array(arr, t.name))
    int4 = sorted(name for name, r in ranges.items() if r[1:] == (-8, 7))
    if int4:  # which int8 constants hold int4 values: the quantized path packs them two per byte again
        _set_metadata(model, NARROW_INT4_KEY, ",".join(int4))
    nodes = []
    for node in g.node:
        nodes.append(node)
        if node.op_type != "QuantizeLinear":
            continue
        rng = ranges.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        for a in node.attribute:
            if a.name == "output_dtype" and narrow(a.i):
                rng, a.i = SUBBYTE[a.i], SUBBYTE[a.i][0]
        if rng is None:
            continue
        wide, lo, hi = rng
        dtype = helper.tensor_dtype_to_np_dtype(wide)
        out = node.output[0]
        node.output[0] = f"{out}__8bit"
        bounds = [f"{out}__lo", f"{out}__hi"]
        g.initializer.extend(
            numpy_helper.from_array(np.array(v, dtype), n) for v, n in zip((lo, hi), bounds, strict=True)
        )
        nodes.append(helper.make_node("Clip", [node.output[0], *bounds], [out], f"{node.name}__range"))
    del g.node[:]
    g.node.extend(nodes)
    return model


QDQ_TYPES_OPSET = 21  # QuantizeLinear/DequantizeLinear take int4 and int16 in the ONNX domain from opset 21


def standard_qdq(model: onnx.ModelProto) -> onnx.ModelProto:
    """com.microsoft's QuantizeLinear/DequantizeLinear (what onnxruntime's quantizer writes for
    int4 and int16 before opset 21) as the ONNX ops, the model converted to opset 21 where they
    are standard. Preserves every value: the contrib ops compute the ONNX definition (per tensor
    or per axis, saturating, round half to even)."""
    contrib = [n for n in model.graph.node
               if n.domain == "com.microsoft" and n.op_type in ("QuantizeLinear", "DequantizeLinear")]  # fmt: skip
    if not contrib:
        return model
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for n in model.graph.node:
        if n.domain == "com.microsoft" and n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            n.domain = ""
    if not any(n.domain == "com.microsoft" for n in model.graph.node):
        kept = [o for o in model.opset_import if o.domain != "com.microsoft"]
        del model.opset_import[:]
        model.opset_import.extend(kept)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), QDQ_TYPES_OPSET)
    if opset < QDQ_TYPES_OPSET:
        try:
            model = version_converter.convert_version(model, QDQ_TYPES_OPSET)
        except Exception as exc:  # the converter raises several kinds, all meaning "cannot convert"
            raise UnsupportedModelError(
                f"cannot convert the model's com.microsoft QuantizeLinear/DequantizeLinear to the ONNX ops of "
                f"opset {QDQ_TYPES_OPSET}: {_first_line(exc)}"
            ) from exc
    return model


NARROW_INT4_KEY = "edgecomp.int4_initializers"  # metadata: initializers widened from INT4 (comma separated)


def int4_initializers(model: onnx.ModelProto) -> set[str]:
    """The initializers that widen_subbyte held as int8 but were INT4 in the model."""
    value = next((p.value for p in model.metadata_props if p.key == NARROW_INT4_KEY), "")
    return {n for n in value.split(",") if n}


def _set_metadata(model: onnx.ModelProto, key: str, value: str) -> None:
    for p in model.metadata_props:
        if p.key == key:
            p.value = value
            return
    entry = model.metadata_props.add()
    entry.key, entry.value = key, value


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The model's real inputs (graph inputs that are not initializers)."""
    return real_inputs(model)


def _normalise_opset(model: onnx.ModelProto) -> onnx.ModelProto:
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None:
        raise UnsupportedModelError("the model imports no default-domain (ai.onnx) opset")
    if opset >= MIN_OPSET:
        return model
    try:
        return version_converter.convert_version(model, CONVERT_TO_OPSET)
    except Exception as exc:
        raise UnsupportedModelError(
            f"cannot convert the model from opset {opset} to opset {CONVERT_TO_OPSET}: {_first_line(exc)}"
        ) from exc


def _check_static_inputs(model: onnx.ModelProto) -> None:
    """Every input tensor has a static shape (before anything is inferred from them); a dynamic
    one is refused with the --input-shape options that pin them all, as a working command line."""
    dynamic = []
    for v in real_inputs(model):
        tt = v.type.tensor_type
        if not v.type.HasField("tensor_type"):
            continue  # _check_io says so
        if not tt.HasField("shape"):
            raise UnsupportedModelError(f"model input '{v.name}' has no known shape; pin it with "
                                        f"--input-shape {shlex.quote(v.name + '=D0,D1,...')}")  # fmt: skip
        if any(is_dynamic(d) for d in tt.shape.dim):
            dynamic.append(v)
    if dynamic:
        v = dynamic[0]
        more = f" (and {len(dynamic) - 1} more input(s))" if len(dynamic) > 1 else ""
        raise UnsupportedModelError(f"model input '{v.name}' has dynamic shape {dims_text(v.type.tensor_type.shape)}"
                                    f"{more}; pin it with {shape_hint(dynamic)} (any sizes you need)")  # fmt: skip


def _check_io(model: onnx.ModelProto) -> None:
    """Every model input and output is a tensor of a C type with a static shape."""
    for kind, values in (("input", real_inputs(model)), ("output", list(model.graph.output))):
        for v in values:
            tt = v.type.tensor_type
            if not v.type.HasField("tensor_type"):
                raise UnsupportedModelError(f"model {kind} '{v.name}' is not a tensor")
            if tt.elem_type not in SUPPORTED_IO_DTYPES:
                known = tt.elem_type in TensorProto.DataType.values()
                dtype = TensorProto.DataType.Name(tt.elem_type) if known else f"{tt.elem_type} (unknown)"
                raise UnsupportedModelError(
                    f"model {kind} '{v.name}' has element type {dtype}; edgecomp's model I/O takes "
                    "float32/64, bool and 8- to 64-bit integers"
                )
            if not tt.HasField("shape"):
                raise UnsupportedModelError(
                    f"model {kind} '{v.name}' has no known shape: shape inference cannot follow the ops that compute it"
                )
            if any(is_dynamic(d) for d in tt.shape.dim):
                raise UnsupportedModelError(
                    f"model {kind} '{v.name}' has dynamic shape {dims_text(tt.shape)} although every input is "
                    "static: its size depends on values computed at run time (freeze configuration inputs with "
                    "--freeze NAME=VALUE)"
                )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
