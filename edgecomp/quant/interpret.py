"""The integer reference: numpy execution of an IntGraph, each op by its own `reference` (the
arithmetic of fixedpoint.py). It defines the expected result of a quantized build, bit for bit."""

from __future__ import annotations

import numpy as np

from edgecomp.quant.ir import IntGraph


def run_int_graph(
    graph: IntGraph, inputs: list[np.ndarray], keep_all: bool = False
) -> list[np.ndarray] | dict:
    """Execute `graph`; returns the outputs (or every tensor, with keep_all)."""
    env: dict[str, np.ndarray] = dict(zip(graph.inputs, inputs, strict=True))
    for op in graph.ops:
        out = graph.tensors[op.output]
        env[op.output] = op.reference([env[i] for i in op.inputs], out.dtype).reshape(out.shape)
    return env if keep_all else [env[o] for o in graph.outputs]
