"""Magnitude pruning in blocks: zero the smallest blocks of Conv/Gemm/MatMul weights.

Preserves the graph and every shape; changes the function. The zeros save flash and time only
where a kernel stores the weights compressed (the int8 dense micro-kernel's tile-sparse variant).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from edgecomp.passes.base import PassResult
from edgecomp.passes.channels import attr

SPARSE_BLOCK = 4  # weights zeroed four at a time along the reduction axis: one SMLAD pair each


def magnitude_prune(model: onnx.ModelProto, sparsity: float, tile_rows: int = 4) -> PassResult:
    """Zero the `sparsity` fraction of each Conv/Gemm/MatMul weight's blocks, smallest RMS first.
    A block is SPARSE_BLOCK consecutive weights along the reduction axis; in Gemm/MatMul weights,
    the same block of `tile_rows` consecutive output rows together (the dense kernel's row group,
    lower/kernels/dense.py TILE_ROWS: a zero tile is skipped outright), rows left over after the
    last group one by one.

    Preserves the graph and every shape; changes the function. The zeros only save flash where a
    kernel stores the weights compressed: the int8 dense micro-kernel does (a tile bitmask plus the
    nonzero tiles) when at most lower/kernels/dense.py SPARSE_MAX_DENSITY of a layer's tiles are left.
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    inits = {i.name: i for i in model.graph.initializer}
    layers = []
    for node in model.graph.node:
        if (
            node.op_type not in ("Conv", "Gemm", "MatMul")
            or len(node.input) < 2
            or node.input[1] not in inits
        ):
            continue
        w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        if node.op_type == "Conv":
            rows = w.reshape(w.shape[0], -1)
        elif node.op_type == "Gemm" and attr(node, "transB", 0):
            rows = w
        else:
            rows = w.T  # [K, N] -> rows of K
        n_rows, k = rows.shape
        if k % SPARSE_BLOCK or rows.size < 64:
            continue
        tile = tile_rows if node.op_type != "Conv" else 1
        grouped = n_rows // tile * tile
        # One unit per tile (rows grouped by `tile`) and per block of a left-over row; RMS ranks both.
        units = [rows[:grouped].reshape(grouped // tile, tile, k // SPARSE_BLOCK, SPARSE_BLOCK).transpose(0, 2, 1, 3),
                 rows[grouped:].reshape(n_rows - grouped, k // SPARSE_BLOCK, 1, SPARSE_BLOCK)]  # fmt: skip
        rms = np.concatenate(
            [np.sqrt((u.astype(np.float64) ** 2).mean(axis=(2, 3))).reshape(-1) for u in units]
        )
        n_zero = int(round(rms.size * sparsity))
        if n_zero == 0:
            continue
        keep = np.ones(rms.size, bool)
        keep[np.argsort(rms, kind="stable")[:n_zero]] = False
        split = units[0].shape[0] * units[0].shape[1]
        parts = [
            (u * m.reshape(u.shape[:2])[..., None, None])
            for u, m in zip(units, (keep[:split], keep[split:]), strict=True)
        ]
        pruned = np.concatenate(
            [parts[0].transpose(0, 2, 1, 3).reshape(grouped, k), parts[1].reshape(n_rows - grouped, k)]
        )
        if node.op_type == "Conv":
            new = pruned.reshape(w.shape)
        elif node.op_type == "Gemm" and attr(node, "transB", 0):
            new = pruned
        else:
            new = pruned.T
        inits[node.input[1]].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(new), node.input[1]))
        layers.append({"node": node.name or node.output[0], "blocks": int(rms.size), "zeroed": n_zero,
                       "block_shape": [tile, SPARSE_BLOCK]})  # fmt: skip
    return PassResult(model, {
        "sparsity": sparsity,
        "block": SPARSE_BLOCK,
        "tile_rows": tile_rows,
        "layers": layers,
    })
