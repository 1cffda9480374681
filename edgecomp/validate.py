"""`edgecomp validate`: run the model on the device one step at a time, read every step's output back
over the harness and compare it with the reference: the integer reference bit for bit for integer
tensors, onnxruntime within a tolerance for float ones. The first step that differs is where a
corrupted weight, a miscompiled kernel or a wrong quantization parameter shows up."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from edgecomp.harness import InferenceResult, open_session
from edgecomp.pipeline import BuildResult


@dataclass(frozen=True)
class LayerCheck:
    """One step's output on the device against the reference (status: "match", "DIVERGES", or
    "no reference" when it holds no value the model names, e.g. a layout copy)."""

    index: int
    kernel: str
    tensor: str  # the arena tensor the step writes
    computes: str | None  # the model tensor it holds
    shape: tuple[int, ...]
    dtype: str
    status: str
    max_abs_error: float | None = None  # in the tensor's unit (LSBs for an integer tensor)
    rel_error: float | None = None  # float tensors: max abs error / max |reference|
    differing: int | None = None  # elements not equal (integer) / over the tolerance (float)
    ticks: int = 0  # the step's timer ticks
    instructions: int | None = None  # the same in instructions (QEMU)


@dataclass(frozen=True)
class Validation:
    reference: str  # what the device was compared with
    tolerance: float  # float tensors' relative tolerance
    layers: list[LayerCheck]

    @property
    def first_divergence(self) -> LayerCheck | None:
        return next((c for c in self.layers if c.status == "DIVERGES"), None)

    @property
    def ok(self) -> bool:
        return self.first_divergence is None

    def as_dict(self) -> dict:
        first = self.first_divergence
        return {
            "reference": self.reference,
            "tolerance": self.tolerance,
            "ok": self.ok,
            "compared": sum(c.status != "no reference" for c in self.layers),
            "first_divergence": asdict(first) if first else None,
            "layers": [asdict(c) for c in self.layers],
        }


def validate(result: BuildResult, sample: list[np.ndarray], port: str | None = None, baud: int = 115200,
             timeout: float = 5.0, tolerance: float = 1e-4) -> Validation:  # fmt: skip
    """Run `sample` (in the build's input types) through the device step by step and compare each
    step's output with the reference value of the model tensor it computes."""
    rep = result.report
    layers = rep["layers"]
    offsets = {b["name"]: b["offset"] for b in rep["memory_plan"]}
    wanted = [p["computes"] for layer in layers for p in layer["produces"] if p["computes"]]
    reference, values = _reference(result, sample, wanted)
    checks = []
    with open_session(result.target, result.outdir, port=port, baud=baud, timeout=timeout) as session:
        info = session.info()
        session.write_inputs(sample)
        for layer in layers:
            step = session.step(layer["index"])
            ticks = {"ticks": step, "instructions": None if port else
                     InferenceResult([], step, None, info.timer, info.clock_hz).instructions}  # fmt: skip
            for p in layer["produces"]:
                dtype, shape = np.dtype(p["dtype"]), tuple(p["shape"])
                size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
                want = values.get(p["computes"]) if p["computes"] else None
                if not size or p["tensor"] not in offsets or want is None or want.size * want.itemsize != size:
                    checks.append(LayerCheck(layer["index"], layer["kernel"], p["tensor"], p["computes"], shape,
                                             p["dtype"], "no reference", **ticks))  # fmt: skip
                    continue
                got = np.frombuffer(session.read_arena(offsets[p["tensor"]], size), dtype).reshape(shape)
                checks.append(_compare(layer, p, got, want.reshape(shape).astype(dtype), tolerance, ticks))
    return Validation(reference, tolerance, checks)


def _reference(result: BuildResult, sample: list[np.ndarray], names: list[str]) -> tuple[str, dict]:
    """The reference value of every model tensor in `names` for `sample`."""
    if result.int_graph is not None:
        from edgecomp.quant import run_int_graph

        env = run_int_graph(result.int_graph, sample, keep_all=True)
        return "integer reference (bit-exact)", {n: env[n] for n in names if n in env}
    from edgecomp.verify import Reference, with_outputs

    have = {n for node in result.model.graph.node for n in node.output}
    names = list(dict.fromkeys(n for n in names if n in have))
    outputs = [o.name for o in result.model.graph.output]
    values = Reference(with_outputs(result.model, names)).run(sample)
    got = dict(zip(outputs + [n for n in names if n not in outputs], values, strict=True))
    return "onnxruntime", got


def _compare(layer: dict, p: dict, got: np.ndarray, want: np.ndarray, tolerance: float, ticks: dict) -> LayerCheck:
    base = dict(index=layer["index"], kernel=layer["kernel"], tensor=p["tensor"], computes=p["computes"],
                shape=tuple(p["shape"]), dtype=p["dtype"], **ticks)  # fmt: skip
    if np.issubdtype(got.dtype, np.integer):
        diff = np.abs(got.astype(np.int64) - want.astype(np.int64))
        differing = int(np.count_nonzero(diff))
        return LayerCheck(**base, status="DIVERGES" if differing else "match",
                          max_abs_error=float(diff.max(initial=0)), differing=differing)  # fmt: skip
    g, w = got.astype(np.float64), want.astype(np.float64)
    finite = np.isfinite(g) == np.isfinite(w)
    diff = np.where(np.isfinite(g) & np.isfinite(w), np.abs(g - w), np.where(finite & (g == w), 0.0, np.inf))
    scale = float(np.max(np.abs(w[np.isfinite(w)]), initial=0.0)) or 1.0
    bound = tolerance * scale
    differing = int(np.count_nonzero(diff > bound))
    max_err = float(diff.max(initial=0.0))
    return LayerCheck(**base, status="DIVERGES" if differing else "match", max_abs_error=max_err,
                      rel_error=max_err / scale, differing=differing)  # fmt: skip
