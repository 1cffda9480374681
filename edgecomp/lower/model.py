"""The lowered model: what the code generator needs, with no TVM objects in it."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Tensor:
    """One tensor of the call sequence.

    kind is "input", "output", "const" or "intermediate"; `data` is set for consts only.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    kind: str
    data: np.ndarray | None = field(default=None, compare=False, repr=False)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


@dataclass(frozen=True)
class MicroKernel:
    """A templated C kernel (templates/<template>) in place of a TVM kernel (see lower/kernels/).

    Its C signature is `void symbol(const void *in0, ..., void *out, void *scratch)`.
    """

    symbol: str
    template: str
    params: tuple[tuple[str, int], ...]  # shapes and constants the template is specialised on
    scratch_bytes: int
    macs: int
    inplace: tuple[int, ...] = ()  # inputs whose buffer the output may take (elementwise kernels)
    variant: str = ""  # the kernel variant (lower/kernels/ VARIANTS) it was made by


@dataclass(frozen=True)
class Call:
    """One kernel invocation: `symbol(args...)`, inputs first, then the outputs it writes."""

    kernel: str  # the fused TIR function's name
    symbol: str  # the C function TVM generated for it
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    workspace_bytes: int  # scratch the kernel requests through TVMBackendAllocWorkspace
    macs: int
    micro: MicroKernel | None = None  # set: a templated kernel with a plain C signature


@dataclass(frozen=True)
class LoweredModel:
    kernels_c: str  # TVM's C for every kernel, TVM headers stripped (see templates/ec_tvm_shim.h)
    tensors: dict[str, Tensor]
    calls: tuple[Call, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    qparams: dict[str, tuple[float, int]] = field(default_factory=dict)  # integer I/O: (scale, zero point)
    # tensor -> the model tensor (ONNX, or integer graph) whose value it holds, where known: what
    # `edgecomp validate` compares it with
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def macs(self) -> int:
        return sum(c.macs for c in self.calls)

    @property
    def params(self) -> int:
        return sum(t.size for t in self.tensors.values() if t.kind == "const")
