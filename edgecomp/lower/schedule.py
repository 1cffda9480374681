"""A generic TIR schedule for one fused operator on a single-core MCU.

Legalized Relax gives every stage its own full-size buffer: a padded copy of the input, the raw
conv/matmul result, then one buffer per epilogue (bias, residual add, relu). On a microcontroller
those buffers are scratch RAM the arena must hold. This schedule removes them:

1. spatial (injective) producers such as padding are inlined into their consumers;
2. elementwise epilogues are inlined into each other;
3. the remaining epilogue is computed right after each output element of the reduction
   (`reverse_compute_at` the reduction's innermost spatial loop), so the raw result shrinks to a
   scalar that lives in a register;
4. the reduction's init is hoisted out of the reduction loop (`decompose_reduction`).

Every primitive is checked by TVM; one that does not apply is skipped, so the schedule never
changes what a function computes, only where intermediates live.
"""

from __future__ import annotations

import contextlib

from tvm import tirx
from tvm.s_tir import Schedule, ScheduleError

_REDUCE = 2  # tirx.IterVar.CommReduce


def schedule_for_mcu(func: tirx.PrimFunc, vector: bool = False) -> tirx.PrimFunc:
    """Return `func` with padding and epilogues inlined and scratch buffers shrunk. With
    `vector` (a target with NEON), each reduction also computes up to eight neighbouring outputs together: its
    innermost spatial loop is split and those outputs moved inside the reduction, so the compiler
    keeps them in registers and vectorises over them (NEON FMLA on four float lanes)."""
    sch = Schedule(func)
    # With SIMD, a padded copy of the input (scratch) keeps bounds tests out of the inner loop.
    _inline_spatial(sch, keep_padding=vector)
    for block in _blocks(sch):
        if _is_reduction(sch, block):
            if vector:
                _outputs_inside_reduction(sch, block)
            _fuse_epilogue(sch, block)
    for block in _blocks(sch):
        if _is_reduction(sch, block):
            _decompose(sch, block)
    return sch.mod["main"]


def tir_macs(func: tirx.PrimFunc) -> int:
    """Multiply-accumulates of a PrimFunc: iterations of reduction blocks whose update multiplies."""
    sch = Schedule(func)
    total = 0
    for block in _blocks(sch):
        blk = sch.get(block)
        if _is_reduction(sch, block) and _has_mul(getattr(blk.body, "value", None)):
            n = 1
            for iv in blk.iter_vars:
                n *= int(iv.dom.extent)
            total += n
    return total


def _blocks(sch: Schedule) -> list:
    return list(sch.get_child_blocks(sch.get_sblock("root")))


def _is_reduction(sch: Schedule, block) -> bool:
    return any(int(iv.iter_type) == _REDUCE for iv in sch.get(block).iter_vars)


def _inline_spatial(sch: Schedule, keep_padding: bool = False) -> None:
    """Inline every non-output spatial block (but padding ones, with keep_padding), repeating
    until nothing changes."""
    changed = True
    while changed:
        changed = False
        for block in _blocks(sch):
            if _is_reduction(sch, block) or (keep_padding and "pad" in sch.get(block).name_hint.lower()):
                continue
            try:
                sch.compute_inline(block)
                changed = True
                break
            except ScheduleError:
                pass
    changed = True
    while changed:
        changed = False
        for block in _blocks(sch):
            if _is_reduction(sch, block) or not _same_domain_as_producers(sch, block):
                continue
            try:
                sch.reverse_compute_inline(block)
                changed = True
                break
            except ScheduleError:
                pass


def _domain(sch: Schedule, block) -> int | None:
    """Number of points of a block's spatial iteration domain (None if not constant)."""
    size = 1
    for iv in sch.get(block).iter_vars:
        if int(iv.iter_type) == _REDUCE:
            continue
        extent = iv.dom.extent
        if not isinstance(extent, tirx.IntImm):
            return None
        size *= int(extent)
    return size


def _same_domain_as_producers(sch: Schedule, block) -> bool:
    """Whether every producer of `block` iterates over as many points as it does. TVM's
    reverse_compute_inline and reverse_compute_at also accept a consumer that writes more than its
    producer computes (a Pad of a pooled tensor) and then drop the extra points: the padding would
    never be written."""
    size = _domain(sch, block)
    producers = sch.get_producers(block)
    return size is not None and all(_domain(sch, p) == size for p in producers)


def _first_reduction_loop(sch: Schedule, block) -> int:
    """Index in get_loops(block) of the outermost loop that drives a reduction axis."""
    loops = sch.get_loops(block)
    if not loops:
        return 0
    realize = sch.get(loops[-1]).body
    if not hasattr(realize, "iter_values"):
        return len(loops)
    red_vars: set[str] = set()
    for iv, value in zip(realize.block.iter_vars, realize.iter_values, strict=True):
        if int(iv.iter_type) == _REDUCE:
            red_vars |= _var_names(value)
    for i, loop in enumerate(loops):
        if sch.get(loop).loop_var.name in red_vars:
            return i
    return len(loops)


def _var_names(expr) -> set[str]:
    if isinstance(expr, tirx.Var):
        return {expr.name}
    names: set[str] = set()
    for f in ("a", "b", "value"):
        sub = getattr(expr, f, None)
        if sub is not None:
            names |= _var_names(sub)
    return names


def _fuse_epilogue(sch: Schedule, block) -> None:
    loops = sch.get_loops(block)
    first_red = _first_reduction_loop(sch, block)
    if first_red == 0 or first_red >= len(loops):
        return
    for consumer in sch.get_consumers(block):
        if _is_reduction(sch, consumer) or not _same_domain_as_producers(sch, consumer):
            continue
        with contextlib.suppress(ScheduleError):
            sch.reverse_compute_at(consumer, loops[first_red - 1], preserve_unit_loops=True)


def _outputs_inside_reduction(sch: Schedule, block, lanes: tuple[int, ...] = (8, 7, 6, 5, 4, 3, 2)) -> None:
    """Split the innermost spatial loop (the one just outside the reduction loops) by the largest
    of `lanes` that divides it and move that part innermost, under the reduction loops."""
    loops = sch.get_loops(block)
    first_red = _first_reduction_loop(sch, block)
    if first_red == 0 or first_red >= len(loops):
        return
    inner = loops[first_red - 1]
    extent = sch.get(inner).extent
    if not isinstance(extent, tirx.IntImm):
        return
    factor = next((f for f in lanes if int(extent) % f == 0 and int(extent) >= f), None)
    if factor is None:
        return
    with contextlib.suppress(ScheduleError):
        _, lane = sch.split(inner, factors=[None, factor])
        sch.reorder(*sch.get_loops(block)[first_red + 1 :], lane)


def _decompose(sch: Schedule, block) -> None:
    loops = sch.get_loops(block)
    first_red = _first_reduction_loop(sch, block)
    if first_red >= len(loops):
        return
    with contextlib.suppress(ScheduleError):
        sch.decompose_reduction(block, loops[first_red])


def _has_mul(expr) -> bool:
    if expr is None:
        return False
    if isinstance(expr, tirx.Mul):
        return True
    return any(_has_mul(getattr(expr, f, None)) for f in ("a", "b", "value")) or any(
        _has_mul(a) for a in getattr(expr, "args", ())
    )
