"""The int8 element-wise Add micro-kernel (add_s8): each input's rescaled value from a 256-entry
table, summed, requantized in the SMMLA form. Also the epilogue a convolution applies when the
Add is fused into it."""

from __future__ import annotations

import numpy as np

from edgecomp.lower.kernels.requant import dbl31_form, smmla_form
from edgecomp.lower.model import MicroKernel
from edgecomp.quant.fixedpoint import requant_by
from edgecomp.quant.ir import IntGraph
from edgecomp.quant.ops import Add


def add_tables(op: Add) -> tuple[np.ndarray, np.ndarray]:
    """Each addend's rescaled value for all 256 int8 inputs — requant((q - zp) << left_shift, M, n),
    the first half of the integer Add (quant/ops/elementwise.py) — so the kernel looks them up
    (a subtraction's second table negated)."""
    q = np.arange(-128, 128, dtype=np.int64)
    tables = [requant_by(op.rounding, (q - zp) << op.left_shift, m, n)
              for zp, m, n in ((op.a_zp, op.a_mult, op.a_shift), (op.b_zp, op.b_mult, op.b_shift))]  # fmt: skip
    return tables[0].astype(np.int32), (-tables[1] if op.subtract else tables[1]).astype(np.int32)


def same_shapes(op: Add, graph: IntGraph) -> bool:
    return len({graph.tensors[n].shape for n in (*op.inputs, op.output)}) == 1


def add_s8(index: int, op: Add, graph: IntGraph):
    ta, tb = add_tables(op)
    if max(np.abs(ta).max(), np.abs(tb).max()) >= 1 << 30:
        return None  # the kernel sums the two table values in int32
    size = int(np.prod(graph.tensors[op.output].shape))
    if op.rounding == "double":  # TFLite's output requantization
        reach = int(np.abs(ta).max() + np.abs(tb).max())
        form = dbl31_form(op.mult, op.shift, int(op.out_zp), (-reach, reach))
        if form is not None:
            (m,), (addend,), (e,) = form
            p = {"size": size, "mult": int(m), "addend": int(addend), "sh": int(e), "fn": "ec_add_s8_dbl31"}
        else:
            p = {"size": size, "mult": int(op.mult), "addend": int(op.out_zp), "sh": int(op.shift), "fn": "ec_add_s8_dbl"}
        p.update(lo=int(op.lo), hi=int(op.hi))
        return MicroKernel(f"ec_mk{index}_add_s8", "kernels/add_s8.c.j2", tuple(sorted(p.items())), 0, 0,
                           (0, 1)), [ta, tb]  # fmt: skip
    reach = int(np.abs(ta).max() + np.abs(tb).max())
    form = smmla_form(op.mult, op.shift, int(op.out_zp), int(op.lo), int(op.hi), (-reach, reach))
    if form is None:
        return None
    p = {"size": size, "mult": int(form[0][0]), "addend": int(form[1][0]), "sh": int(form[2][0]),
         "lo": int(op.lo), "hi": int(op.hi)}  # fmt: skip
    return MicroKernel(f"ec_mk{index}_add_s8", "kernels/add_s8.c.j2", tuple(sorted(p.items())), 0, 0, (0, 1)), [ta, tb]
