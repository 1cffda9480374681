"""Hand-written integer micro-kernels, as a table of variants chosen by target capability.

TVM's generic tensor expressions (qops.py) compute every integer op; for the ones that carry
nearly all the MACs a Jinja-templated C kernel (templates/kernels/) specialised on the layer's
shapes is faster. Each `Variant` says which op it computes, which ISA features the target must
declare (`cpu.features` in targets/*.toml: "dsp", "neon", ...), when it applies, and how it
prepares the layer (`make`: template parameters, weight packing, scratch bytes, MACs). The first
variant in VARIANTS whose features the target has and that applies wins; the lowering emits a
Relax `call_dps_packed` to its symbol and the code generator renders its template.

Results are bit-identical to the TE kernels and the numpy reference: the same integer sums, the
same requantization (quant/fixedpoint.py), the same clamp. Kernels that run on any core use the
DSP extension's instructions through templates/kernels/ec_dsp.h when the target declares "dsp"
(the same arithmetic in portable C otherwise), so the host build checks what the device runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edgecomp.lower.kernels import add, conv, dense, float32, int4, lstm, mve, place, pool, softmax
from edgecomp.lower.model import MicroKernel
from edgecomp.quant.ir import IntGraph, IntOp
from edgecomp.quant.ops import Add, AvgPool, Conv, Crop, Dense, Gru, Lstm, Place, TflSoftmax

Make = Callable[[int, IntOp, IntGraph], "tuple[MicroKernel, list[np.ndarray]] | None"]


def _always(op: IntOp, graph: IntGraph) -> bool:
    return True


@dataclass(frozen=True)
class Variant:
    name: str
    op: type  # an IntOp class, or a float layer (float32.FloatConv, FloatDense)
    template: str  # under templates/
    make: Make  # (kernel index, op, graph) -> (MicroKernel, constant arguments), or None: does not apply
    requires: frozenset[str] = frozenset()  # ISA features the target must declare
    applies: Callable[[IntOp, IntGraph], bool] = _always  # cheap test before make
    fuses_add: bool = False  # its epilogue can apply a following residual Add (p.fuse_add)
    dtypes: tuple[str, ...] = ("int8",)  # of every input and the output
    # The same kernel with int8 weight records where int16 ones would be faster (--max-flash,
    # --optimize size)
    make_narrow: Make | None = None
    # The same kernel with int16 weight records wherever they are faster, whatever the flash they
    # take (--optimize speed)
    make_wide: Make | None = None


# In order of preference: the first that the target's features allow and that applies is used.
VARIANTS: tuple[Variant, ...] = (
    # int4 weights with Helium: unpacked in the loop by VSHL/VSHR, then as conv_mve_s8
    Variant("conv_mve_s4", Conv, "kernels/conv_mve_s8.c.j2", mve.conv_mve_s4, frozenset({"mve"}),
            lambda op, g: int4.is_int4(op, g) and conv.is_dense_conv(op, g), fuses_add=True),
    Variant("dwconv_mve_s4", Conv, "kernels/dwconv_mve_s8.c.j2", mve.dwconv_mve_s4, frozenset({"mve"}),
            lambda op, g: int4.is_int4(op, g) and conv.is_depthwise(op, g)),
    Variant("dense_mve_s4", Dense, "kernels/dense_mve_s8.c.j2", mve.dense_mve_s4, frozenset({"mve"}), int4.is_int4),
    # int4 weights (weight_bits 4: lower/kernels/int4.py): packed two per byte, unpacked in the loop
    Variant("conv_neon_s4", Conv, "kernels/conv_neon_s8.c.j2", int4.conv_neon_s4, frozenset({"neon"}),
            lambda op, g: int4.is_int4(op, g) and conv.is_dense_conv(op, g), fuses_add=True),
    Variant("conv_s4", Conv, "kernels/conv_s4.c.j2", int4.conv_s4,
            applies=lambda op, g: int4.is_int4(op, g) and conv.is_dense_conv(op, g)),
    Variant("dwconv_neon_s4", Conv, "kernels/dwconv_s4.c.j2", int4.dwconv_neon_s4, frozenset({"neon"}),
            lambda op, g: int4.is_int4(op, g) and conv.neon_depthwise(op, g)),
    Variant("dwconv_s4", Conv, "kernels/dwconv_s4.c.j2", int4.dwconv_s4,
            applies=lambda op, g: int4.is_int4(op, g) and conv.is_depthwise(op, g)),
    Variant("dense_neon_s4", Dense, "kernels/dense_neon_s8.c.j2", int4.dense_neon_s4, frozenset({"neon"}),
            int4.is_int4),
    Variant("dense_s4", Dense, "kernels/dense_s4.c.j2", int4.dense_s4, applies=int4.is_int4),
    # Helium (Cortex-M55/M85): VMLADAVA dot products of int8 columns, vector requantization
    Variant("conv_mve_s8", Conv, "kernels/conv_mve_s8.c.j2", mve.conv_mve_s8, frozenset({"mve"}),
            conv.is_dense_conv, fuses_add=True),
    Variant("dwconv_mve_s8", Conv, "kernels/dwconv_mve_s8.c.j2", mve.dwconv_mve_s8, frozenset({"mve"}),
            conv.is_depthwise),
    Variant("dense_mve_s8", Dense, "kernels/dense_mve_s8.c.j2", mve.dense_mve_s8, frozenset({"mve"}),
            dense.is_not_sparse),
    Variant("conv_neon_s8", Conv, "kernels/conv_neon_s8.c.j2", conv.conv_neon_s8, frozenset({"neon"}),
            conv.is_dense_conv, fuses_add=True),
    Variant("conv_pw_few_s8", Conv, "kernels/conv_pw_few_s8.c.j2", conv.conv_pw_few_s8,
            applies=conv.is_pointwise_few),
    Variant("conv_pw_s8", Conv, "kernels/conv_mm_s8.c.j2", conv.conv_pw_s8, applies=conv.is_pointwise,
            fuses_add=True, make_narrow=conv.conv_pw_s8_narrow, make_wide=conv.conv_pw_s8_wide),
    Variant("conv_mm_s8", Conv, "kernels/conv_mm_s8.c.j2", conv.conv_mm_s8, applies=conv.is_dense_conv,
            fuses_add=True, make_narrow=conv.conv_mm_s8_narrow, make_wide=conv.conv_mm_s8_wide),
    Variant("conv_s8", Conv, "kernels/conv_s8.c.j2", conv.conv_s8, applies=conv.is_dense_conv, fuses_add=True),
    Variant("dwconv_neon_s8", Conv, "kernels/dwconv_s8.c.j2", conv.dwconv_neon_s8, frozenset({"neon"}),
            conv.neon_depthwise),
    Variant("dwconv_rows_s8", Conv, "kernels/dwconv_rows_s8.c.j2", conv.dwconv_rows_s8,
            applies=conv.is_depthwise_3x3),
    Variant("dwconv_s8", Conv, "kernels/dwconv_s8.c.j2", conv.dwconv_s8, applies=conv.is_depthwise),
    Variant("dense_neon_s8", Dense, "kernels/dense_neon_s8.c.j2", dense.dense_neon_s8, frozenset({"neon"}),
            dense.is_not_sparse),
    Variant("dense_sparse_s8", Dense, "kernels/dense_sparse_s8.c.j2", dense.dense_sparse_s8,
            applies=dense.is_sparse),
    # make_wide renders kernels/dense_w16_s8.c.j2
    Variant("dense_s8", Dense, "kernels/dense_s8.c.j2", dense.dense_s8, make_wide=dense.dense_w16_s8),
    Variant("add_s8", Add, "kernels/add_s8.c.j2", add.add_s8, applies=add.same_shapes),
    Variant("global_avgpool_s8", AvgPool, "kernels/global_avgpool_s8.c.j2", pool.global_avgpool_s8,
            applies=pool.is_global),
    Variant("softmax_tfl_s8", TflSoftmax, "kernels/softmax_tfl_s8.c.j2", softmax.softmax_tfl_s8),
    Variant("lstm_s8", Lstm, "kernels/lstm_s8.c.j2", lstm.lstm_s8, dtypes=("int8", "int16")),
    Variant("gru_s8", Gru, "kernels/gru_s8.c.j2", lstm.gru_s8),
    Variant("place", Place, "kernels/place.c.j2", place.place, dtypes=("int8", "int16")),
    Variant("crop", Crop, "kernels/crop.c.j2", place.crop, dtypes=("int8", "int16")),
    # Float layers (lower/float_groups.py) on cores with a hardware FPU.
    Variant("conv_f32", float32.FloatConv, "kernels/conv_f32.c.j2", float32.conv_f32, frozenset({"fpu"}),
            float32.is_dense_conv, dtypes=("float32",)),
    Variant("dwconv_f32", float32.FloatConv, "kernels/dwconv_f32.c.j2", float32.dwconv_f32, frozenset({"fpu"}),
            float32.is_depthwise, dtypes=("float32",)),
    Variant("dense_f32", float32.FloatDense, "kernels/dense_f32.c.j2", float32.dense_f32, frozenset({"fpu"}),
            dtypes=("float32",)),
)  # fmt: skip


def select(op: IntOp, graph: IntGraph, index: int, features: frozenset[str], narrow: frozenset[str] = frozenset(),
           optimize: str = "balanced") -> tuple[Variant, MicroKernel, list[np.ndarray]] | None:  # fmt: skip
    """The first variant that computes `op` on a target with `features`, its kernel (symbols
    numbered by `index`) and constant arguments; None keeps TVM's kernel. Ops whose output is in
    `narrow` (all of them with `optimize` "size") take their variant's int8-record form where it has
    one; with `optimize` "speed" the others take its int16-record form where it has one."""
    narrowed = optimize == "size" or op.output in narrow
    for v in VARIANTS:
        if not isinstance(op, v.op) or not v.requires <= features or not v.applies(op, graph):
            continue
        if any(graph.tensors[n].dtype not in v.dtypes for n in (*op.inputs, op.output)):
            continue
        make = v.make
        if narrowed and v.make_narrow is not None:
            make = v.make_narrow
        elif optimize == "speed" and not narrowed and v.make_wide is not None:
            make = v.make_wide
        made = make(index, op, graph)
        if made is not None:
            mk, consts = made
            return v, mk, consts
    return None


def select_float(op: float32.FloatLayer, index: int, features: frozenset[str]
                 ) -> tuple[Variant, MicroKernel, list[np.ndarray]] | None:  # fmt: skip
    """The first variant that computes float layer `op` on a target with `features`, its kernel
    (symbol numbered by `index`) and constant arguments; None keeps TVM's kernels."""
    for v in VARIANTS:
        if isinstance(op, v.op) and v.requires <= features and v.applies(op, None):
            made = v.make(index, op, None)
            if made is not None:
                mk, consts = made
                return v, mk, consts
    return None


@dataclass(frozen=True)
class Chosen:
    """A micro-kernel call standing for one op, or for a convolution and the Add fused into it."""

    variant: str
    kernel: MicroKernel
    inputs: tuple[str, ...]  # tensor inputs before the constants
    consts: tuple[np.ndarray, ...]
    extra_inputs: tuple[str, ...]  # tensor inputs after the constants (a fused Add's residual)
    outputs: str  # the tensor it writes
    fused: tuple[int, ...] = ()  # indices of ops whose results it also computes


def _fused_add(op: IntOp, graph: IntGraph, consumers: dict, ready: set[str]) -> IntOp | None:
    """The Add that is the only consumer of conv `op`'s output, if its other input is computed."""
    users = consumers.get(op.output, [])
    if not isinstance(op, Conv) or len(users) != 1 or not isinstance(users[0], Add) or op.output in graph.outputs:
        return None
    others = [i for i in users[0].inputs if i != op.output]
    return users[0] if len(others) == 1 and others[0] in ready else None


def _with_add(conv_op: IntOp, add_op: Add, graph: IntGraph, index: int, features: frozenset[str],
              narrow: frozenset[str] = frozenset(), optimize: str = "balanced") -> Chosen | None:  # fmt: skip
    """A convolution kernel that also applies the Add of its result and a tensor computed earlier in
    its epilogue — the same arithmetic as the two ops — taking the other addend as its last input,
    whose buffer its output may take."""
    conv_k, add_k = select(conv_op, graph, index, features, narrow, optimize), select(add_op, graph, 0, features)
    if conv_k is None or add_k is None or not conv_k[0].fuses_add:
        return None
    (variant, mk, consts), (_, add_mk, (ta, tb)) = conv_k, add_k
    add_p = {k: v for k, v in add_mk.params if k in ("mult", "addend", "sh", "lo", "hi", "fn")}
    conv_is_a = add_op.inputs[0] == conv_op.output
    params = {**dict(mk.params), **{f"add_{k}": v for k, v in add_p.items()}, "fuse_add": 1}
    # Inputs: x, the conv's constants, the conv result's and the residual's tables, the residual.
    fused = MicroKernel(f"ec_mk{index}_conv_add_s8", mk.template, tuple(sorted(params.items())),
                        mk.scratch_bytes, mk.macs, (1 + len(consts) + 2,))  # fmt: skip
    residual = tuple(i for i in add_op.inputs if i != conv_op.output)
    tables = (ta, tb) if conv_is_a else (tb, ta)
    return Chosen(f"{variant.name}+add", fused, conv_op.inputs, (*consts, *tables), residual, add_op.output)


def choose(graph: IntGraph, features: frozenset[str], only=None, narrow: frozenset[str] = frozenset(),
           optimize: str = "balanced") -> dict[int, Chosen]:  # fmt: skip
    """The micro-kernel of each op (by index in graph.ops) that one covers, in graph order (kernel
    symbols are numbered in that order); ops fused into another's kernel are skipped. With `only`
    (a test on ops), just the ops it accepts get one (e.g. the ops TVM has no kernel for);
    `narrow`: layers (by output) that keep int8 weight records; `optimize`: --optimize (select)."""
    consumers = graph.consumers()
    index_of = {id(op): i for i, op in enumerate(graph.ops)}
    ready = set(graph.inputs)
    plan: dict[int, Chosen] = {}
    for i, op in enumerate(graph.ops):
        if op.output in ready:
            continue  # computed by a fused kernel
        if only is not None and not only(op):
            ready.add(op.output)
            continue
        add_op = _fused_add(op, graph, consumers, ready)
        chosen = _with_add(op, add_op, graph, len(plan), features, narrow, optimize) if add_op is not None else None
        if chosen is not None:
            chosen = Chosen(chosen.variant, chosen.kernel, chosen.inputs, chosen.consts, chosen.extra_inputs,
                            chosen.outputs, (index_of[id(add_op)],))  # fmt: skip
        else:
            made = select(op, graph, len(plan), features, narrow, optimize)
            if made is not None:
                variant, mk, consts = made
                chosen = Chosen(variant.name, mk, op.inputs, tuple(consts), (), op.output)
        if chosen is not None:
            plan[i] = chosen
        ready.add(op.output)
        if chosen is not None:
            ready.add(chosen.outputs)
    return plan


def variant_names() -> list[str]:
    return [v.name for v in VARIANTS]


def narrow_plan(graph: IntGraph, features: frozenset[str], excess: int, done: tuple[str, ...] = (),
                optimize: str = "balanced") -> tuple[tuple[str, ...], int]:  # fmt: skip
    """(layers to give int8 weight records, by output tensor; the flash bytes that saves) to save
    at least `excess` bytes: among the layers whose kernel reads int16 records from flash (mode w16,
    as `optimize` chose them), those that reuse each weight over the fewest output pixels (a dense
    layer: rows) first — the instructions a record narrowed adds per byte it saves grow with that
    count (~0.25 instructions/MAC over cout * K bytes, i.e. ~P/4 per byte); those in `done` are
    narrowed already. Fewer bytes than `excess` when all of them are not enough."""
    candidates = []
    for i, ch in choose(graph, features, narrow=frozenset(done), optimize=optimize).items():
        p = dict(ch.kernel.params)
        if p.get("mode") != "w16" or "k4" not in p or graph.ops[i].output in done:
            continue
        if "g" in p:  # conv_mm_s8: int16 groups of a channel-pair record -> int8
            saved, reuse = -(-p["cout"] // 2) * 8 * p["g"], p["oh"] * p["ow"]
        else:  # dense_w16_s8 -> dense_s8
            saved, reuse = p["cout"] * (2 * p["k4"] - p["k"]), p["n"]
        candidates.append((reuse, -saved, graph.ops[i].output, saved))
    chosen, total = [], 0
    for _, _, name, saved in sorted(candidates):
        if total >= excess:
            break
        chosen.append(name)
        total += saved
    return tuple(chosen), total
