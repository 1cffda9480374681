"""Shapes and constants to a fixed point: shape inference, constant folding and the inlining of
If nodes on constant conditions, repeated until nothing changes.

Exporters compute shapes at run time (Shape -> Gather/Slice -> Concat -> Reshape, ConstantOfShape,
Range, Expand, an If on the sequence length). Once the inputs are pinned (--input-shape) and
configuration inputs frozen (--freeze) all of that is constant, but only step by step: a folded
Shape gives a constant Reshape target, which gives the next tensor a static shape, whose Shape then
folds; a folded condition lets an If be inlined, whose branch holds more of the same. One round of
each leaves the model half-done, so they run until a round changes nothing.

Why not a library: onnxruntime's offline optimizer (ORT_ENABLE_BASIC) folds the same chains on
the models of the survey (docs/frontend.md) but crashed the process (SIGSEGV) on a spox-exported
Silero VAD, failed on another, and rewrites QDQ graphs (it duplicates DequantizeLinear nodes);
onnx-simplifier 0.8 (a 38 MB toolkit) failed on five Silero models after its own If inlining;
onnxoptimizer has no constant folding through evaluation. This loop is built from onnx's own
shape inference (with data propagation) and its reference evaluator (passes/fold_constants.py),
and keeps edgecomp's folding rules (Q/DQ kept, no folding that grows flash).
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import shape_inference

from edgecomp.errors import UserError
from edgecomp.passes.branches import inline_constant_ifs
from edgecomp.passes.fold_constants import fold_constants

MAX_ROUNDS = 32  # each round folds at least one node; real exports settle in 2-5


def settle_shapes(model: onnx.ModelProto, path: Path) -> onnx.ModelProto:
    """`model` shape-inferred with every constant subgraph folded and every If on a constant
    condition inlined, repeated to a fixed point (`path` names the model in messages)."""
    for _ in range(MAX_ROUNDS):
        model = infer(model, path)
        folded = fold_constants(model)
        inlined = inline_constant_ifs(folded.model)
        if not folded.report["folded"] and not inlined.report["inlined"]:
            return model
        model = inlined.model
        del model.graph.value_info[:]  # stale after folding; inferred again
    return infer(model, path)


def infer(model: onnx.ModelProto, path: Path) -> onnx.ModelProto:
    """onnx shape inference, strict, with data propagation (shape arithmetic followed through
    Shape, Gather, Concat...); a failure is the model's, said in one line."""
    try:
        return shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except Exception as exc:
        text = (str(exc).strip() or type(exc).__name__).splitlines()[0][:300]
        raise UserError(f"shape inference failed on {path}: {text}") from exc


def clear_declared_shapes(model: onnx.ModelProto, all_outputs: bool) -> onnx.ModelProto:
    """Drop the shapes a model declares for intermediate values, and for its outputs those with a
    dynamic dimension (or all of them, `all_outputs`, after inputs were pinned): a declared
    symbolic or stale size would contradict what inference now derives from the pinned inputs."""
    from edgecomp.frontend.inputs import is_dynamic

    model = onnx.ModelProto.FromString(model.SerializeToString())
    del model.graph.value_info[:]
    for out in model.graph.output:
        tt = out.type.tensor_type
        if out.type.HasField("tensor_type") and tt.HasField("shape") and (
            all_outputs or any(is_dynamic(d) for d in tt.shape.dim)
        ):
            tt.ClearField("shape")
    return model
