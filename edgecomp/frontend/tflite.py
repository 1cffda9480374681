"""Read a .tflite flatbuffer (the `tflite` schema package; no TensorFlow) into plain data: tensors
(shape, type, quantization, constant data) and operators (builtin name, inputs, outputs, options).

Every problem a model can have here is a one-line UserError: not a TFLite file, several
subgraphs, dynamic shapes, custom operators (named, with the node), tensor types without a C type.
What the graph means is decided by the importers (quant/from_tflite.py for integer models,
frontend/tflite_float.py for float ones).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgecomp.errors import UnsupportedModelError, UserError

# tflite TensorType -> numpy dtype (the types edgecomp compiles; float16 weights are widened).
_DTYPES = {0: "float32", 1: "float16", 2: "int32", 3: "uint8", 4: "int64", 6: "bool", 7: "int16", 9: "int8"}


@dataclass(frozen=True)
class TflTensor:
    index: int
    name: str
    shape: tuple[int, ...]
    dtype: str
    scales: np.ndarray | None = None  # float32, one or one per channel of quantized_dimension
    zero_points: np.ndarray | None = None  # int64
    quantized_dimension: int = 0
    data: np.ndarray | None = field(default=None, repr=False)  # constant tensors

    @property
    def quantized(self) -> bool:
        return self.scales is not None

    @property
    def scale(self) -> float:
        return float(self.scales[0])

    @property
    def zero_point(self) -> int:
        return int(self.zero_points[0])


@dataclass(frozen=True)
class TflOp:
    index: int
    name: str  # builtin operator name, e.g. "CONV_2D"
    inputs: tuple[int, ...]  # tensor indices; -1 for an omitted optional input
    outputs: tuple[int, ...]
    options: dict

    @property
    def label(self) -> str:
        return f"{self.name} (operator #{self.index})"


@dataclass(frozen=True)
class TflModel:
    path: Path
    tensors: tuple[TflTensor, ...]
    ops: tuple[TflOp, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]

    @property
    def is_integer(self) -> bool:
        """Quantized: some operator computes on int8/int16 tensors with quantization parameters."""
        return any(
            self.tensors[i].quantized and self.tensors[i].dtype in ("int8", "int16")
            for op in self.ops
            for i in op.outputs
            if op.name not in ("QUANTIZE", "DEQUANTIZE") or self.tensors[i].dtype != "float32"
        )


def is_tflite(path: Path | str) -> bool:
    """A .tflite file by its name, or by its flatbuffer identifier ("TFL3")."""
    path = Path(path)
    if path.suffix.lower() == ".tflite":
        return True
    try:
        with path.open("rb") as f:
            head = f.read(8)
    except OSError:
        return False
    return head[4:8] == b"TFL3"


def read_tflite(path: Path | str) -> TflModel:
    """Parse `path`; UserError for anything that is not a single-subgraph static TFLite model."""
    import tflite
    from tflite.BuiltinOperator import BuiltinOperator

    path = Path(path)
    if not path.is_file():
        raise UserError(f"model file not found: {path}")
    data = path.read_bytes()
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise UserError(f"{path} is not a TFLite model (no 'TFL3' flatbuffer identifier)")
    try:
        model = tflite.Model.GetRootAsModel(data, 0)
        if model.SubgraphsLength() < 1:
            raise UserError(f"{path}: the TFLite model has no subgraph")
        sg = model.Subgraphs(0)
        names = {v: k for k, v in vars(BuiltinOperator).items() if not k.startswith("_")}
        tensors = tuple(_tensor(model, sg, i, path) for i in range(sg.TensorsLength()))
        ops = []
        for i in range(sg.OperatorsLength()):
            op = sg.Operators(i)
            code = model.OperatorCodes(op.OpcodeIndex())
            builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
            name = names.get(builtin, f"builtin#{builtin}")
            if name == "CUSTOM":
                custom = (code.CustomCode() or b"?").decode(errors="replace")
                raise UnsupportedModelError(
                    f"unsupported operator: custom TFLite operator '{custom}' (operator #{i}); edgecomp "
                    "compiles builtin operators only"
                )
            ops.append(TflOp(i, name, tuple(int(v) for v in op.InputsAsNumpy()) if op.InputsLength() else (),
                             tuple(int(v) for v in op.OutputsAsNumpy()) if op.OutputsLength() else (),
                             _options(op)))  # fmt: skip
        inputs = tuple(int(v) for v in sg.InputsAsNumpy()) if sg.InputsLength() else ()
        outputs = tuple(int(v) for v in sg.OutputsAsNumpy()) if sg.OutputsLength() else ()
    except UserError:
        raise
    except Exception as exc:  # flatbuffers raises IndexError, struct.error... on damaged files
        raise UserError(f"{path} is not a readable TFLite model: {type(exc).__name__}: {exc}") from exc
    if model.SubgraphsLength() > 1:
        used = {o.name for o in ops}
        if used & {"WHILE", "IF", "CALL_ONCE", "STABLEHLO_COMPOSITE"}:
            raise UnsupportedModelError(
                f"{path}: control flow across subgraphs ({', '.join(sorted(used & {'WHILE', 'IF', 'CALL_ONCE'}))}) "
                "is not compiled"
            )
    if not outputs:
        raise UserError(f"{path}: the TFLite model has no outputs")
    return TflModel(path, tensors, tuple(ops), inputs, outputs)


def _tensor(model, sg, i: int, path: Path) -> TflTensor:
    t = sg.Tensors(i)
    name = t.Name().decode(errors="replace") if t.Name() else f"tensor{i}"
    ttype = t.Type()
    if ttype not in _DTYPES:
        what = {13: "a resource variable (a stateful model: VAR_HANDLE / READ_VARIABLE / ASSIGN_VARIABLE)",
                14: "a variant tensor", 5: "a string tensor"}.get(ttype, f"TFLite type {ttype}")  # fmt: skip
        raise UnsupportedModelError(f"{path}: tensor '{name}' is {what}, which edgecomp does not compile")
    if t.Sparsity() is not None:
        raise UnsupportedModelError(
            f"{path}: tensor '{name}' is stored sparse (TFLite sparsity); convert the model with dense weights"
        )
    shape = tuple(int(v) for v in t.ShapeAsNumpy()) if t.ShapeLength() else ()
    if t.ShapeSignatureLength() and any(int(v) < 0 for v in t.ShapeSignatureAsNumpy()):
        signature = [int(v) for v in t.ShapeSignatureAsNumpy()]
        batch_only = signature[0] < 0 and all(s >= 0 for s in signature[1:]) and shape[:1] == (1,)
        if not batch_only:  # a dynamic batch is run as batch 1, as TFLite Micro does
            raise UnsupportedModelError(
                f"{path}: tensor '{name}' has dynamic shape {signature} (its stored shape {list(shape)} is only a "
                "placeholder; TFLite Micro cannot resize it either): convert the model with fixed shapes"
            )
    q = t.Quantization()
    scales = zps = None
    qdim = 0
    if q is not None and q.ScaleLength() > 0:
        scales = q.ScaleAsNumpy().astype(np.float32)
        zps = q.ZeroPointAsNumpy().astype(np.int64) if q.ZeroPointLength() else np.zeros(len(scales), np.int64)
        qdim = int(q.QuantizedDimension())
    data = None
    buf = model.Buffers(t.Buffer())
    if buf is not None and buf.DataLength() > 0:
        raw = buf.DataAsNumpy().tobytes()
        arr = np.frombuffer(raw, dtype=np.dtype(_DTYPES[ttype]).newbyteorder("<"))
        data = arr.astype(_DTYPES[ttype]).reshape(shape)
    elif buf is not None and buf.Offset() > 1:  # large models keep buffers after the flatbuffer
        raw = model._tab.Bytes[buf.Offset(): buf.Offset() + buf.Size()]
        data = np.frombuffer(bytes(raw), dtype=np.dtype(_DTYPES[ttype]).newbyteorder("<")).astype(
            _DTYPES[ttype]).reshape(shape)  # fmt: skip
    return TflTensor(i, name, shape, _DTYPES[ttype], scales, zps, qdim, data)


def _options(op) -> dict:
    """The operator's builtin options as a dict of CamelCase field -> value (arrays as lists)."""
    import tflite
    from tflite.BuiltinOptions import BuiltinOptions

    table = op.BuiltinOptions()
    if table is None:
        return {}
    names = {v: k for k, v in vars(BuiltinOptions).items() if not k.startswith("_")}
    cls = getattr(tflite, names.get(op.BuiltinOptionsType(), ""), None)
    if cls is None:
        return {}
    opts = cls()
    opts.Init(table.Bytes, table.Pos)
    result = {}
    for attr in dir(cls):
        if attr.startswith("_") or attr[0].islower() or attr in ("Init", "GetRootAs") or attr.startswith("GetRootAs"):
            continue
        if attr.endswith(("AsNumpy", "Length", "IsNone", "BufferHasIdentifier")):
            continue
        if hasattr(cls, attr + "AsNumpy"):
            value = getattr(opts, attr + "AsNumpy")()
            result[attr] = [] if isinstance(value, int) else [int(v) for v in value]
            continue
        try:
            result[attr] = getattr(opts, attr)()
        except TypeError:  # a getter with an index argument or a nested table
            continue
    return result


NCHW = (0, 3, 1, 2)  # NHWC -> NCHW
NHWC = (0, 2, 3, 1)  # NCHW -> NHWC


class Layouts:
    """Where each TFLite tensor lives in the graph being built, and in which order: every 4-D
    tensor an operator computes is kept NCHW (edgecomp's kernels' order); "plain" is TFLite's own.
    `transpose(src, t, layout)` is the importer's way to make the other order of tensor t (it
    returns the new name); `get` calls it the first time an order is asked for."""

    def __init__(self, model: TflModel, transpose) -> None:
        self.model = model
        self._transpose = transpose
        self._names: dict[tuple[int, str], str] = {}
        self.used: set[str] = set()

    def fresh(self, base: str) -> str:
        name, k = base, 1
        while name in self.used:
            name, k = f"{base}_{k}", k + 1
        self.used.add(name)
        return name

    @staticmethod
    def layout_of(t: TflTensor, layout: str | None = None) -> str:
        return "plain" if len(t.shape) != 4 else (layout or "nchw")

    @staticmethod
    def shape_in(t: TflTensor, layout: str) -> tuple[int, ...]:
        return tuple(t.shape[p] for p in NCHW) if layout == "nchw" and len(t.shape) == 4 else t.shape

    def set(self, i: int, layout: str, name: str) -> None:
        self._names[(i, layout)] = name

    def has(self, i: int) -> bool:
        return any((i, lay) in self._names for lay in ("nchw", "plain"))

    def get(self, i: int, layout: str | None = None) -> str:
        t = self.model.tensors[i]
        layout = self.layout_of(t, layout)
        if (i, layout) in self._names:
            return self._names[(i, layout)]
        other = "plain" if layout == "nchw" else "nchw"
        if (i, other) not in self._names:
            raise UnsupportedModelError(f"tensor '{t.name}' is read before anything computes it")
        name = self._transpose(self._names[(i, other)], t, layout)
        self._names[(i, layout)] = name
        return name


def tflite_padding(options: dict, hw, kernel, strides, dilations) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) as TFLite pads SAME (the odd pixel after) or VALID."""
    from edgecomp.quant import tflite_arith as A

    padding = A.PAD_SAME if options.get("Padding", 0) == 0 else A.PAD_VALID
    pads = []
    for size, k, s, d in zip(hw, kernel, strides, dilations, strict=True):
        out = A.compute_out_size(padding, size, k, s, d)
        before, odd = A.compute_padding_with_offset(s, d, size, k, out)
        pads.append((before, before + odd))
    (t, b), (left, r) = pads
    return t, left, b, r
