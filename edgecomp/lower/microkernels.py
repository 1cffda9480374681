"""Hand-written int8 micro-kernels for convolutions and dense layers, chosen by pattern.

TVM's generic tensor expressions (qops.py) compute every integer op; for the ones that carry
nearly all the MACs — int8 Conv (groups=1), depthwise Conv and Gemm/MatMul — a Jinja-templated C
kernel (templates/kernels/) specialised on the layer's shapes is faster: it widens int8 pairs
with SXTB16 and multiplies-accumulates two at a time with SMLAD on cores with the DSP extension,
and uses the same arithmetic in portable C elsewhere (M3, host). The lowering emits a Relax
`call_dps_packed` to the kernel's symbol; the code generator renders its C.

Results are bit-identical to the TE kernels and the numpy reference: the same int32 sums, the
same single-rounding requantization (quant/fixedpoint.py), the same clamp.
"""

from __future__ import annotations

import numpy as np

from edgecomp.lower.model import MicroKernel
from edgecomp.quant.fixedpoint import requant
from edgecomp.quant.graph import IntGraph, QOp


def pack_pairs(w2d: np.ndarray) -> np.ndarray:
    """[rows, K] int8 -> [rows, K4] (K rounded up to 4, zero padded), each group of four stored
    as (w0, w2, w1, w3), so SXTB16 of a word gives the int16 pair (w0, w1) and SXTB16 of it
    rotated by 8 gives (w2, w3), matching an int16 column read as words."""
    rows, k = w2d.shape
    k4 = -(-k // 4) * 4
    padded = np.zeros((rows, k4), np.int8)
    padded[:, :k] = w2d
    return np.ascontiguousarray(padded.reshape(rows, k4 // 4, 4)[:, :, [0, 2, 1, 3]].reshape(rows, k4))


def pack_conv(w2d: np.ndarray) -> np.ndarray:
    """pack_pairs, then each pair of output channels interleaved word by word ([c0 k0..3][c1 k0..3]
    [c0 k4..7]...), so one LDRD fetches both channels' next four weights; an odd last channel
    stays as it is, after the pairs."""
    packed = pack_pairs(w2d)
    rows, k4 = packed.shape
    even = rows // 2 * 2
    pairs = packed[:even].reshape(rows // 2, 2, k4 // 4, 4).transpose(0, 2, 1, 3).reshape(-1)
    return np.ascontiguousarray(np.concatenate([pairs, packed[even:].reshape(-1)]))


def pack_conv_wide(w2d: np.ndarray) -> np.ndarray:
    """[rows, K] int8 -> int16, K padded to K4, each pair of output channels interleaved by groups
    of four ([c0 k0..3][c1 k0..3][c0 k4..7]...), in natural order within a group: one LDRD gives a
    channel's two int16 pairs, matching an int16 column read as words. An odd last channel after."""
    rows, k = w2d.shape
    k4 = -(-k // 4) * 4
    padded = np.zeros((rows, k4), np.int16)
    padded[:, :k] = w2d
    even = rows // 2 * 2
    pairs = padded[:even].reshape(rows // 2, 2, k4 // 4, 4).transpose(0, 2, 1, 3).reshape(-1)
    return np.ascontiguousarray(np.concatenate([pairs, padded[even:].reshape(-1)]))


# A convolution whose every weight is reused over at least this many output pixels keeps its
# weights as int16 (twice the flash): its inner loop then needs no SXTB16, 12 instead of 15
# instructions per 16 MACs. At 512 pixels that is >= ~100 instructions saved per added flash byte;
# below it the flash is better spent elsewhere (ResNet-8's 32x32 layers: +5 KB, -1 M instructions).
WIDE_MIN_PIXELS = 512

# Tile-sparse storage (a bitmask per group of four rows, then the nonzero 4x4 tiles) skips a zero
# tile outright but costs a bitmask walk per stored tile: it is used from about half the tiles zero.
SPARSE_MAX_DENSITY = 0.55


def _tile_density(w: np.ndarray) -> float:
    """Fraction of the 4x4 tiles (four rows, four weights) of w's first rows // 4 * 4 rows that hold
    a nonzero; 1.0 when there is no full group of four rows."""
    rows, k = w.shape
    full = rows // 4 * 4
    if full == 0 or k % 4:
        return 1.0
    return float(np.mean(np.any(w[:full].reshape(full // 4, 4, k // 4, 4) != 0, axis=(1, 3))))


def pack_tiles(w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[rows, K] int8 (K % 4 == 0) -> (bitmask uint32 [rows // 4, ceil(K/128)]: bit b of word j set
    when tile j*32+b of the group of four rows holds a nonzero; the nonzero tiles group after group,
    each as pack_dense lays out four rows' next four weights; the rows left over, as they are)."""
    rows, k = w.shape
    full = rows // 4 * 4
    tiles = w[:full].reshape(full // 4, 4, k // 4, 4).transpose(0, 2, 1, 3)  # [group, tile, row, 4]
    nz = np.any(tiles != 0, axis=(2, 3))
    words = -(-(k // 4) // 32)
    bits = np.zeros((full // 4, words * 32), bool)
    bits[:, : k // 4] = nz
    masks = (bits.reshape(full // 4, words, 32).astype(np.uint64) << np.arange(32, dtype=np.uint64)).sum(
        axis=2
    )
    return (masks.astype(np.uint32), np.ascontiguousarray(tiles[nz].reshape(-1).astype(np.int8)),
            np.ascontiguousarray(w[full:].astype(np.int8)))  # fmt: skip


def pack_dense(w: np.ndarray) -> np.ndarray:
    """[rows, K] int8 (K % 4 == 0) -> each group of four rows interleaved word by word ([r0 k0..3]
    [r1 k0..3][r2 k0..3][r3 k0..3][r0 k4..7]...); leftover rows after, as they are."""
    rows, k = w.shape
    full = rows // 4 * 4
    quads = w[:full].reshape(rows // 4, 4, k // 4, 4).transpose(0, 2, 1, 3).reshape(-1)
    return np.ascontiguousarray(np.concatenate([quads, w[full:].reshape(-1)]).astype(np.int8))


def _constant_output(
    lo_acc: int, hi_acc: int, mult: int, shift: int, zp: int, lo: int, hi: int
) -> int | None:
    """The channel's output when it is the same for every accumulator in [lo_acc, hi_acc] (a dead
    channel: tiny multiplier, or a bias that pins it to the clamp), else None. requant is monotonic.
    (fixedpoint.requant in Python ints: acc here may exceed int32, and acc * M overflow int64.)"""
    ends = [min(max(((v * mult + (1 << (shift - 1))) >> shift) + zp, lo), hi) for v in (lo_acc, hi_acc)]
    return ends[0] if ends[0] == ends[1] else None


def smmla_form(
    mult: np.ndarray, shift: np.ndarray, zp: int, lo: int, hi: int, acc_range: tuple[np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(M, addend, sh) such that clamp(((v * M + 2**(n-1)) >> n) + zp) == clamp((addend + ((v * M) >> 32))
    >> sh) for every v in acc_range — the requantization as one SMMLA and one shift (ec_dsp.h
    ec_requant_s8) — or None when a channel's n <= 32 or its addend could overflow int32 (the
    caller then uses the int64 definition, or for an Add keeps TVM's kernel). A channel whose
    output is constant over acc_range becomes M = 0, addend = that output, sh = 0."""
    mult, shift = np.atleast_1d(np.asarray(mult, np.int64)), np.atleast_1d(np.asarray(shift, np.int64))
    acc_lo, acc_hi = (np.broadcast_to(np.asarray(r, np.int64), mult.shape) for r in acc_range)
    const = [_constant_output(int(a), int(b), int(m), int(n), zp, lo, hi)
             for a, b, m, n in zip(acc_lo, acc_hi, mult, shift, strict=True)]  # fmt: skip
    is_const = np.array([c is not None for c in const])
    if not np.all(is_const | (shift > 32)):
        return None
    n = np.where(is_const, 33, shift)
    addend = (np.int64(1) << (n - 33)) + (np.int64(zp) << (n - 32))
    addend = np.where(is_const, [0 if c is None else c for c in const], addend)
    # |(v * M) >> 32| < 2**30 for int32 v and M < 2**31, so the sum stays inside int32.
    if np.any(np.abs(addend) >= 1 << 30):
        return None
    return np.where(is_const, 0, mult), addend, np.where(is_const, 0, n - 32)


def _requant_consts(a: dict, weight: np.ndarray) -> tuple[list[np.ndarray], str]:
    """(bias, per-channel pairs, per-channel shifts) of a layer's requantization and the C function
    that applies them: ec_requant_s8 with (M, addend) pairs in smmla_form where it applies (the
    accumulator of channel c lies within bias[c] +- 128 * sum |weight[c]|), else
    ec_requant_s8_int64 with (M, zero point) pairs and the shifts n (the definition, in int64)."""
    bias = np.asarray(a["bias"], np.int64)
    reach = 128 * np.abs(weight.reshape(weight.shape[0], -1).astype(np.int64)).sum(axis=1)
    zp = int(a["out_zp"])
    form = smmla_form(a["mult"], a["shift"], zp, int(a["lo"]), int(a["hi"]), (bias - reach, bias + reach))
    if form is None:
        mult, shift = np.asarray(a["mult"], np.int64), np.asarray(a["shift"], np.int64)
        form, fn = (mult, np.full(mult.shape, zp, np.int64), shift), "ec_requant_s8_int64"
    else:
        fn = "ec_requant_s8"
    mult, second, sh = form
    pairs = np.stack([mult, second], axis=1).reshape(-1)
    if fn == "ec_requant_s8" and q31_form_fits(bias - reach, bias + reach, mult, second):
        fn = "ec_requant_s8_q31"  # same results; the NEON kernels' three-instruction form (ec_neon.h)
    return [bias.astype(np.int32), pairs.astype(np.int32), sh.astype(np.int8)], fn


def q31_form_fits(acc_lo: np.ndarray, acc_hi: np.ndarray, mult: np.ndarray, addend: np.ndarray) -> bool:
    """Whether ((acc * M) >> 31) + 2 * addend stays inside int32 for every accumulator in range:
    then ec_neon.h's SQDMULH form of ec_requant_s8 is exact."""
    ends = [(np.asarray(a, np.int64) * np.asarray(mult, np.int64)) >> 31 for a in (acc_lo, acc_hi)]
    worst = np.maximum(np.abs(ends[0]), np.abs(ends[1])) + 2 * np.abs(np.asarray(addend, np.int64))
    return bool(np.all(worst < 2**31))


# Convolution kernels whose epilogue can apply a following residual Add (p.fuse_add).
FUSABLE = ("kernels/conv_s8.c.j2", "kernels/conv_neon_s8.c.j2")


def select(op: QOp, graph: IntGraph, index: int, then_add: QOp | None = None, simd: str = "none"):
    """(the micro-kernel for `op`, its constant arguments), or None to keep TVM's kernel.

    With `then_add` (an Add of op's output and a tensor computed earlier), the kernel applies that
    Add to each requantized output in its epilogue — the same arithmetic as the two ops — and
    takes the other addend as its last input; its output may overwrite that addend in place.
    """
    if then_add is not None:
        conv, add = select(op, graph, index, simd=simd), select(then_add, graph, 0)
        if conv is None or add is None or conv[0].template not in FUSABLE:
            return None
        (mk, consts), (add_mk, (ta, tb)) = conv, add
        add_p = {k: v for k, v in add_mk.params if k in ("mult", "addend", "sh", "lo", "hi")}
        conv_is_a = then_add.inputs[0] == op.output
        params = {**dict(mk.params), **{f"add_{k}": v for k, v in add_p.items()}, "fuse_add": 1}
        # Inputs: x, weights, bias, (M, addend) pairs, shifts, the conv result's and the residual's tables, residual.
        fused = MicroKernel(f"ec_mk{index}_conv_add_s8", mk.template, tuple(sorted(params.items())),
                            mk.scratch_bytes, mk.macs, (7,))  # fmt: skip
        return fused, [*consts, *((ta, tb) if conv_is_a else (tb, ta))]
    a = op.attrs
    x = graph.tensors[op.inputs[0]]
    y = graph.tensors[op.output]
    if any(graph.tensors[n].dtype != "int8" for n in (*op.inputs, op.output)):
        return None
    if op.kind == "add":
        return _add(index, a, int(np.prod(y.shape)))
    if op.kind not in ("conv", "dense"):
        return None
    rq, rq_fn = _requant_consts(a, a["weight"])
    clamp = {"lo": int(a["lo"]), "hi": int(a["hi"]), "rq": rq_fn}
    w = a["weight"]
    if op.kind == "dense":
        (n, k), cout = x.shape, w.shape[0]
        p = {"n": n, "k": k, "cout": cout, **clamp}
        density = _tile_density(w)
        if simd == "neon" and density > SPARSE_MAX_DENSITY:
            mk = MicroKernel(f"ec_mk{index}_dense_neon_s8", "kernels/dense_neon_s8.c.j2", tuple(sorted(p.items())),
                             0, n * cout * k)  # fmt: skip
            return mk, [np.ascontiguousarray(w.astype(np.int8)), *rq]
        if 0 < density <= SPARSE_MAX_DENSITY:
            masks, tiles, rest = pack_tiles(w)
            p.update(mask_words=masks.shape[1], tiles=tiles.size // 16, groups=cout // 4)
            macs = n * (tiles.size + rest.size)
            mk = MicroKernel(f"ec_mk{index}_dense_sparse_s8", "kernels/dense_sparse_s8.c.j2", tuple(sorted(p.items())),
                             2 * k, macs)  # fmt: skip
            return mk, [masks, tiles, rest if rest.size else np.zeros(1, np.int8), *rq]
        p["interleaved"] = int(k % 4 == 0)
        # Widening the input once (2K bytes of scratch) pays from a few rows of four on.
        p["widen_x"] = int(p["interleaved"] and cout >= 8)
        p["unroll"] = next(u for u in (16, 8, 4) if k % u == 0) if p["interleaved"] else 4
        weights = pack_dense(w) if p["interleaved"] else np.ascontiguousarray(w.astype(np.int8))
        mk = MicroKernel(f"ec_mk{index}_dense_s8", "kernels/dense_s8.c.j2", tuple(sorted(p.items())),
                         2 * k * p["widen_x"], n * cout * k)  # fmt: skip
        return mk, [weights, *rq]
    n, cin, h, wd = x.shape
    oh, ow = y.shape[2:]
    cout, cin_g, kh, kw = w.shape
    t, left, _, _ = a["pads"]
    params = {"n": n, "cin": cin, "h": h, "w": wd, "cout": cout, "oh": oh, "ow": ow, "kh": kh, "kw": kw,
              "sh": a["strides"][0], "sw": a["strides"][1], "dh": a["dilations"][0], "dw": a["dilations"][1],
              "pt": t, "pl": left, "pad_value": int(a["pad_value"]), **clamp}  # fmt: skip
    groups = a["groups"]
    if groups == 1:
        if simd == "neon":
            pointwise = kh == kw == 1 and params["sh"] == params["sw"] == 1 and (oh, ow) == (h, wd)
            return _conv_neon(index, {**params, "fuse_add": 0, "direct": int(pointwise)}, w, rq)
        return _conv(index, {**params, "fuse_add": 0}, w, rq)
    if groups == cin == cout and cin_g == 1:
        return _depthwise(index, params, w, a, rq, simd == "neon" and params["sw"] in (1, 2))
    return None  # grouped convolutions stay with TVM


def _conv(index: int, p: dict, w: np.ndarray, rq: list[np.ndarray]):
    k = p["cin"] * p["kh"] * p["kw"]
    p["k"], p["k4"] = k, -(-k // 4) * 4
    # The inner loop unrolled by the largest multiple of 4 up to 64 that divides K4 (all of K4 when
    # it is at most 64), so the loop's own instructions cost a few percent at most.
    p["unroll"] = max(u for u in range(4, 65, 4) if p["k4"] % u == 0)
    # Two int16 im2col columns (one output pixel each), word aligned.
    p["wide"] = int(p["oh"] * p["ow"] >= WIDE_MIN_PIXELS)
    macs = p["n"] * p["cout"] * p["oh"] * p["ow"] * k
    mk = MicroKernel(
        f"ec_mk{index}_conv_s8", "kernels/conv_s8.c.j2", tuple(sorted(p.items())), 2 * p["k4"] * 2, macs
    )
    w2d = w.reshape(w.shape[0], -1)
    return mk, [pack_conv_wide(w2d) if p["wide"] else pack_conv(w2d), *rq]


def pack_pointwise(w2d: np.ndarray) -> np.ndarray:
    """[cout, K] int8 -> [ceil(cout/4)][K][4]: for each row k of the matrix product, the weights of
    four output channels side by side (one lane each in conv_neon_s8.c.j2); missing channels zero."""
    cout, cin = w2d.shape
    c4 = -(-cout // 4) * 4
    padded = np.zeros((c4, cin), np.int8)
    padded[:cout] = w2d
    return np.ascontiguousarray(padded.reshape(c4 // 4, 4, cin).transpose(0, 2, 1).reshape(-1))


def _conv_neon(index: int, p: dict, w: np.ndarray, rq: list[np.ndarray]):
    k = p["cin"] * p["kh"] * p["kw"]
    macs = p["n"] * p["cout"] * p["oh"] * p["ow"] * k
    # Scratch: sixteen pixels' im2col columns, [K][16] int8.
    mk = MicroKernel(
        f"ec_mk{index}_conv_neon_s8", "kernels/conv_neon_s8.c.j2", tuple(sorted(p.items())), 16 * k, macs
    )
    return mk, [pack_pointwise(w.reshape(w.shape[0], -1)), *rq]


def _depthwise(index: int, p: dict, w: np.ndarray, a: dict, rq: list[np.ndarray], neon: bool = False):
    # One channel's plane, padded and widened to int16; its right edge rounded up so that the
    # kernel may read one value past the last window (its product is discarded). The NEON path
    # loads up to 24 values from a window's start (stride 2: VLD2 of 16, then the next 8 for the
    # third tap): 48 bytes of slack after the last row.
    hp = p["pt"] + p["h"] + int(a["pads"][2])
    wp = p["pl"] + p["w"] + int(a["pads"][3]) + 2
    taps = p["kh"] * p["kw"]
    p["hp"], p["wp"], p["neon"], p["taps8"] = hp, wp, int(neon), -(-taps // 8) * 8
    macs = p["n"] * p["cout"] * p["oh"] * p["ow"] * taps
    mk = MicroKernel(
        f"ec_mk{index}_dwconv_s8", "kernels/dwconv_s8.c.j2", tuple(sorted(p.items())), hp * wp * 2 + 48, macs
    )
    weights = w.reshape(w.shape[0], -1).astype(np.int16)
    if not neon:
        return mk, [weights, *rq]
    lanes = np.zeros((weights.shape[0], p["taps8"]), np.int16)
    lanes[:, :taps] = weights
    return mk, [weights, *rq, lanes]


def add_tables(a: dict) -> tuple[np.ndarray, np.ndarray]:
    """Each addend's rescaled value for all 256 int8 inputs — requant((q - zp) << left_shift, M, n),
    the first half of the integer Add (quant/reference.py) — so the kernel looks them up."""
    q = np.arange(-128, 128, dtype=np.int64)
    tables = [requant((q - a[f"{s}_zp"]) << a["left_shift"], a[f"{s}_mult"], a[f"{s}_shift"]) for s in "ab"]
    return tables[0].astype(np.int32), tables[1].astype(np.int32)


def _add(index: int, a: dict, size: int):
    ta, tb = add_tables(a)
    if max(np.abs(ta).max(), np.abs(tb).max()) >= 1 << 30:
        return None  # the kernel sums the two table values in int32
    reach = int(np.abs(ta).max() + np.abs(tb).max())
    form = smmla_form(a["mult"], a["shift"], int(a["out_zp"]), int(a["lo"]), int(a["hi"]), (-reach, reach))
    if form is None:
        return None
    p = {"size": size, "mult": int(form[0][0]), "addend": int(form[1][0]), "sh": int(form[2][0]),
         "lo": int(a["lo"]), "hi": int(a["hi"])}  # fmt: skip
    return MicroKernel(
        f"ec_mk{index}_add_s8", "kernels/add_s8.c.j2", tuple(sorted(p.items())), 0, 0, (0, 1)
    ), [ta, tb]
