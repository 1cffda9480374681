"""The reference: onnxruntime on the same (front-end normalised) model, and the error metrics."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from edgecomp.errors import ToolError


@dataclass(frozen=True)
class Comparison:
    max_abs_error: float
    max_abs_reference: float
    argmax_agreement: float

    @property
    def rel_error(self) -> float:
        """Max abs error over max |reference| (the figure the tolerance applies to)."""
        return (
            self.max_abs_error / self.max_abs_reference if self.max_abs_reference > 0 else self.max_abs_error
        )

    def as_dict(self) -> dict:
        return {
            "max_abs_error": self.max_abs_error,
            "max_abs_reference": self.max_abs_reference,
            "rel_error": self.rel_error,
            "argmax_agreement": self.argmax_agreement,
        }


class Reference:
    def __init__(self, model: onnx.ModelProto) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if any(n.op_type == "QuantizeLinear" for n in model.graph.node):
            # The QDQ graph's own definition (float ops between DQ and Q), not onnxruntime's fused
            # integer kernels: those round differently (its int16 MatMul is off by tens of LSB).
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        try:
            self._sess = ort.InferenceSession(
                model.SerializeToString(), opts, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise ToolError(f"onnxruntime cannot run the model as a reference: {exc}") from exc
        self._names = [i.name for i in self._sess.get_inputs()]

    def run(self, sample: list[np.ndarray]) -> list[np.ndarray]:
        return self._sess.run(None, dict(zip(self._names, sample, strict=True)))


def compare(got: list[list[np.ndarray]], want: list[list[np.ndarray]]) -> Comparison:
    """Compare all outputs of all samples."""
    max_err = max_ref = 0.0
    agree = total = 0
    for g_sample, w_sample in zip(got, want, strict=True):
        for g, w in zip(g_sample, w_sample, strict=True):
            g64, w64 = g.astype(np.float64), w.astype(np.float64)
            max_err = max(max_err, float(np.max(np.abs(g64 - w64))) if g.size else 0.0)
            max_ref = max(max_ref, float(np.max(np.abs(w64))) if w.size else 0.0)
        g0, w0 = g_sample[0], w_sample[0]
        if g0.size > 1:
            agree += int(np.argmax(g0.reshape(g0.shape[0], -1) if g0.ndim > 1 else g0) ==
                         np.argmax(w0.reshape(w0.shape[0], -1) if w0.ndim > 1 else w0))  # fmt: skip
            total += 1
    if not np.isfinite(max_err):
        max_err = float("inf")
    return Comparison(max_err, max_ref, agree / total if total else 1.0)
