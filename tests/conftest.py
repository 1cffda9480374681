"""Shared helpers: tiny ONNX models built in the tests, compiled and compared with onnxruntime."""

from __future__ import annotations

import os
import shutil
import zlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from elftools.elf.elffile import ELFFile
from onnx import TensorProto, helper, numpy_helper

from edgecomp.pipeline import BuildOptions, build
from edgecomp.runner import run_samples
from edgecomp.targets import load_target
from edgecomp.verify import Reference, compare

# Strict runs (scripts/test.sh, CI) fail a test that skips for a missing tool or package: setup
# installs them all, so such a skip hides a setup bug that a fresh machine would hit. Only these
# are optional (each named by a word of the skip reason), less those listed in
# EDGECOMP_TEST_REQUIRE (comma separated; CI requires torch). onnxscript: torch's dynamo exporter.
OPTIONAL_SKIPS = {"shared": "../shared", "torch": "torch", "onnxscript": "onnxscript"}


def _allowed_skip(reason: str) -> bool:
    required = {r.strip() for r in os.environ.get("EDGECOMP_TEST_REQUIRE", "").split(",") if r.strip()}
    return any(word in reason for key, word in OPTIONAL_SKIPS.items() if key not in required)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("EDGECOMP_TEST_STRICT", "0") == "1" and not hasattr(report, "wasxfail"):
        reason = str(report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr)
        if not _allowed_skip(reason):
            report.outcome = "failed"
            report.longrepr = f"skipped in a strict run (setup should have installed what it needs): {reason}"


HAVE_ARM = shutil.which("arm-none-eabi-gcc") is not None and shutil.which("qemu-system-arm") is not None
needs_qemu = pytest.mark.skipif(not HAVE_ARM, reason="needs arm-none-eabi-gcc and qemu-system-arm")


def make_model(nodes, inputs, outputs, inits=(), opset=13) -> onnx.ModelProto:
    """A checked ONNX model from nodes; inputs/outputs as (name, shape) float32."""
    graph = helper.make_graph(
        nodes,
        "test",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
        list(inits),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def weight(name: str, shape, seed: int = 0) -> onnx.TensorProto:
    rng = np.random.default_rng(zlib.crc32(f"{name}{list(shape)}{seed}".encode()))
    return numpy_helper.from_array((rng.standard_normal(shape) * 0.5).astype(np.float32), name)


def random_inputs(model: onnx.ModelProto, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    inits = {i.name for i in model.graph.initializer}
    return [
        rng.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim]).astype(np.float32)
        for i in model.graph.input
        if i.name not in inits
    ]


def compile_and_compare(model: onnx.ModelProto, target: str, tmp_path: Path, samples: int = 1,
                        options: BuildOptions | None = None) -> float:  # fmt: skip
    """Build `model` for `target`, run `samples` random inputs on it, return the relative error."""
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    # Every host build of a test model is -Werror and runs under AddressSanitizer + UBSan.
    options = options or BuildOptions(extra_cflags="-Werror", sanitize=target == "host")
    result = build(path, load_target(target), tmp_path / f"out-{target}", options, log=lambda *_: None)
    data = [random_inputs(result.model, seed) for seed in range(samples)]
    runs = run_samples(result, data)
    ref = Reference(result.model)
    cmp = compare([r.outputs for r in runs], [ref.run(d) for d in data])
    return cmp.rel_error


def typed_model(nodes, inputs, outputs, inits=(), opset=13) -> onnx.ModelProto:
    """A checked model; inputs/outputs as (name, shape) float32 or (name, shape, elem_type)."""

    def info(spec):
        name, shape, *elem = spec
        return helper.make_tensor_value_info(name, elem[0] if elem else TensorProto.FLOAT, shape)

    graph = helper.make_graph(nodes, "wild", [info(i) for i in inputs], [info(o) for o in outputs], list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10 if opset > 19 else 8
    onnx.checker.check_model(model, full_check=True)
    return model


def sample_for(model: onnx.ModelProto, seed: int, int_high: dict[str, int] | None = None) -> list[np.ndarray]:
    """Random inputs: floats ~ N(0, 1), integers (indices) uniform in [0, int_high[name]), bools fair."""
    rng = np.random.default_rng(seed)
    inits = {i.name for i in model.graph.initializer}
    out = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        shape = [d.dim_value for d in tt.shape.dim]
        dtype = helper.tensor_dtype_to_np_dtype(tt.elem_type)
        if dtype.kind == "f":
            out.append(rng.standard_normal(shape).astype(dtype))
        elif dtype == np.bool_:
            out.append(rng.random(shape) < 0.5)
        else:
            out.append(rng.integers(0, (int_high or {}).get(vi.name, 2), shape).astype(dtype))
    return out


def errors_vs_onnxruntime(model: onnx.ModelProto, target: str, tmp_path: Path, samples: int = 2,
                          int_high: dict[str, int] | None = None, canon=None,
                          reference: onnx.ModelProto | None = None) -> list[float]:  # fmt: skip
    """Build `model` for `target`, run it on random samples; per output, its error against
    onnxruntime: max |got - want| / max |want| for floats, the count of differing values for
    integers and bools (must be 0). `canon` maps both output lists to a canonical form first
    (for outputs whose order ONNX leaves open); `reference` is the model onnxruntime runs instead
    (the same function, for an op form onnxruntime lacks)."""
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    options = BuildOptions(extra_cflags="-Werror", sanitize=target == "host")
    result = build(path, load_target(target), tmp_path / f"out-{target}", options, log=lambda *_: None)
    data = [sample_for(result.model, seed, int_high) for seed in range(samples)]
    runs = run_samples(result, data)
    ref = Reference(reference or model)
    errs: list[float] = []
    for run, sample in zip(runs, data, strict=True):
        got, want = run.outputs, ref.run(sample)
        if canon is not None:
            got, want = canon(got), canon(want)
        assert len(got) == len(want)
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert g.shape == w.shape, f"output {i}: shape {g.shape}, expected {w.shape}"
            assert g.dtype == w.dtype, f"output {i}: {g.dtype}, expected {w.dtype}"
            if w.dtype.kind == "f":  # equal values (infinities too) are no error
                finite = np.abs(w[np.isfinite(w)])
                scale = max(float(finite.max()) if finite.size else 1.0, 1e-30)
                with np.errstate(invalid="ignore"):
                    diff = np.where(g == w, 0.0, np.abs(g.astype(np.float64) - w))
                err = float(np.max(diff)) / scale if w.size else 0.0
            else:
                err = float(np.sum(g != w))
            if len(errs) <= i:
                errs.append(err)
            errs[i] = max(errs[i], err)
    return errs


def assert_outputs_match(model: onnx.ModelProto, errors: list[float], tol: float = 1e-4) -> None:
    """errors_vs_onnxruntime's figures within `tol` for float outputs, zero for the others."""
    for out, err in zip(model.graph.output, errors, strict=True):
        exact = out.type.tensor_type.elem_type not in (TensorProto.FLOAT, TensorProto.DOUBLE)
        assert err <= (0 if exact else tol), f"output {out.name}: error {err}"


def weight_bytes(elf_path: Path) -> list[tuple[str, int, int]]:
    """(symbol, file offset, size) of every constant of the model (ec_c<N>) in the ELF."""
    found = []
    with elf_path.open("rb") as f:
        elf = ELFFile(f)
        sections = list(elf.iter_sections())
        for sym in elf.get_section_by_name(".symtab").iter_symbols():
            if not sym.name.startswith("ec_c") or not sym.name[4:].isdigit() or not sym["st_size"]:
                continue
            sec = sections[sym["st_shndx"]]
            found.append((sym.name, sym["st_value"] - sec["sh_addr"] + sec["sh_offset"], sym["st_size"]))
    return sorted(found, key=lambda s: s[1])
