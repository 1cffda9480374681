"""Checking a build: what it must output, and how its outputs compare.

Float builds are checked against onnxruntime on the model as compiled (within a tolerance);
quantized builds bit for bit against the integer reference of the integer graph that was compiled
(quant/interpret.py), with onnxruntime and the float model as information. `expected_outputs` and
`check_outputs` are the one way `run`, the benchmark, `--fit` and the tests check a build.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import onnx

from edgecomp.errors import ToolError

if TYPE_CHECKING:
    from edgecomp.pipeline import BuildResult

# Float builds: outputs match when max abs error <= ATOL + tolerance * max |reference| (numpy's
# allclose, over all outputs). The relative part alone fails a model whose outputs are all tiny
# (a probability map of ~1e-4 with a 1e-7 float rounding error); ATOL is a few float32 ulps of 1.
DEFAULT_TOLERANCE = 1e-4
DEFAULT_ATOL = 1e-6


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

    def within(self, tolerance: float, atol: float = DEFAULT_ATOL) -> bool:
        """max abs error <= atol + tolerance * max |reference|."""
        return self.max_abs_error <= atol + tolerance * self.max_abs_reference

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


def with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of `model` that also outputs the tensors `names` (after its own outputs, in order)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    have = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in have)
    return model


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


def expected_outputs(result: BuildResult, samples: list[list[np.ndarray]]) -> list[list[np.ndarray]]:
    """What the build must output for each sample (in the build's I/O types): the integer reference's
    outputs for a quantized build (bit for bit), onnxruntime's for a float one (within a tolerance)."""
    if result.int_graph is not None:
        from edgecomp.quant import run_int_graph

        return [run_int_graph(result.int_graph, s) for s in samples]
    ref = Reference(result.model)
    return [ref.run(s) for s in samples]


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    lines: list[str]  # what to show the user
    failure: str = ""  # why not ok
    figures: dict = field(default_factory=dict)  # bit_exact / differing / total, rel_error, sqnr_db...


def check_outputs(result: BuildResult, samples: list[list[np.ndarray]], outputs: list[list[np.ndarray]],
                  tolerance: float = DEFAULT_TOLERANCE, atol: float = DEFAULT_ATOL) -> CheckResult:  # fmt: skip
    """Compare a build's outputs for `samples` with what it must output (see expected_outputs):
    a float build within atol + tolerance * max |reference|, an integer one bit for bit."""
    expected = expected_outputs(result, samples)
    if result.int_graph is None:
        cmp = compare(outputs, expected)
        ok = cmp.within(tolerance, atol)
        verdict = "[green]match[/green]" if ok else "[red]MISMATCH[/red]"
        line = (f"vs onnxruntime: max abs error {cmp.max_abs_error:.3g}, relative {cmp.rel_error:.3g} "
                f"(tolerance {tolerance:g}, atol {atol:g}), argmax agreement {cmp.argmax_agreement:.0%}: {verdict}")  # fmt: skip
        failure = "" if ok else (
            f"outputs differ from onnxruntime: max abs error {cmp.max_abs_error:.3g} "
            f"= {cmp.rel_error:.3g} of max |reference|, over atol {atol:g} + tolerance {tolerance:g} x max |reference|"
        )  # fmt: skip
        return CheckResult(ok, [line], failure, cmp.as_dict())
    return _check_integer(result, samples, outputs, expected)


def _check_integer(result: BuildResult, samples, outputs, expected) -> CheckResult:
    """Integer builds must equal the integer reference bit for bit; the rest is information."""
    from edgecomp.quant.accuracy import lsb_agreement, output_step, sqnr_db

    differing = sum(
        int(np.sum(g != w))
        for gs, ws in zip(outputs, expected, strict=True)
        for g, w in zip(gs, ws, strict=True)
    )
    total = sum(w.size for ws in expected for w in ws)
    lines = [f"vs integer reference: {total - differing}/{total} outputs bit-exact"]
    figures: dict = {"bit_exact": differing == 0, "differing": differing, "total": total}
    failure = f"{differing} of {total} outputs differ from the integer reference" if differing else ""
    if result.tflite is not None:
        tflm = tflm_outputs(result, samples)
        if tflm is None:
            lines.append("vs TFLite Micro: not checked (its interpreter is the PyPI package tflite-micro: "
                         "pip install 'edgecomp[tflite]')")  # fmt: skip
        else:
            off = sum(int(np.sum(g != w)) for gs, ws in zip(outputs, tflm, strict=True)
                      for g, w in zip(gs, ws, strict=True))  # fmt: skip
            figures["tflm_bit_exact"], figures["tflm_differing"] = off == 0, off
            lines.append(f"vs TFLite Micro's interpreter: {total - off}/{total} outputs bit-exact")
            if off and not failure:
                failure = f"{off} of {total} outputs differ from TFLite Micro's interpreter"
        return CheckResult(not failure, lines, failure, figures)
    # onnxruntime and the float model take and give float: compare through the I/O scales.
    ins, outs = result.report["inputs"], result.report["outputs"]
    f_samples = [[real_value(x, e) for x, e in zip(s, ins, strict=True)] for s in samples]
    f_outputs = [[real_value(y, e) for y, e in zip(o, outs, strict=True)] for o in outputs]
    ort = [Reference(result.model).run(s) for s in f_samples]
    step = output_step(result.int_graph, result.int_graph.outputs[0])
    within = lsb_agreement(step, [o[0] for o in f_outputs], [o[0] for o in ort])
    lines.append(f"vs onnxruntime (QDQ): {within:.1%} of outputs within 1 LSB")
    if result.float_model is not None:
        floats = [Reference(result.float_model).run(s) for s in f_samples]
        cmp = compare(f_outputs, floats)
        sq = sqnr_db(np.stack([f[0] for f in floats]), np.stack([o[0] for o in f_outputs]))
        figures["sqnr_db"] = sq
        lines.append(f"vs float model: SQNR {sq:.1f} dB, max abs error {cmp.max_abs_error:.3g}, "
                     f"argmax agreement {cmp.argmax_agreement:.0%}")  # fmt: skip
    return CheckResult(differing == 0, lines, failure, figures)


def tflm_outputs(result: BuildResult, samples: list[list[np.ndarray]]) -> list[list[np.ndarray]] | None:
    """TFLite Micro's own outputs (its Python interpreter, PyPI tflite-micro) for the samples of an
    integer TFLite build, in the build's output types; None when tflite-micro is not installed."""
    try:
        from tflite_micro.python.tflite_micro import runtime
    except ImportError:
        return None
    tfl = result.tflite
    try:
        interp = runtime.Interpreter.from_file(str(tfl.path), arena_size=_tflm_arena(tfl))
    except Exception as exc:  # its own errors (an op it lacks...) are RuntimeErrors
        raise ToolError(f"TFLite Micro's interpreter cannot run {tfl.path}: {str(exc).strip()[:300]}") from exc
    outs_spec = result.report["outputs"]
    results = []
    for sample in samples:
        for i, (x, idx) in enumerate(zip(sample, tfl.inputs, strict=True)):
            t = tfl.tensors[idx]
            if x.dtype != np.dtype(t.dtype):  # float data for an integer input: TFLite's QUANTIZE
                x = device_value(x, {"name": t.name, "dtype": t.dtype, "scale": t.scale,
                                     "zero_point": t.zero_point, "rounding": "half_away"})  # fmt: skip
            interp.set_input(np.ascontiguousarray(x.reshape(t.shape)), i)
        interp.invoke()
        outs = []
        for j, (idx, spec) in enumerate(zip(tfl.outputs, outs_spec, strict=True)):
            y, t = interp.get_output(j), tfl.tensors[idx]
            if np.dtype(spec["dtype"]) != y.dtype and t.quantized:  # the build dequantizes it
                y = real_value(y, {"scale": t.scale, "zero_point": t.zero_point})
            outs.append(y.reshape(spec["shape"]))
        results.append(outs)
    return results


def _tflm_arena(tfl) -> int:
    """An arena for TFLite Micro's interpreter: all non-constant tensors, twice, plus slack."""
    need = sum(int(np.prod(t.shape or (1,))) * np.dtype(t.dtype).itemsize for t in tfl.tensors if t.data is None)
    return 2 * need + (1 << 16)


def real_value(x: np.ndarray, entry: dict) -> np.ndarray:
    """A model I/O tensor in float (`entry`: its report.json inputs/outputs entry): dequantized
    when it is an integer tensor."""
    if "scale" not in entry:
        return x
    return (x.astype(np.int32) - entry["zero_point"]).astype(np.float32) * np.float32(entry["scale"])


def device_value(x: np.ndarray, entry: dict) -> np.ndarray:
    """A float sample as the build's input `entry` takes it: quantized (as the model's own
    quantizer rounds, saturated) when the build has integer I/O."""
    if "scale" not in entry:
        return x
    from edgecomp.io import to_model_dtype

    return to_model_dtype(x.astype(np.float32), entry)


def float_outputs(result: BuildResult, float_samples: list[list[np.ndarray]]) -> list[list[np.ndarray]]:
    """The build's outputs for float samples, in float (expected_outputs through the I/O scales)."""
    ins, outs = result.report["inputs"], result.report["outputs"]
    device = [[device_value(x, e) for x, e in zip(s, ins, strict=True)] for s in float_samples]
    return [[real_value(y, e) for y, e in zip(o, outs, strict=True)] for o in expected_outputs(result, device)]
