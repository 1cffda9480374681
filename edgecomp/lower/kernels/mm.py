"""The blocked int8 matrix product of the Cortex-M DSP convolution kernels (conv_mm_s8.c.j2):
column orders, weight streams, requantization constants and the weights/scratch trade-off.

A convolution is Y[co, p] = requant(bias[co] + sum_k W[co, k] X[k, p]). The kernel multiplies two
output channels by two output pixels per step, four k at a time: X comes from an int16 im2col block
in scratch, laid out per pixel pair and group of four k as [p0 k0..3][p1 k0..3] (one LDM of four
words), W from a per-channel-pair *record*:

    [b0 b0 b1 b1] int32 | G groups: [c0 k0..3][c1 k0..3] | [M0 D0 M1 D1] int32 | [s0 s1] int32

with the group as int16 (mode "w16": one LDM of four words, 10 instructions per 16 MACs) or as
int8 (mode "w8": one LDRD and four SXTB16, 14 per 16). Records live in flash; mode "w16s" keeps
w8 records in flash and widens one record at a time into scratch, where it serves a whole block of
pixels. Within a group the four k are in SXTB16's lane order (k0, k2), (k1, k3), so that an int8
word widens into two pairs that match the column's words; the order of the groups is the
im2col's (`slot_order`): natural k for most layers, and for 3-wide windows the one in which a
row's taps come out of one LDR and two SXTB16 (kernel rows r: (kx0, kx2) of r, of r+1, then
(kx1 of r, kx1 of r+1)).

Requantization: ec_dsp.h's SMMLA form (single rounding) or its dbl31 form (TFLite's). With int16
records in flash every channel's weights, bias and addend may be pre-scaled by 2^(S - s_c) so that
all channels share one shift S, which then folds into the SSAT (`common_shift`); the dbl31 form
keeps the accumulator doubled (weights and bias x 2) so that SMMLAR takes it as it is.
"""

from __future__ import annotations

import numpy as np

from edgecomp.quant.ir import IntGraph, IntOp

LANE = (0, 2, 1, 3)  # position of k % 4 within a group of four (SXTB16's lanes: k0, k2 | k1, k3)
# Weights kept as int16 in flash (twice their int8 size) when a layer reuses each weight over at
# least this many output pixels, or when they are small: then the products need no SXTB16.
WIDE_MIN_PIXELS = 512
WIDE_MAX_BYTES = 2048
# A layer without room for a block of this many pixels in scratch keeps its int8 weights (w8).
MIN_BLOCK = 8
MAX_BLOCK = 64
# The share of that room a kernel takes: the arena planner places buffers greedily, and a
# scratch as large as the whole gap left between the peaks pushes later tensors above it
# (ResNet-8: the full room raised the arena by 8 KB, half of it by nothing).
ROOM_SHARE = 0.5
MIN_SCRATCH = 0  # scratch allowed whatever the arena's peak (beyond the one pixel pair every layer needs)


def ceil_to(v: int, m: int) -> int:
    return -(-v // m) * m


def im2col_kind(p: dict) -> str:
    """Which im2col the template uses: "pw" (1x1, stride 1, unpadded: each pixel's column is its
    channels), "row3" (3-wide windows, dilation 1 across: a row's taps from one LDR), "row4"
    (4-wide, dilation 1 across: a row is a group), "generic" (element by element)."""
    if p["kh"] == p["kw"] == 1 and p["sh"] == p["sw"] == 1 and p["pt"] == p["pl"] == 0 and \
            (p["oh"], p["ow"]) == (p["h"], p["w"]):  # fmt: skip
        return "pw"
    if p["kw"] == 3 and p["dw"] == 1 and p["w"] >= 4:
        return "row3"
    if p["kw"] == 4 and p["dw"] == 1 and p["w"] >= 4:
        return "row4"
    return "generic"


def slot_order(kind: str, cin: int, kh: int, kw: int) -> np.ndarray:
    """For each position (slot) of an im2col column, the natural k = (ci * kh + ky) * kw + kx it
    holds, -1 for a zero. Slots come in groups of four, each in LANE order."""
    k = cin * kh * kw
    if kind != "row3":
        order = np.full(ceil_to(k, 4), -1, np.int64)
        for i in range(k):
            order[i // 4 * 4 + LANE[i % 4]] = i
        return order
    rows = cin * kh
    words: list[tuple[int, int]] = []
    for r in range(0, rows, 2):
        if r + 1 < rows:
            words += [(3 * r, 3 * r + 2), (3 * r + 3, 3 * r + 5), (3 * r + 1, 3 * r + 4)]
        else:
            words += [(3 * r, 3 * r + 2), (3 * r + 1, -1)]
    if len(words) % 2:
        words.append((-1, -1))
    # word m is the pair (slots 2m, 2m+1); a group's two words are (k0, k2) and (k1, k3)
    order = np.full(2 * len(words), -1, np.int64)
    for m, (lo, hi) in enumerate(words):
        g, half = divmod(m, 2)
        order[4 * g + 2 * half] = lo
        order[4 * g + 2 * half + 1] = hi
    return order


def _permuted(w2d: np.ndarray, order: np.ndarray) -> np.ndarray:
    """[rows, K] -> [rows, slots] in slot order, zeros where the order says -1."""
    out = np.zeros((w2d.shape[0], order.size), np.int64)
    real = order >= 0
    out[:, real] = w2d[:, order[real]]
    return out


def common_shift(w: np.ndarray, bias: np.ndarray, mult: np.ndarray, addend: np.ndarray, sh: np.ndarray):
    """(S, d) such that scaling channel c's weights, bias and addend by 2^d[c] gives every channel
    the shift S (SMMLA form: floor((addend 2^32 + acc M) / 2^(32+s)) is unchanged when acc and
    addend are both multiplied by 2^(S-s)), or None when a scaled value would leave its type:
    int16 weights, |acc| < 2^31, |addend| < 2^30. Constant channels (M = 0) only scale their addend."""
    live = mult != 0
    s_max = int(sh[live].max()) if live.any() else 0
    d = np.where(live, s_max - sh, 0).astype(np.int64)
    reach = np.abs(bias).astype(np.int64) + 128 * np.abs(w).sum(axis=1)
    if np.any((np.abs(w).max(axis=1) << d) > 32768) or np.any(reach << d >= 1 << 31):
        return None
    scaled_addend = np.where(live, addend << d, addend << s_max)
    if np.any(np.abs(scaled_addend) >= 1 << 30):
        return None
    return s_max, d, scaled_addend


def records(w2d: np.ndarray, bias: np.ndarray, mult: np.ndarray, second: np.ndarray, shifts: np.ndarray | None,
            order: np.ndarray, wide: bool) -> np.ndarray:  # fmt: skip
    """The channel-pair records as one byte stream (see the module docstring); an odd last channel
    gets a zero partner. `second` is the addend (or zero point); `shifts` None: a common shift."""
    rows = w2d.shape[0]
    pairs = -(-rows // 2)
    pad = 2 * pairs - rows
    w = np.concatenate([_permuted(w2d, order), np.zeros((pad, order.size), np.int64)])
    b, m, d = (np.concatenate([np.asarray(a, np.int64), np.zeros(pad, np.int64)]) for a in (bias, mult, second))
    g = order.size // 4
    out = []
    for j in range(pairs):
        a, c = 2 * j, 2 * j + 1
        head = np.array([b[a], b[a], b[c], b[c]], np.int32).tobytes()
        groups = np.stack([w[a].reshape(g, 4), w[c].reshape(g, 4)], axis=1)  # [g][2][4]
        if wide:
            body = groups.astype(np.int16).tobytes()
        else:  # int8 words whose SXTB16 / SXTB16 ROR 8 give (slot0, slot1) / (slot2, slot3)
            body = groups[:, :, [0, 2, 1, 3]].astype(np.int8).tobytes()
        tail = np.array([m[a], d[a], m[c], d[c]], np.int32).tobytes()
        if shifts is not None:
            s = np.concatenate([np.asarray(shifts, np.int64), np.zeros(pad, np.int64)])
            tail += np.array([s[a], s[c]], np.int32).tobytes()
        out.append(head + body + tail)
    return np.frombuffer(b"".join(out), np.int32).copy()


def _fused_into_add(graph: IntGraph) -> set[str]:
    """Outputs of convolutions whose only reader is an Add: the kernel applies the Add in its
    epilogue when the Add's other input is computed before it (kernels.choose), so the
    convolution's own result never takes arena memory."""
    from edgecomp.quant.ops import Add, Conv

    users = graph.consumers()
    ready = set(graph.inputs)
    fused: set[str] = set()
    for op in graph.ops:
        add = users.get(op.output, [])
        if isinstance(op, Conv) and op.output not in graph.outputs and len(add) == 1 and isinstance(add[0], Add):
            others = [n for n in add[0].inputs if n != op.output]
            if len(others) == 1 and others[0] in ready:
                fused.add(op.output)
        ready.add(op.output)
    return fused


def _in_place(op: IntOp, graph: IntGraph, fused: set[str]) -> str | None:
    """The input whose buffer `op`'s output will likely take (the kernels that allow it: pointwise
    and depthwise convolutions that do not grow, elementwise Adds: the residual when the other
    addend is a convolution fused into it; patch-based execution's Crop and Place), else None."""
    from edgecomp.quant.ops import Add, Conv, Crop, Place

    if not op.inputs:
        return None
    if isinstance(op, Crop) or isinstance(op, Place) and len(op.inputs) == 2:
        return op.inputs[0]
    x, out = graph.tensors[op.inputs[0]], graph.tensors[op.output]
    if isinstance(op, Conv) and int(np.prod(out.shape)) <= int(np.prod(x.shape)):
        pointwise = op.weight.shape[2:] == (1, 1) and tuple(op.strides) == (1, 1) and not any(op.pads)
        depthwise = op.groups > 1 and op.groups == x.shape[1]
        return op.inputs[0] if pointwise or depthwise else None
    if isinstance(op, Add) and x.shape == out.shape:
        rest = [n for n in op.inputs if n not in fused]
        return rest[0] if rest else op.inputs[0]
    return None


def scratch_room(op: IntOp, graph: IntGraph) -> int:
    """Bytes of scratch `op`'s kernel may take without raising the arena's peak, roughly: the most
    bytes of tensors live at once anywhere in the graph less those live while `op` runs (a tensor
    lives from the op that computes it to the last that reads it; inputs from the start, outputs
    to the end; an output that likely runs in place of its input counts once). The arena planner
    places the real buffers; this only decides block sizes."""
    first: dict[str, int] = {n: -1 for n in graph.inputs}
    last: dict[str, int] = {n: -1 for n in graph.inputs}
    for i, o in enumerate(graph.ops):
        first.setdefault(o.output, i)
        last.setdefault(o.output, i)
        for n in o.inputs:
            if n in last:
                last[n] = i
    for n in graph.outputs:
        last[n] = len(graph.ops)
    fused = _fused_into_add(graph)
    size = {n: 0 if n in fused else int(np.prod(graph.tensors[n].shape)) * np.dtype(graph.tensors[n].dtype).itemsize
            for n in first}  # fmt: skip
    live = [sum(size[n] for n in first if first[n] <= i <= last[n]) for i in range(len(graph.ops))]
    for i, o in enumerate(graph.ops):
        src = _in_place(o, graph, fused)
        if src is not None and last.get(src) == i and src not in graph.inputs:
            live[i] -= min(size[src], size[o.output])
    here = next(i for i, o in enumerate(graph.ops) if o is op)
    return int((max(live) - live[here]) * ROOM_SHARE) if live else 0


def plan(p: dict, room: int, narrow: bool = False, wide: bool = False) -> dict:
    """Mode (w16, w16s, w8) and pixels per block (even) of a layer with P output pixels, K4 slots and
    cout channels, given `room` bytes of scratch that cost no arena; `narrow`: never int16 records
    in flash; `wide` (and not `narrow`): always int16 records in flash (the fastest form)."""
    P, k4, cout = p["oh"] * p["ow"], p["k4"], p["cout"]
    per_px = 2 * k4  # int16 column bytes per pixel
    rec16 = 16 + 4 * k4 + 24
    budget = max(room, MIN_SCRATCH)
    if not narrow and (wide or cout * k4 <= WIDE_MAX_BYTES or P >= WIDE_MIN_PIXELS):
        mode = "w16"
    elif (budget - rec16) // per_px >= min(MIN_BLOCK, P):
        mode = "w16s"
    elif P >= 100 and not narrow:
        mode = "w16"
    else:
        mode = "w8"
    avail = budget - (rec16 if mode == "w16s" else 0)
    block = min(P, MAX_BLOCK if mode == "w16s" else 16, max(2, avail // per_px))
    block = max(2, block // 2 * 2)
    return {"mode": mode, "block": block}
