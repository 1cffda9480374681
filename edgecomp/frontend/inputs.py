"""The model's inputs as the user fixes them: initializers that old exporters list as inputs,
dynamic dimensions pinned with --input-shape, inputs frozen to constants with --freeze.

Each function takes and returns a ModelProto (a copy when it changes anything) and raises a
UserError naming the option and the input for anything it cannot do.
"""

from __future__ import annotations

import shlex

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgecomp.errors import UserError

Number = int | float


def parse_input_shapes(specs: list[str] | None) -> dict[str, list[int]]:
    """Parse --input-shape values of the form name=1,3,32,32 (the last '=' splits: names may hold one)."""
    shapes: dict[str, list[int]] = {}
    for spec in specs or []:
        name, sep, dims = spec.rpartition("=")
        try:
            values = [int(d) for d in dims.split(",")] if sep else []
        except ValueError:
            values = []
        if not name or not values or any(v <= 0 for v in values):
            raise UserError(f"bad --input-shape '{spec}': expected NAME=D0,D1,... with positive integers")
        shapes[name] = values
    return shapes


def parse_freeze(specs: list[str] | None) -> dict[str, list[Number]]:
    """Parse --freeze values NAME=VALUE or NAME=V0,V1,... (numbers; ints stay ints, so int64 inputs
    are frozen exactly)."""
    frozen: dict[str, list[Number]] = {}
    for spec in specs or []:
        name, sep, text = spec.rpartition("=")
        values: list[Number] = []
        try:
            for v in text.split(",") if sep else []:
                values.append(int(v) if v.strip().lstrip("+-").isdigit() else float(v))
        except ValueError:
            values = []
        if not name or not values:
            raise UserError(f"bad --freeze '{spec}': expected NAME=VALUE or NAME=V0,V1,... with numbers")
        frozen[name] = values
    return frozen


def is_dynamic(dim: onnx.TensorShapeProto.Dimension) -> bool:
    """A dimension without a fixed size: a dim_param of any spelling ('N', 'unk__12', a sympy
    expression...), neither value nor param, or a negative value (Paddle2ONNX writes -1).

    0 is a size (an empty tensor, which edgecomp compiles); --input-shape may still replace it."""
    return not dim.HasField("dim_value") or dim.dim_value < 0


def dims_text(shape: onnx.TensorShapeProto) -> list:
    """A shape as the user reads it: sizes, dim_params, '?' for a dimension with neither."""
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in shape.dim]


def initializer_inputs(model: onnx.ModelProto) -> list[str]:
    """Graph inputs that also have an initializer (IR < 4 lists every weight so)."""
    inits = {i.name for i in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name in inits]


def constant_initializer_inputs(model: onnx.ModelProto, keep: list[str] | tuple[str, ...] = ()) -> onnx.ModelProto:
    """Treat initializers that are also listed as graph inputs as constants, not run-time inputs.

    IR < 4 requires every initializer to be an input too (model-zoo classics, old PyTorch exports);
    an input with an initializer is, by the spec, an overridable default, but in such models it is a
    weight. Left as inputs, the unused ones became model_run() arguments and ConstantOfShape nodes
    that make weights looked data-dependent. Names in `keep` (--keep-input) become real inputs
    instead: their initializer (the default value) is dropped.
    """
    listed = initializer_inputs(model)
    unknown = sorted(set(keep) - set(listed))
    if unknown:
        shown = ", ".join(listed[:8]) + (", ..." if len(listed) > 8 else "") if listed else "none"
        raise UserError(f"--keep-input names {unknown}, which are not initializers listed as inputs "
                        f"(the model's are: {shown})")  # fmt: skip
    if not listed:
        return model
    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = model.graph
    constants = set(listed) - set(keep)
    inputs = [i for i in g.input if i.name not in constants]
    del g.input[:]
    g.input.extend(inputs)
    inits = [t for t in g.initializer if t.name not in set(keep)]
    del g.initializer[:]
    g.initializer.extend(inits)
    model.ir_version = max(model.ir_version, 4)  # IR 4+ lets initializers stand alone
    return model


def real_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs that are not initializers."""
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def _check_named(model: onnx.ModelProto, named: dict, flag: str) -> None:
    """Every input an option names is one of the model's run-time inputs."""
    names = [i.name for i in real_inputs(model)]
    unknown = sorted(set(named) - set(names))
    if unknown:
        raise UserError(f"{flag} names unknown input(s) {unknown}; the model's inputs are {names}")


def pin_input_shapes(model: onnx.ModelProto, shapes: dict[str, list[int]]) -> onnx.ModelProto:
    """Give each input named in `shapes` (--input-shape) that shape: dynamic dimensions take the
    given sizes; a fixed size that differs is an error naming it."""
    _check_named(model, shapes, "--input-shape")
    if not shapes:
        return model
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for inp in model.graph.input:
        if inp.name not in shapes:
            continue
        tt = inp.type.tensor_type
        want = shapes[inp.name]
        dims = tt.shape.dim
        if tt.HasField("shape") and len(dims) != len(want):
            raise UserError(f"--input-shape {inp.name} has {len(want)} dimensions; the model's input has "
                            f"{len(dims)} ({dims_text(tt.shape)})")  # fmt: skip
        for i, (d, v) in enumerate(zip(dims, want, strict=True)):
            if not is_dynamic(d) and d.dim_value not in (0, v):
                raise UserError(f"--input-shape {inp.name}: dimension {i} is fixed to {d.dim_value} in the "
                                f"model, not {v}")  # fmt: skip
        tt.ClearField("shape")
        tt.shape.dim.extend(onnx.TensorShapeProto.Dimension(dim_value=v) for v in want)
    return model


def freeze_inputs(model: onnx.ModelProto, values: dict[str, list[Number]]) -> onnx.ModelProto:
    """Make each input named in `values` (--freeze) a constant of that value, in the input's own
    element type: a configuration input (a sample rate, a mode flag) then folds, and so do the If
    nodes that branch on it. Its shape is the input's if static, else that of the values given
    (a scalar for one value of a rank-0 input, a vector otherwise)."""
    _check_named(model, values, "--freeze")
    if not values:
        return model
    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = model.graph
    kept = []
    for inp in g.input:
        if inp.name in values:
            g.initializer.append(numpy_helper.from_array(_frozen_value(inp, values[inp.name]), inp.name))
        else:
            kept.append(inp)
    del g.input[:]
    g.input.extend(kept)
    return model


def _frozen_value(inp: onnx.ValueInfoProto, values: list[Number]) -> np.ndarray:
    """The constant --freeze gives `inp`: checked against its element type and shape."""
    tt = inp.type.tensor_type
    try:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type))
    except Exception:
        dtype = None
    if dtype is None or dtype.kind not in "biuf":
        names = onnx.TensorProto.DataType
        kind = names.Name(tt.elem_type) if tt.elem_type in names.values() else f"{tt.elem_type} (unknown)"
        raise UserError(f"--freeze {inp.name}: the input's element type is {kind}; only numbers can be frozen")
    for v in values:
        if dtype.kind in "biu" and float(v) != int(v):
            raise UserError(f"--freeze {inp.name}={v}: the input is {dtype}, so its value must be an integer")
        if dtype.kind == "b" and v not in (0, 1):
            raise UserError(f"--freeze {inp.name}={v}: the input is bool: give 0 or 1")
        if dtype.kind in "iu" and not np.iinfo(dtype).min <= int(v) <= np.iinfo(dtype).max:
            raise UserError(f"--freeze {inp.name}={v}: out of the range of its type {dtype}")
    array = np.array(values, dtype=np.float64 if dtype.kind == "f" else np.int64).astype(dtype)
    dims = tt.shape.dim if tt.HasField("shape") else None
    if dims is not None and not any(is_dynamic(d) for d in dims):
        shape = [d.dim_value for d in dims]
        if int(np.prod(shape)) != array.size:
            raise UserError(f"--freeze {inp.name}: the input has shape {shape} ({int(np.prod(shape))} values), "
                            f"{array.size} given")  # fmt: skip
        return array.reshape(shape)
    if dims is not None and len(dims) > 1:
        raise UserError(f"--freeze {inp.name}: the input has dynamic shape {dims_text(tt.shape)}; pin it "
                        f"with --input-shape as well")  # fmt: skip
    return array.reshape(()) if dims is not None and len(dims) == 0 else array


def shape_hint(inputs: list[onnx.ValueInfoProto]) -> str:
    """The --input-shape options that pin `inputs`' dynamic dimensions (to 1), quoted for a shell."""
    parts = []
    for v in inputs:
        sizes = [str(d.dim_value) if not is_dynamic(d) and d.dim_value > 0 else "1"
                 for d in v.type.tensor_type.shape.dim]  # fmt: skip
        parts.append(f"--input-shape {shlex.quote(v.name + '=' + ','.join(sizes))}")
    return " ".join(parts)
