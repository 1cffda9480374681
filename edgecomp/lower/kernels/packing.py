"""Weight layouts of the micro-kernels: how each variant wants its int8 weights in flash."""

from __future__ import annotations

import numpy as np


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


def tile_density(w: np.ndarray) -> float:
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


def pack_dense_w16(w: np.ndarray) -> np.ndarray:
    """[rows, K] int8 -> int16 records for dense_w16_s8: K zero-padded to K4 (a multiple of 4), each
    group of four weights in SXTB16 lane order (k0, k2, k1, k3) like ec_widen_pairs's input; each
    group of four rows interleaved by groups ([r0 g0][r1 g0][r2 g0][r3 g0][r0 g1]...: one LDRD per
    row and step), leftover rows after, one row after the other."""
    rows, k = w.shape
    k4 = -(-k // 4) * 4
    padded = np.zeros((rows, k4), np.int16)
    padded[:, :k] = w
    lanes = padded.reshape(rows, k4 // 4, 4)[:, :, [0, 2, 1, 3]].reshape(rows, k4)
    return pack_dense(lanes).astype(np.int16)  # dense_s8's row interleave; the values are int8


def pack_pointwise(w2d: np.ndarray) -> np.ndarray:
    """[cout, K] int8 -> [ceil(cout/4)][K][4]: for each row k of the matrix product, the weights of
    four output channels side by side (one lane each in conv_neon_s8.c.j2); missing channels zero."""
    cout, cin = w2d.shape
    c4 = -(-cout // 4) * 4
    padded = np.zeros((c4, cin), np.int8)
    padded[:cout] = w2d
    return np.ascontiguousarray(padded.reshape(c4 // 4, 4, cin).transpose(0, 2, 1).reshape(-1))
