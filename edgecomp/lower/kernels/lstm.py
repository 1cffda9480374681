"""The integer LSTM's and GRU's C kernels (templates/kernels/lstm_s8.c.j2, gru_s8.c.j2): the recurrence is a loop over
steps with state, clearer in C than as tensor expressions, so this is the op's only kernel (as
TFLite's softmax). Portable C on every target."""

from __future__ import annotations

import numpy as np

from edgecomp.lower.model import MicroKernel
from edgecomp.quant.ir import IntGraph
from edgecomp.quant.ops.gru import RESULTS as GRU_RESULTS
from edgecomp.quant.ops.gru import Gru
from edgecomp.quant.ops.lstm import RESULTS, Lstm


def lstm_s8(index: int, op: Lstm, graph: IntGraph):
    hidden, n_in = op.hidden, op.w.shape[1]
    seq = int(np.prod(graph.tensors[op.inputs[0]].shape)) // n_in
    p = {"seq": seq, "dirs": len(op.reverse), "reverse_mask": sum(int(r) << d for d, r in enumerate(op.reverse)), "n_in": n_in, "hidden": hidden, "has_h0": int(op.has_h0), "has_c0": int(op.has_c0),
         "h_zp": op.h_zp, "out_mult": op.out_mult, "out_shift": op.out_shift, "cell_shift": op.cell_shift,
         "result": RESULTS.index(op.result)}  # fmt: skip
    rows = np.stack([op.bias_x, op.mult_x, op.shift_x, op.bias_h, op.mult_h, op.shift_h], axis=1)
    tables = np.concatenate([op.sigmoid, op.tanh, op.tanh_cell])
    mk = MicroKernel(f"ec_mk{index}_lstm_s8", "kernels/lstm_s8.c.j2", tuple(sorted(p.items())),
                     19 * hidden, len(op.reverse) * seq * 4 * hidden * (n_in + hidden))  # fmt: skip
    consts = [np.ascontiguousarray(op.w), np.ascontiguousarray(op.r), np.ascontiguousarray(rows.astype(np.int32)),
              np.ascontiguousarray(tables.astype(np.int16))]  # fmt: skip
    return mk, consts


def gru_s8(index: int, op: Gru, graph: IntGraph):
    hidden, n_in = op.hidden, op.w.shape[1]
    seq = int(np.prod(graph.tensors[op.inputs[0]].shape)) // n_in
    p = {"seq": seq, "dirs": len(op.reverse), "reverse_mask": sum(int(r) << d for d, r in enumerate(op.reverse)),
         "n_in": n_in, "hidden": hidden, "has_h0": int(op.has_h0), "lbr": int(op.linear_before_reset),
         "h_zp": op.h_zp, "q_mult": op.q_mult, "q_shift": op.q_shift, "out_mult": op.out_mult,
         "out_shift": op.out_shift, "result": GRU_RESULTS.index(op.result)}  # fmt: skip
    rows = np.stack([op.bias_x, op.mult_x, op.shift_x, op.bias_h, op.mult_h, op.shift_h], axis=1)
    tables = np.concatenate([op.sigmoid, op.tanh])
    scratch = 4 * 3 * hidden + hidden + hidden % 2 + 2 * hidden
    mk = MicroKernel(f"ec_mk{index}_gru_s8", "kernels/gru_s8.c.j2", tuple(sorted(p.items())), scratch,
                     len(op.reverse) * seq * 3 * hidden * (n_in + hidden))  # fmt: skip
    consts = [np.ascontiguousarray(op.w), np.ascontiguousarray(op.r), np.ascontiguousarray(rows.astype(np.int32)),
              np.ascontiguousarray(tables.astype(np.int16))]  # fmt: skip
    return mk, consts
