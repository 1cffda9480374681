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
from tvm.relax.frontend.onnx import from_onnx

from edgecomp.errors import UnsupportedModelError
from edgecomp.lower.legalize import legalize


def importer_ops() -> list[str]:
    """ONNX op types TVM's Relax importer has converters for."""
    from tvm.relax.frontend.onnx import onnx_frontend

    return sorted(onnx_frontend._get_convert_map())


def import_and_fuse(model: onnx.ModelProto) -> tvm.IRModule:
    """Import a float `model` into Relax with weights as constants, legalize and fuse.

    The result has a Relax `main` made of R.call_tir bindings, one TIR PrimFunc per fused group
    (e.g. conv2d + bias add + relu), with constant subexpressions folded.
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
        with _quiet():
            mod = from_onnx(model, shape_dict=shapes, opset=opset, keep_params_in_input=False)
    except Exception as exc:  # the importer raises many kinds; the message names the op
        raise UnsupportedModelError(f"TVM could not import the model: {_tvm_message(exc)}") from exc
    return fuse(mod)


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


def fuse(mod: tvm.IRModule) -> tvm.IRModule:
    """Legalize Relax ops to TIR, fold constants and fuse into one PrimFunc per fused group."""
    passes = tvm.transform.Sequential(
        [
            relax.transform.DecomposeOpsForInference(),
            relax.transform.LegalizeOps(),
            relax.transform.AnnotateTIROpPattern(),
            relax.transform.FoldConstant(),
            relax.transform.FuseOps(),
            relax.transform.FuseTIR(),
            relax.transform.DeadCodeElimination(),
        ]
    )
    try:
        with tvm.transform.PassContext(opt_level=3), _quiet():
            return passes(mod)
    except Exception as exc:
        raise UnsupportedModelError(f"TVM could not legalize the model: {_tvm_message(exc)}") from exc


def _tvm_message(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    # TVM puts the useful line last, after a C++ backtrace.
    msg = next(
        (ln for ln in reversed(lines) if not ln.startswith(("File ", "at ", "0x"))), type(exc).__name__
    )
    return msg[:300]
