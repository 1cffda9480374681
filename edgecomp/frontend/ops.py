"""Which ONNX operators edgecomp compiles, and the check that names every node it cannot."""

from __future__ import annotations

import onnx

from edgecomp.errors import UnsupportedModelError

# Operators whose output shapes depend on data, or that need sequences/optionals: they cannot be
# compiled to a static call sequence with a planned arena, whatever TVM's importer accepts.
DATA_DEPENDENT_OPS = frozenset(
    {
        "NonZero", "Unique", "NonMaxSuppression", "AllClassNMS", "Compress", "TopK", "Range",
        "ConstantOfShape", "Loop", "If", "Scan", "Optional", "OptionalGetElement", "OptionalHasElement",
        "SequenceAt", "SequenceConstruct", "SequenceEmpty", "SequenceErase", "SequenceInsert",
        "SequenceLength", "SplitToSequence", "ConcatFromSequence", "RandomNormal", "RandomUniform",
        "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli",
    }
)  # fmt: skip


def supported_ops() -> frozenset[str]:
    """ONNX (ai.onnx domain) op types that the TVM importer converts and that are static."""
    from edgecomp.lower.legalize import REWRITTEN_OPS
    from edgecomp.lower.relax_import import importer_ops

    return (frozenset(importer_ops()) | REWRITTEN_OPS) - DATA_DEPENDENT_OPS


def check_ops(model: onnx.ModelProto) -> None:
    """Raise UnsupportedModelError listing every node whose op edgecomp cannot compile."""
    ok = supported_ops()
    bad: list[str] = []
    for i, node in enumerate(model.graph.node):
        name = node.name or f"#{i}"
        if node.domain not in ("", "ai.onnx"):
            bad.append(f"{node.domain}.{node.op_type} (node '{name}')")
        elif node.op_type not in ok:
            reason = " (output shape depends on data)" if node.op_type in DATA_DEPENDENT_OPS else ""
            bad.append(f"{node.op_type}{reason} (node '{name}')")
    if bad:
        shown = "; ".join(bad[:8]) + (f"; and {len(bad) - 8} more" if len(bad) > 8 else "")
        raise UnsupportedModelError(f"unsupported operator: {shown}")
