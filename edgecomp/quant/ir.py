"""The integer graph: quantized tensors and typed integer ops.

An `IntGraph` is what a quantized build compiles and what its expected outputs are computed from.
Each op kind is a frozen dataclass whose fields are that op's data (as TFLite Micro keeps one
OpData per op, shared by every kernel variant), checked when the op is made. An op kind lives in
one module of quant/ops/: its dataclass, its numpy reference (`reference`, the definition of its
result bit for bit) and the ONNX handler that builds it from a QDQ pattern (quant/extract.py calls
it). lower/ turns ops into TVM kernels (qops.py) or templated micro-kernels (kernels.py).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar

import numpy as np

from edgecomp.quant.fixedpoint import ROUNDINGS, requant_by


@dataclass(frozen=True)
class QTensor:
    name: str
    shape: tuple[int, ...]
    dtype: str  # "int8", "int16" (quantized) or "float32" (model I/O)
    scale: float = 1.0
    zero_point: int = 0
    float_name: str = ""  # the float tensor it quantizes, for per-layer error reports


@dataclass(frozen=True, kw_only=True, eq=False)
class IntOp:
    """One integer op: reads `inputs`, writes `output` (tensor names of the graph)."""

    kind: ClassVar[str]  # also the TVM kernel's name hint ("q" + kind)
    inputs: tuple[str, ...]
    output: str
    node: str = ""  # the ONNX node it came from

    def reference(self, xs: list[np.ndarray], dtype: str) -> np.ndarray:
        """The op's exact result for inputs `xs`, as an array of `dtype` (the output's)."""
        raise NotImplementedError

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check the op's data (types, shapes, ranges); ValueError names what is wrong."""

    def _require(self, ok: bool, what: str) -> None:
        if not ok:
            raise ValueError(f"{type(self).__name__} op for node '{self.node}': {what}")


@dataclass(frozen=True)
class Rescale:
    """v -> requant(v - in_zp, mult, shift) + out_zp: a tensor moved to another scale and zero point
    (identity when both are the same). `rounding` "double": TFLite's (an int16 QUANTIZE's Requantize)."""

    mult: int
    shift: int
    in_zp: int
    out_zp: int
    rounding: str = "single"  # fixedpoint.ROUNDINGS

    @property
    def is_identity(self) -> bool:
        return self.mult == 1 << 30 and self.shift == 30 and self.in_zp == self.out_zp

    def apply(self, v: np.ndarray) -> np.ndarray:
        return requant_by(self.rounding, v.astype(np.int64) - self.in_zp, self.mult, self.shift) + self.out_zp


def clamp(v: np.ndarray, lo: int, hi: int, dtype: str) -> np.ndarray:
    return np.clip(v, lo, hi).astype(dtype)


@dataclass(frozen=True)
class IntGraph:
    tensors: dict[str, QTensor]
    ops: tuple[IntOp, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    @property
    def params(self) -> int:
        """Elements of the weights and biases."""
        return sum(op.weight.size + op.bias.size for op in self.ops if isinstance(op, LinearOp))

    @property
    def weight_bytes(self) -> int:
        """Bytes of the weights as stored: one per int8 weight, one per two int4 weights."""
        return sum(-(-op.weight.size * op.weight_bits // 8) for op in self.ops if isinstance(op, LinearOp))

    def consumers(self) -> dict[str, list[IntOp]]:
        result: dict[str, list[IntOp]] = {}
        for op in self.ops:
            for i in op.inputs:
                result.setdefault(i, []).append(op)
        return result


OPS: dict[str, type[IntOp]] = {}  # kind -> op class, filled by quant/ops/


def register(cls: type[IntOp]) -> type[IntOp]:
    """Class decorator: make an op kind known (by its `kind`)."""
    if cls.kind in OPS and OPS[cls.kind] is not cls:
        raise ValueError(f"two integer op classes have kind '{cls.kind}'")
    OPS[cls.kind] = cls
    return cls


def int_array(value, dtype) -> np.ndarray:
    """A read-only contiguous copy of `value` as `dtype` (op data never changes after extraction)."""
    arr = np.ascontiguousarray(np.asarray(value, dtype=dtype))
    arr.flags.writeable = False
    return arr


def op_fields(op: IntOp) -> dict:
    """The op's data as a dict (reports, debugging)."""
    return {f.name: getattr(op, f.name) for f in fields(op)}


@dataclass(frozen=True, kw_only=True, eq=False)
class LinearOp(IntOp):
    """An op that multiplies by constant int8 weights ([out channels, ...]) and requantizes each
    output channel: acc + bias -> requant(., mult[c], shift[c]) + out_zp, clamped to [lo, hi].

    `weight_bits` 4: the weights are int4 (symmetric per output channel, in [-8, 7]). They are
    kept here as int8 values, so the reference is the same arithmetic; only the constants a build
    emits are packed two per byte (lower/kernels/int4.py)."""

    weight: np.ndarray  # int8
    bias: np.ndarray  # int32 (int64 for int16 inputs, whose folded zero point term can exceed int32)
    mult: np.ndarray  # int64, per output channel
    shift: np.ndarray  # int64, per output channel
    out_zp: int
    lo: int
    hi: int
    rounding: str = "single"  # fixedpoint.ROUNDINGS: "double" for TFLite's arithmetic
    weight_bits: int = 8  # 4: int4 weights (values in [-8, 7]), packed two per byte when emitted

    def validate(self) -> None:
        n = self.weight.shape[0]
        self._require(self.weight_bits in (4, 8), f"weight_bits must be 4 or 8, not {self.weight_bits}")
        if self.weight_bits == 4 and self.weight.size:
            self._require(int(self.weight.min()) >= -8 and int(self.weight.max()) <= 7,
                          "int4 weights must lie in [-8, 7]")  # fmt: skip
        self._require(self.rounding in ROUNDINGS, f"unknown rounding '{self.rounding}'")
        self._require(self.weight.dtype == np.int8, f"weights must be int8, not {self.weight.dtype}")
        self._require(self.bias.dtype in (np.int32, np.int64), f"bias must be int32/int64, not {self.bias.dtype}")
        for name in ("bias", "mult", "shift"):
            self._require(getattr(self, name).shape == (n,), f"{name} needs one value per output channel ({n})")
        self._require(bool(np.all(self.shift >= 1)), "shifts must be >= 1")
        self._require(self.lo <= self.hi, f"clamp [{self.lo}, {self.hi}] is empty")

    def requantize(self, acc: np.ndarray, axis_shape: tuple[int, ...], dtype: str) -> np.ndarray:
        """acc (int64, channels along the axis that `axis_shape` (-1 there, 1 elsewhere) marks)."""
        acc = acc + self.bias.astype(np.int64).reshape(axis_shape)
        y = requant_by(self.rounding, acc, self.mult.reshape(axis_shape), self.shift.reshape(axis_shape)) + self.out_zp
        return clamp(y, self.lo, self.hi, dtype)
