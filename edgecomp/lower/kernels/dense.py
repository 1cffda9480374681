"""Dense-layer micro-kernels: four interleaved rows per step (dense_s8), the same with int16 weight
records (dense_w16_s8, --optimize speed), tile-sparse (dense_sparse_s8) and NEON (dense_neon_s8)."""

from __future__ import annotations

import numpy as np

from edgecomp.lower.kernels.packing import pack_dense, pack_dense_w16, pack_tiles, tile_density
from edgecomp.lower.kernels.requant import requant_consts
from edgecomp.lower.model import MicroKernel
from edgecomp.quant.ir import IntGraph
from edgecomp.quant.ops import Dense

# Tile-sparse storage (a bitmask per group of four rows, then the nonzero 4x4 tiles) skips a zero
# tile outright but costs a bitmask walk per stored tile: it is used from about half the tiles zero.
SPARSE_MAX_DENSITY = 0.55
TILE_ROWS = 4  # rows multiplied together: a zero 4x4 tile (four rows x four weights) is skipped


def _params(op: Dense, graph: IntGraph) -> tuple[dict, list[np.ndarray]]:
    (n, k), cout = graph.tensors[op.inputs[0]].shape, op.weight.shape[0]
    rq, rq_fn = requant_consts(op)
    return {"n": n, "k": k, "cout": cout, "lo": int(op.lo), "hi": int(op.hi), "rq": rq_fn}, rq


def is_sparse(op: Dense, graph: IntGraph) -> bool:
    return 0 < tile_density(op.weight) <= SPARSE_MAX_DENSITY


def is_not_sparse(op: Dense, graph: IntGraph) -> bool:
    return tile_density(op.weight) > SPARSE_MAX_DENSITY


def dense_neon_s8(index: int, op: Dense, graph: IntGraph):
    p, rq = _params(op, graph)
    mk = MicroKernel(f"ec_mk{index}_dense_neon_s8", "kernels/dense_neon_s8.c.j2", tuple(sorted(p.items())), 0,
                     p["n"] * p["cout"] * p["k"])  # fmt: skip
    return mk, [np.ascontiguousarray(op.weight.astype(np.int8)), *rq]


def dense_sparse_s8(index: int, op: Dense, graph: IntGraph):
    p, rq = _params(op, graph)
    masks, tiles, rest = pack_tiles(op.weight)
    p.update(mask_words=masks.shape[1], tiles=tiles.size // 16, groups=p["cout"] // 4)
    macs = p["n"] * (tiles.size + rest.size)
    mk = MicroKernel(f"ec_mk{index}_dense_sparse_s8", "kernels/dense_sparse_s8.c.j2", tuple(sorted(p.items())),
                     2 * p["k"], macs)  # fmt: skip
    return mk, [masks, tiles, rest if rest.size else np.zeros(1, np.int8), *rq]


def dense_s8(index: int, op: Dense, graph: IntGraph):
    p, rq = _params(op, graph)
    k, cout = p["k"], p["cout"]
    p["interleaved"] = int(k % 4 == 0)
    # Widening the input once (2K bytes of scratch) pays from a few rows of four on.
    p["widen_x"] = int(p["interleaved"] and cout >= 8)
    p["unroll"] = next(u for u in (16, 8, 4) if k % u == 0) if p["interleaved"] else 4
    weights = pack_dense(op.weight) if p["interleaved"] else np.ascontiguousarray(op.weight.astype(np.int8))
    mk = MicroKernel(f"ec_mk{index}_dense_s8", "kernels/dense_s8.c.j2", tuple(sorted(p.items())),
                     2 * k * p["widen_x"], p["n"] * cout * k)  # fmt: skip
    return mk, [weights, *rq]


def dense_w16_s8(index: int, op: Dense, graph: IntGraph):
    """dense_s8 with its weights stored as int16 records (twice the flash): each step of four MACs
    per row is one LDRD of weights and two SMLADs, no SXTB16 (--optimize speed). K is padded to a
    multiple of 4 with zero weights; the input is widened once into scratch (2 * K4 bytes). Fewer
    than four rows do not repay the widening (VWW's 256 x 2 classifier: +280 instructions): dense_s8."""
    p, rq = _params(op, graph)
    if p["cout"] < 4:
        return dense_s8(index, op, graph)
    k4 = -(-p["k"] // 4) * 4
    p.update(k4=k4, kq=p["k"] // 4 * 4, mode="w16", unroll=next(u for u in (4, 2, 1) if k4 // 4 % u == 0))
    mk = MicroKernel(f"ec_mk{index}_dense_w16_s8", "kernels/dense_w16_s8.c.j2", tuple(sorted(p.items())),
                     2 * k4, p["n"] * p["cout"] * p["k"])  # fmt: skip
    return mk, [pack_dense_w16(op.weight), *rq]
