"""ONNX -> Relax, then legalize to TIR and fuse into one PrimFunc per fused operator."""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile

import onnx
import tvm
from tvm import relax
from tvm.relax.frontend.onnx import onnx_frontend

from edgecomp.errors import UnsupportedModelError
from edgecomp.lower.float_groups import replace_float_layers
from edgecomp.lower.legalize import legalize
from edgecomp.lower.model import MicroKernel


def importer_ops() -> list[str]:
    """ONNX op types TVM's Relax importer has converters for."""
    from tvm.relax.frontend.onnx import onnx_frontend

    return sorted(onnx_frontend._get_convert_map())


def import_and_fuse(model: onnx.ModelProto, features: frozenset[str] | None = None
                    ) -> tuple[tvm.IRModule, dict, dict[str, MicroKernel]]:  # fmt: skip
    """Import a float `model` into Relax with weights as constants, legalize and fuse.

    The result has a Relax `main` made of R.call_tir bindings, one TIR PrimFunc per fused group
    (e.g. conv2d + bias add + relu), with constant subexpressions folded; and, by binding name, the
    ONNX tensor each binding variable of main computes (where one does: see fuse). With `features`
    (the target's ISA capabilities), the layers a float micro-kernel variant covers become
    call_dps_packed bindings to it instead (float_groups.py); the third result: those kernels.
    """
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    model = legalize(model)
    try:
        # Shapes given explicitly: the importer reads a 0 dimension (an empty tensor) as unknown.
        inits = {i.name for i in model.graph.initializer}
        shapes = {
            i.name: [d.dim_value for d in i.type.tensor_type.shape.dim]
            for i in model.graph.input
            if i.name not in inits
        }
        # The importer itself rather than from_onnx(): its table of ONNX tensor -> Relax value
        # names what each binding computes (for validate's per-layer comparison).
        importer = onnx_frontend.ONNXGraphImporter(shapes, "float32", keep_params_in_input=False, sanitize=True)
        with _quiet():
            mod = importer.from_onnx(model.graph, opset)
    except Exception as exc:  # the importer raises many kinds; the message names the op
        raise UnsupportedModelError(f"TVM could not import the model: {_tvm_message(exc)}") from exc
    sources = _onnx_sources(mod["main"], getattr(importer, "_nodes", {}))
    chosen: dict[str, MicroKernel] = {}
    if features:
        mod, chosen = replace_float_layers(mod, features)
    mod, sources = fuse(mod, sources)
    return mod, sources, chosen


def _bindings(func) -> list:
    return [b for block in func.body.blocks for b in block.bindings]


def _onnx_sources(main, nodes: dict) -> dict:
    """Relax binding variable -> the ONNX tensor whose value it is (the importer's `nodes` table
    holds either the bound variable or the expression that was bound)."""
    found: dict = {}
    calls = [(k, v) for k, v in nodes.items() if isinstance(v, relax.Call)]
    for name, value in nodes.items():
        if isinstance(value, relax.Var):
            found.setdefault(value, name)
    for b in _bindings(main):
        name = next((k for k, v in calls if b.value.same_as(v)), None)
        if name is not None:
            found.setdefault(b.var, name)
    return found


@contextlib.contextmanager
def _quiet():
    """Swallow what TVM prints while importing: the importer print()s the failing node before
    raising (our error names it in one line) and its C++ side logs warnings to stderr that are
    about TVM's internals (e.g. Gather's bounds note for indices we generated in bounds)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as sink, contextlib.redirect_stdout(io.StringIO()):
            os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


def fuse(mod: tvm.IRModule, sources: dict | None = None) -> tuple[tvm.IRModule, dict]:
    """Legalize Relax ops to TIR, fold constants and fuse into one PrimFunc per fused group.

    `sources` names, by binding variable, the model tensor each binding of `mod`'s main computes;
    the result carries it over to the fused main, where a fused group's binding computes what its
    last operator computed (the tensors inside a group are never materialised).
    """
    legalize_passes = tvm.transform.Sequential(
        [
            relax.transform.DecomposeOpsForInference(),
            relax.transform.LegalizeOps(),
            relax.transform.AnnotateTIROpPattern(),
            relax.transform.FoldConstant(),
        ]
    )
    try:
        with tvm.transform.PassContext(opt_level=3), _quiet():
            legal = legalize_passes(mod)
            grouped = relax.transform.FuseOps()(legal)
            fused = tvm.transform.Sequential(
                [relax.transform.FuseTIR(), relax.transform.DeadCodeElimination()]
            )(grouped)
    except Exception as exc:
        raise UnsupportedModelError(f"TVM could not legalize the model: {_tvm_message(exc)}") from exc
    return fused, _grouped_sources(legal["main"], grouped, sources or {})


def _same_call(inner, outer, bound: set) -> bool:
    """Whether call_tir `inner` (inside a fused function) is call_tir `outer` (in the unfused main):
    the same callee, and the same variables wherever `inner` passes one it bound itself (the others
    are the function's parameters, which stand for the outer arguments); `bound`: the variables the
    fused function binds."""
    if not all(isinstance(c, relax.Call) and isinstance(c.op, tvm.ir.Op) and c.op.name == "relax.call_tir"
               for c in (inner, outer)):  # fmt: skip
        return False
    if inner.args[0].name_hint != outer.args[0].name_hint:
        return False
    fields = [c.args[1].fields if isinstance(c.args[1], relax.Tuple) else [c.args[1]] for c in (inner, outer)]
    if len(fields[0]) != len(fields[1]):
        return False
    matched = False
    for a, b in zip(*fields, strict=True):
        if isinstance(a, relax.Var) and a in bound:
            if not a.same_as(b):
                return False
            matched = True
    return matched


def _grouped_sources(legal_main, grouped: tvm.IRModule, sources: dict) -> dict:
    """Carry `sources` (by binding variable of `legal_main`) over FuseOps: a binding it left alone
    keeps its variable; a fused group's binding (a new variable) computes what the group's output
    call computed, found by its callee and the variables it takes from inside the group."""
    before = _bindings(legal_main)
    result = {}
    for b in _bindings(grouped["main"]):
        if b.var in sources:
            result[b.var] = sources[b.var]
            continue
        if isinstance(b.value, relax.Var) and b.value in result:  # an alias (main's output variable)
            result[b.var] = result[b.value]
            continue
        callee = b.value.op if isinstance(b.value, relax.Call) else None
        if not (isinstance(callee, relax.GlobalVar) and isinstance(grouped[callee], relax.Function)):
            continue
        body = grouped[callee].body
        inner = [x for block in body.blocks for x in block.bindings]
        out = next((x for x in inner if x.var.same_as(body.body)), None)
        if out is None:
            continue
        bound = {x.var for x in inner}
        match = next((x.var for x in before if x.var in sources and _same_call(out.value, x.value, bound)), None)
        if match is not None:
            result[b.var] = sources[match]
    return result


def _tvm_message(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    # TVM puts the useful line last, after a C++ backtrace.
    msg = next(
        (ln for ln in reversed(lines) if not ln.startswith(("File ", "at ", "0x"))), type(exc).__name__
    )
    return msg[:300]
