"""Load, check and normalise an ONNX model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, shape_inference, version_converter

from edgecomp.errors import UnsupportedModelError, UserError
from edgecomp.frontend.ops import check_ops

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


def parse_input_shapes(specs: list[str] | None) -> dict[str, list[int]]:
    """Parse --input-shape values of the form name=1,3,32,32."""
    shapes: dict[str, list[int]] = {}
    for spec in specs or []:
        name, sep, dims = spec.partition("=")
        try:
            values = [int(d) for d in dims.split(",")] if sep else []
        except ValueError:
            values = []
        if not name or not values or any(v <= 0 for v in values):
            raise UserError(f"bad --input-shape '{spec}': expected NAME=D0,D1,... with positive integers")
        shapes[name] = values
    return shapes


def load_model(path: str | Path, input_shapes: dict[str, list[int]] | None = None) -> onnx.ModelProto:
    """Read `path`, pin input shapes, convert old opsets, infer shapes and check every node.

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
    return load_model_proto(model, path, input_shapes)


def load_model_proto(model: onnx.ModelProto, path: Path, input_shapes: dict[str, list[int]] | None = None
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
    model = _pin_input_shapes(model, input_shapes or {})
    model = _normalise_opset(model)
    model = widen_subbyte(model)
    try:
        model = shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except Exception as exc:
        raise UserError(f"shape inference failed on {path}: {_first_line(exc)}") from exc
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


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The model's real inputs (graph inputs that are not initializers)."""
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def _pin_input_shapes(model: onnx.ModelProto, shapes: dict[str, list[int]]) -> onnx.ModelProto:
    names = {i.name for i in graph_inputs(model)}
    unknown = sorted(set(shapes) - names)
    if unknown:
        raise UserError(
            f"--input-shape names unknown input(s) {unknown}; the model's inputs are {sorted(names)}"
        )
    if not shapes:
        return model
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for inp in model.graph.input:
        if inp.name in shapes:
            dims = inp.type.tensor_type.shape.dim
            if len(dims) != len(shapes[inp.name]):
                raise UserError(
                    f"--input-shape {inp.name} has {len(shapes[inp.name])} dimensions; the model's input has {len(dims)}"
                )
            for d, v in zip(dims, shapes[inp.name], strict=True):
                if d.HasField("dim_value") and d.dim_value != v:
                    raise UserError(
                        f"--input-shape {inp.name}: dimension {d.dim_value} is fixed in the model, not {v}"
                    )
                d.Clear()
                d.dim_value = v
    # Intermediate value_info may carry the old symbolic dims; shape inference recomputes them.
    del model.graph.value_info[:]
    return model


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


def _check_io(model: onnx.ModelProto) -> None:
    for kind, values in (("input", graph_inputs(model)), ("output", list(model.graph.output))):
        for v in values:
            tt = v.type.tensor_type
            if not v.type.HasField("tensor_type"):
                raise UnsupportedModelError(f"model {kind} '{v.name}' is not a tensor")
            if tt.elem_type not in SUPPORTED_IO_DTYPES:
                dtype = TensorProto.DataType.Name(tt.elem_type)
                raise UnsupportedModelError(
                    f"model {kind} '{v.name}' has element type {dtype}; edgecomp's model I/O takes "
                    "float32/64, bool and 8- to 64-bit integers"
                )
            if not tt.HasField("shape"):
                raise UnsupportedModelError(
                    f"model {kind} '{v.name}' has no known shape; pin it with --input-shape NAME=D0,D1,..."
                )
            dynamic = [d.dim_param or "?" for d in tt.shape.dim if not d.HasField("dim_value")]
            if dynamic or any(d.dim_value < 0 for d in tt.shape.dim):
                shape = [
                    d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tt.shape.dim
                ]
                hint = (
                    f"pin it with --input-shape {v.name}={','.join(str(s) if isinstance(s, int) else '1' for s in shape)}"
                    if kind == "input"
                    else "pin the inputs it depends on with --input-shape"
                )
                raise UnsupportedModelError(f"model {kind} '{v.name}' has dynamic shape {shape}; {hint}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
