"""Patch-based execution (MCUNetV2's idea, on the integer graph): the memory-heavy first stage of a
CNN runs one spatial patch at a time, so its large intermediate tensors exist only patch-sized.

A stage is the set of spatially local ops (convolutions, pools, pads, element-wise ops) that
computes one tensor, the cut, from the tensors before it. For a grid of patches of the cut, the
transform works back through the stage which window of every tensor each patch needs (the
receptive field, halos included: the overlap is computed twice), crops the stage's inputs to it,
runs a copy of every op on its window — a convolution at the tensor's border keeps its padding,
inside it reads the real neighbours instead — and places the patch into the full cut tensor.

What it preserves: every value of the graph's outputs, bit for bit (each op of a patch computes
exactly the values the whole op computes at those positions; quant/ops/patch.py Place fills the
cut completely). What it costs: the recomputed halos, and a copy of each kernel per patch shape.
`plan_patches` picks the cut and grid: the smallest peak of live tensors, or the fewest MACs
within a RAM budget.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from edgecomp.quant.ir import IntGraph, IntOp, LinearOp, QTensor
from edgecomp.quant.ops import (
    Add,
    AvgPool,
    Concat,
    Conv,
    Crop,
    Dequantize,
    Lut,
    Lut16,
    MaxPool,
    Mul,
    Pad,
    Place,
    PRelu,
    Quantize,
    TflAvgPool,
)  # fmt: skip

Box = tuple[int, int, int, int]  # rows [r0, r1), columns [c0, c1)

_WINDOWED = (Conv, MaxPool, AvgPool, TflAvgPool)
_ELEMENTWISE = (Add, Mul, PRelu, Lut, Lut16, Quantize, Dequantize)


@dataclass(frozen=True)
class PatchPlan:
    cut: str  # the tensor computed patch by patch
    grid: tuple[int, int]  # patches down, across
    peak_bytes: int  # live tensors at the peak, patched (an estimate: kernel scratch not counted)
    peak_bytes_before: int
    macs: int
    macs_before: int

    def as_dict(self) -> dict:
        return {"cut": self.cut, "grid": list(self.grid), "peak_estimate_bytes": self.peak_bytes,
                "peak_estimate_bytes_unpatched": self.peak_bytes_before, "macs": self.macs,
                "macs_unpatched": self.macs_before}  # fmt: skip


def _spatial(t: QTensor) -> bool:
    return len(t.shape) == 4 and t.shape[0] == 1


def _patchable(op: IntOp, graph: IntGraph) -> bool:
    """Ops whose output window depends on a window of each input (all NCHW, batch 1)."""
    out = graph.tensors[op.output]
    if not _spatial(out):
        return False
    if isinstance(op, _WINDOWED):
        return _spatial(graph.tensors[op.inputs[0]]) and (not isinstance(op, Conv) or op.weight.ndim == 4)
    if isinstance(op, Pad):
        return all(p == (0, 0) for p in op.pads[:2])
    if isinstance(op, Concat):
        return op.axis in (1, -3) and all(graph.tensors[i].shape[2:] == out.shape[2:] for i in op.inputs)
    if isinstance(op, _ELEMENTWISE):
        return all(graph.tensors[i].shape[2:] in (out.shape[2:], (1, 1)) for i in op.inputs)
    return False


def _window(a: int, b: int, k: int, s: int, d: int, p_lo: int, size: int) -> tuple[int, int, int, int]:
    """Input rows [lo, hi) for output rows [a, b) of a window op, clipped to the tensor, and the
    padding the patch then needs before and after."""
    lo, hi = a * s - p_lo, (b - 1) * s - p_lo + (k - 1) * d + 1
    return max(lo, 0), min(hi, size), max(0, -lo), max(0, hi - size)


def _needs(op: IntOp, box: Box, graph: IntGraph) -> list[tuple[Box | None, tuple[int, int, int, int]]]:
    """For output window `box` of `op`: per input, the window it reads (None: the whole tensor, a
    broadcast [N, C, 1, 1] operand) and the (top, left, bottom, right) padding the patched op uses."""
    r0, r1, c0, c1 = box
    x = graph.tensors[op.inputs[0]]
    if isinstance(op, _WINDOWED):
        if isinstance(op, Conv):
            (kh, kw), dil = op.weight.shape[2:], op.dilations
        else:
            (kh, kw), dil = op.kernel, (1, 1)
        (sh, sw), (pt, pl, _, _) = op.strides, op.pads
        h, w = x.shape[2:]
        y0, y1, t, b = _window(r0, r1, kh, sh, dil[0], pt, h)
        x0, x1, left, right = _window(c0, c1, kw, sw, dil[1], pl, w)
        return [((y0, y1, x0, x1), (t, left, b, right))]
    if isinstance(op, Pad):
        (bt, _), (bl, _) = op.pads[2], op.pads[3]
        h, w = x.shape[2:]
        y0, y1 = max(r0 - bt, 0), min(r1 - bt, h)
        x0, x1 = max(c0 - bl, 0), min(c1 - bl, w)
        pads = (max(0, bt - r0), max(0, bl - c0), max(0, r1 - bt - h), max(0, c1 - bl - w))
        return [((y0, y1, x0, x1), pads)]
    return [(None if graph.tensors[i].shape[2:] == (1, 1) and (r1 - r0, c1 - c0) != (1, 1) else box, (0, 0, 0, 0))
            for i in op.inputs]  # fmt: skip


def _patched(op: IntOp, name_in: tuple[str, ...], name_out: str, box: Box, pads) -> IntOp:
    """A copy of `op` computing output window `box` from the cropped inputs `name_in`."""
    r0, r1, c0, c1 = box
    changes: dict = {"inputs": name_in, "output": name_out}
    if isinstance(op, _WINDOWED):
        changes["pads"] = pads
        if isinstance(op, AvgPool):  # its divisors are per output position
            changes.update(mult=op.mult[r0:r1, c0:c1], shift=op.shift[r0:r1, c0:c1])
    elif isinstance(op, Pad):
        t, left, b, right = pads
        changes["pads"] = (*op.pads[:2], (t, b), (left, right))
    return replace(op, **changes)


def _region(graph: IntGraph, cut: str) -> list[int] | None:
    """Indices of the ops of the stage that computes `cut` (the patchable ops it depends on through
    patchable ops), or None when a tensor inside the stage is also read outside it."""
    producer = {op.output: i for i, op in enumerate(graph.ops)}
    if cut not in producer or not _patchable(graph.ops[producer[cut]], graph):
        return None
    stage, todo = set(), [producer[cut]]
    while todo:
        i = todo.pop()
        if i in stage:
            continue
        stage.add(i)
        for name in graph.ops[i].inputs:
            j = producer.get(name)
            if j is not None and _patchable(graph.ops[j], graph):
                todo.append(j)
    inside = {graph.ops[i].output for i in stage}
    for i, op in enumerate(graph.ops):
        if i not in stage and any(n in inside and n != cut for n in op.inputs):
            return None
    if cut in graph.outputs or any(n in inside and n != cut for n in graph.outputs):
        return None
    return sorted(stage)


def _union(a: Box | None, b: Box) -> Box:
    return b if a is None else (min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3]))


def _splits(n: int, parts: int) -> list[tuple[int, int]]:
    edges = [n * i // parts for i in range(parts + 1)]
    return [(edges[i], edges[i + 1]) for i in range(parts)]


def _window_of(name: str, box: Box, have: dict, tensors: dict, new_ops: list, p: int) -> str:
    """The tensor of patch `p` holding exactly `box` of `name`: what `have` holds for it (or the
    whole tensor), cropped by a new Crop op when that is wider."""
    src, held = have.get(name, (name, (0, tensors[name].shape[2], 0, tensors[name].shape[3])))
    if held == box:
        return src
    rel = (box[0] - held[0], box[1] - held[0], box[2] - held[2], box[3] - held[2])
    t = tensors[name]
    crop = f"{name}#p{p}r{box[0]}-{box[1]}c{box[2]}-{box[3]}"
    if crop not in tensors:
        tensors[crop] = replace(t, name=crop, shape=(*t.shape[:2], box[1] - box[0], box[3] - box[2]))
        new_ops.append(Crop(inputs=(src,), output=crop, node=f"patch {p} of {t.name}", box=rel))
    return crop


def patch_graph(graph: IntGraph, cut: str, grid: tuple[int, int]) -> IntGraph:
    """`graph` with the stage that computes `cut` run patch by patch (`grid`: patches down, across)."""
    stage = _region(graph, cut)
    if stage is None:
        raise ValueError(f"tensor '{cut}' is not the end of a patchable stage")
    h, w = graph.tensors[cut].shape[2:]
    if not (1 <= grid[0] <= h and 1 <= grid[1] <= w):
        raise ValueError(f"a {grid[0]}x{grid[1]} grid does not divide a {h}x{w} tensor")
    stage_ops = [graph.ops[i] for i in stage]
    tensors = dict(graph.tensors)
    new_ops: list[IntOp] = []
    placed: str | None = None
    patches = [(rows, cols) for rows in _splits(h, grid[0]) for cols in _splits(w, grid[1])]
    for p, ((r0, r1), (c0, c1)) in enumerate(patches):
        start = len(new_ops)
        # Back through the stage: the window of every tensor this patch needs.
        need: dict[str, Box] = {cut: (r0, r1, c0, c1)}
        reads: dict[int, list] = {}
        for op in reversed(stage_ops):
            out_box = need.get(op.output)
            if out_box is None:
                continue
            reads[id(op)] = _needs(op, out_box, graph)
            for name, (box, _) in zip(op.inputs, reads[id(op)], strict=True):
                if box is not None:
                    need[name] = _union(need.get(name), box)
        # Forward: crop what comes from outside, run each op on its window.
        have: dict[str, tuple[str, Box]] = {}  # tensor -> (its patch tensor, the window it holds)

        for op in stage_ops:
            out_box = need.get(op.output)
            if out_box is None:
                continue
            ins = tuple(name if box is None else _window_of(name, box, have, tensors, new_ops, p)
                        for name, (box, _) in zip(op.inputs, reads[id(op)], strict=True))  # fmt: skip
            pads = next((pads for box, pads in reads[id(op)] if box is not None), (0, 0, 0, 0))
            out = f"{op.output}#p{p}"
            t = tensors[op.output]
            tensors[out] = replace(t, name=out, shape=(*t.shape[:2], out_box[1] - out_box[0], out_box[3] - out_box[2]))
            new_ops.append(_patched(op, ins, out, out_box, pads))
            have[op.output] = (out, out_box)
        last = p == len(patches) - 1
        done = cut if last else f"{cut}#placed{p}"
        tensors[done] = replace(graph.tensors[cut], name=done)
        patch = _window_of(cut, (r0, r1, c0, c1), have, tensors, new_ops, p)
        new_ops[start:] = _crops_where_inputs_die(new_ops[start:])
        new_ops.append(Place(inputs=((placed,) if placed else ()) + (patch,), output=done,
                             node=f"patch {p} of {cut}", box=(r0, r1, c0, c1), shape=graph.tensors[cut].shape))  # fmt: skip
        placed = done
    for i in stage:  # the whole-tensor intermediates of the stage are gone
        if graph.ops[i].output != cut:
            tensors.pop(graph.ops[i].output, None)
    at = stage[-1]  # the patches run where the cut was computed; other ops keep their order
    before = [op for i, op in enumerate(graph.ops) if i not in stage and i < at]
    after = [op for i, op in enumerate(graph.ops) if i not in stage and i > at]
    return IntGraph(tensors, tuple(before + new_ops + after), graph.inputs, graph.outputs)


def _crops_where_inputs_die(ops: list[IntOp]) -> list[IntOp]:
    """`ops` (one patch) with each Crop of a tensor they compute moved up to just after the last
    other reader of that tensor, when none reads it later: the tensor then dies at the crop, which
    takes its buffer (crop.c.j2 copies forward), so a residual branch keeps only the window its Add
    needs while the convolutions before that Add run, not the whole halo'd window."""
    ops = list(ops)
    for crop in [op for op in ops if isinstance(op, Crop)]:
        src = crop.inputs[0]
        at = ops.index(crop)
        made = [i for i, op in enumerate(ops) if op.output == src]
        readers = [i for i, op in enumerate(ops) if src in op.inputs and op is not crop]
        if not made or any(i > at for i in readers):
            continue
        to = max([made[0], *readers]) + 1
        if to < at:
            ops.insert(to, ops.pop(at))
    return ops


def _conv_in_place(op: IntOp, graph: IntGraph) -> bool:
    """Whether the micro-kernel of convolution `op` writes its output over its input
    (MicroKernel.inplace): a 3x3 depthwise layer that does not grow (dwconv_rows_s8; MobileNetV2's
    28x28x192 ones are its peak once the first stage is patched). Pointwise layers may too
    (conv_pw_s8), but whether they do depends on the records' scratch room; not counted here."""
    if not isinstance(op, Conv) or not op.inputs:
        return False
    x, y = graph.tensors[op.inputs[0]].shape, graph.tensors[op.output].shape
    if len(x) != 4 or len(y) != 4:
        return False
    kernel = tuple(op.weight.shape[2:])
    return (op.groups == x[1] == op.weight.shape[0] and op.weight.shape[1] == 1 and kernel == (3, 3)
            and tuple(op.dilations) == (1, 1) and op.strides[0] == op.strides[1] in (1, 2)
            and y[2] <= x[2] and y[3] <= x[3] and op.pads[0] <= 2)  # fmt: skip


def _in_place(graph: IntGraph, shrinking: bool = True) -> dict[str, str]:
    """Outputs that take an input's buffer, as the kernels allow (lower/kernels: MicroKernel.inplace)
    and the planner then does: a Place, an element-wise Add of same-shaped inputs (also when fused
    into the convolution before it), a 3x3 depthwise convolution (_conv_in_place),
    whose input dies there (`shrinking` False: not a convolution's output of at most half its input's
    size, as codegen/memory.py plans it too). Maps output -> the buffer it shares."""
    last: dict[str, int] = {}
    readers: dict[str, int] = {}
    for i, op in enumerate(graph.ops):
        for n in op.inputs:
            last[n] = i
            readers[n] = readers.get(n, 0) + 1
    producer = {op.output: op for op in graph.ops}
    alias: dict[str, str] = {}
    for i, op in enumerate(graph.ops):
        if isinstance(op, Place) and len(op.inputs) == 2 or isinstance(op, Crop):
            choices = op.inputs[:1]
        elif isinstance(op, Add) and len({graph.tensors[n].shape for n in (*op.inputs, op.output)}) == 1:
            choices = op.inputs
        elif _conv_in_place(op, graph) and (shrinking or 2 * _nbytes(graph, op.output) > _nbytes(graph, op.inputs[0])):
            choices = op.inputs[:1]
        else:
            continue
        src = next((n for n in choices if last.get(n) == i and n not in graph.inputs and n not in graph.outputs), None)
        if src is None:
            continue
        alias[op.output] = alias.get(src, src)
        # A convolution whose only reader is this Add computes it in its epilogue, into that buffer.
        other = next((n for n in op.inputs if n != src), None)
        conv = producer.get(other)
        if isinstance(conv, Conv) and readers.get(other) == 1 and src not in conv.inputs:
            alias[other] = alias[op.output]
    return alias


def _nbytes(graph: IntGraph, name: str) -> int:
    t = graph.tensors[name]
    return int(np.prod(t.shape, dtype=np.int64)) * np.dtype(t.dtype).itemsize


def live_peak(graph: IntGraph) -> int:
    """Bytes of the tensors live at once at the worst op (inputs and outputs included; a Place
    shares the buffer of the tensor it adds to): the arena the planner can reach at best (with or
    without the in-place outputs much smaller than their input, as codegen/memory.py plans)."""
    return min(_live_peak(graph, _in_place(graph, shrinking)) for shrinking in (True, False))


def _live_peak(graph: IntGraph, alias: dict[str, str]) -> int:
    first: dict[str, int] = {n: -1 for n in graph.inputs}
    last: dict[str, int] = {alias.get(n, n): len(graph.ops) for n in graph.outputs}
    for i, op in enumerate(graph.ops):
        first.setdefault(alias.get(op.output, op.output), i)
        for n in op.inputs:
            root = alias.get(n, n)
            last[root] = max(last.get(root, i), i)
    events: dict[int, int] = {}
    for name, f in first.items():
        size = _nbytes(graph, name)
        events[f] = events.get(f, 0) + size
        end = last.get(name, f) + 1
        events[end] = events.get(end, 0) - size
    peak = live = 0
    for step in sorted(events):
        live += events[step]
        peak = max(peak, live)
    return peak


def macs(graph: IntGraph) -> int:
    total = 0
    for op in graph.ops:
        if isinstance(op, LinearOp):
            out = graph.tensors[op.output].shape
            total += int(np.prod(out, dtype=np.int64)) // out[1] * op.weight.size if isinstance(op, Conv) else op.weight.size
    return total


def candidates(graph: IntGraph) -> list[str]:
    """Tensors that end a patchable stage and are worth splitting, in graph order."""
    return [op.output for op in graph.ops
            if _spatial(graph.tensors[op.output]) and min(graph.tensors[op.output].shape[2:]) >= MIN_CUT
            and _region(graph, op.output) is not None]  # fmt: skip


MIN_CUT = 4  # rows and columns of a cut tensor worth splitting


GRIDS = (1, 2, 3, 4, 5, 6, 7, 8)  # patches down, and across: every pair, bands (Rx1, 1xC) included


def all_plans(graph: IntGraph) -> list[PatchPlan]:
    """Every cut and grid (square or not: a grid of wide patches recomputes fewer halo columns, and
    the cheapest plan within a RAM budget is often one) that lowers the peak of live tensors, with
    its peak and MACs."""
    base_peak, base_macs = live_peak(graph), macs(graph)
    plans = []
    for cut in candidates(graph):
        h, w = graph.tensors[cut].shape[2:]
        grids = sorted({(min(r, h), min(c, w)) for r in GRIDS for c in GRIDS} - {(1, 1)})
        for grid in grids:
            patched = patch_graph(graph, cut, grid)
            plan = PatchPlan(cut, grid, live_peak(patched), base_peak, macs(patched), base_macs)
            if plan.peak_bytes < base_peak:
                plans.append(plan)
    return plans


def smallest_peak(plans: list[PatchPlan], mac_cap: float) -> PatchPlan | None:
    """The plan with the smallest peak among those within `mac_cap` times the MACs (ties: fewer MACs)."""
    within = [p for p in plans if p.macs <= mac_cap * p.macs_before]
    return min(within, key=lambda p: (p.peak_bytes, p.macs, *_wide_first(p)), default=None)


def within_budget(plans: list[PatchPlan], peak_budget: int) -> list[PatchPlan]:
    """The plans whose peak is within `peak_budget`, fewest MACs first."""
    return sorted((p for p in plans if p.peak_bytes <= peak_budget), key=lambda p: (p.macs, p.peak_bytes, *_wide_first(p)))


def _wide_first(p: PatchPlan) -> tuple:
    """Among plans of equal MACs and peak, the one with the widest patches: longer rows run the
    kernels' inner loops longer (IC ResNet-8, 5x2 vs 2x5 patches: 18.0 M vs 18.7 M instructions)."""
    return p.cut, p.grid[1], p.grid[0]
