"""Fuzzing the inputs users hand edgecomp: ONNX files, --input/--calib data and target files.

Property: whatever the bytes, the front end either accepts the model or raises an edgecomp
error with exit code 2 and a one-line message; never another exception, never a hang (each
example has a deadline). Hypothesis derandomized, so CI runs the same examples every time.
A sample of mutants also goes through the CLI end to end: one line on stderr, exit 0 or 2, and
no output folder left behind by a failed build.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import make_model, weight
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from edgecomp.errors import EdgecompError
from edgecomp.frontend import load_model
from edgecomp.io import load_calibration, load_samples
from edgecomp.resources import data_dir
from edgecomp.targets import load_target

FUZZ = settings(
    max_examples=800,
    deadline=5000,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _seed_models() -> list[onnx.ModelProto]:
    conv = [helper.make_node("Conv", ["x", "w", "b"], ["c"], "conv", pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["r"], "relu"),
            helper.make_node("Flatten", ["r"], ["f"], "flat"),
            helper.make_node("Gemm", ["f", "gw"], ["y"], "fc", transB=1)]  # fmt: skip
    cnn = make_model(conv, [("x", [1, 2, 4, 4])], [("y", [1, 3])],
                     [weight("w", [4, 2, 3, 3]), weight("b", [4]), weight("gw", [3, 64])])  # fmt: skip
    add = make_model(
        [helper.make_node("Add", ["x", "k"], ["s"], "add"), helper.make_node("Softmax", ["s"], ["y"], "sm")],
        [("x", [2, 5])], [("y", [2, 5])], [weight("k", [5])],
    )  # fmt: skip
    return [cnn, add]


SEEDS = _seed_models()
SEED_BYTES = [m.SerializeToString() for m in SEEDS]


def _front_end(data: bytes, tmp: Path) -> None:
    path = tmp / "fuzz.onnx"
    path.write_bytes(data)
    try:
        load_model(path)
    except EdgecompError as exc:
        assert exc.exit_code == 2, f"exit code {exc.exit_code} for: {exc}"
        text = str(exc)
        assert text and "\n" not in text and "Traceback" not in text, text


@FUZZ
@given(
    seed=st.sampled_from(SEED_BYTES), cut=st.floats(0, 1), flips=st.lists(st.integers(0, 10**9), max_size=12)
)
def test_truncated_and_bit_flipped_protobufs(seed, cut, flips, tmp_path_factory):
    data = bytearray(seed[: int(len(seed) * cut) or 1]) if cut < 0.97 else bytearray(seed)
    for f in flips:
        data[f % len(data)] ^= 1 << (f % 8)
    _front_end(bytes(data), tmp_path_factory.mktemp("fz"))


def _mutate(model: onnx.ModelProto, kind: str, k: int) -> onnx.ModelProto:
    """One structural defect of the kind users' exporters produce."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    if (
        not g.node
        or not g.input
        or (not g.initializer and "initializer" in kind)
        or (kind == "raw_data_mismatch" and not g.initializer)
    ):
        return m
    node = g.node[k % len(g.node)]
    if kind == "dangling_edge":
        node.input[0] = f"nowhere_{k}"
    elif kind == "cycle":
        node.input[0] = g.node[-1].output[0] if k % 2 else node.output[0]
    elif kind == "wrong_elem_type":
        g.input[0].type.tensor_type.elem_type = k % 30
    elif kind == "wrong_initializer_type":
        g.initializer[k % len(g.initializer)].data_type = k % 30
    elif kind == "absurd_shape":
        dims = g.input[0].type.tensor_type.shape.dim
        if not dims:
            return m
        dims[k % len(dims)].dim_value = [2**40, -3, 0, 10**12, 2**31 + 1][k % 5]
    elif kind == "huge_initializer":
        t = g.initializer[k % len(g.initializer)]
        t.dims[:] = [2**20, 2**20]
    elif kind == "unknown_domain":
        node.domain = f"com.example{k}"
    elif kind == "unknown_op":
        node.op_type = f"Frobnicate{k}"
    elif kind == "missing_initializer":
        del g.initializer[k % len(g.initializer)]
    elif kind == "bad_attribute":
        node.attribute.append(helper.make_attribute("kernel_shape", [float(k), -1.5]))
    elif kind == "opset":
        m.opset_import[0].version = [0, 1, 7, 99, 10**6][k % 5]
    elif kind == "ir_version":
        m.ir_version = [0, 1, 99, -1][k % 4]
    elif kind == "no_outputs":
        del g.output[:]
    elif kind == "duplicate_output" and node.output:
        g.node[(k + 1) % len(g.node)].output[0] = node.output[0]
    elif kind == "string_input":
        g.input[0].type.tensor_type.elem_type = TensorProto.STRING
    elif kind == "raw_data_mismatch":
        t = g.initializer[k % len(g.initializer)]
        t.raw_data = (t.raw_data or np.array(t.float_data, np.float32).tobytes())[: -(k % 7 + 1)]
        del t.float_data[:]
    return m


KINDS = ["dangling_edge", "cycle", "wrong_elem_type", "wrong_initializer_type", "absurd_shape",
         "huge_initializer", "unknown_domain", "unknown_op", "missing_initializer", "bad_attribute",
         "opset", "ir_version", "no_outputs", "duplicate_output", "string_input", "raw_data_mismatch"]  # fmt: skip


@FUZZ
@given(seed=st.sampled_from(range(len(SEEDS))), kinds=st.lists(st.sampled_from(KINDS), min_size=1, max_size=3),
       k=st.integers(0, 1000))  # fmt: skip
def test_structurally_broken_models(seed, kinds, k, tmp_path_factory):
    model = SEEDS[seed]
    for i, kind in enumerate(kinds):
        model = _mutate(model, kind, k + i)
    _front_end(model.SerializeToString(), tmp_path_factory.mktemp("fz"))


@settings(max_examples=300, deadline=5000, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(data=st.binary(max_size=400), kind=st.sampled_from(["npy", "npz", "raw"]), header=st.booleans())
def test_bad_input_and_calibration_files(data, kind, header, tmp_path_factory):
    """--input / --calib readers: any bytes give data of the model's shape or a one-line error."""
    path = tmp_path_factory.mktemp("in") / f"data.{'npy' if kind == 'raw' else kind}"
    prefix = b"\x93NUMPY\x01\x00" if header else b""
    if kind == "npz":
        prefix = b"PK\x03\x04" if header else b""
    path.write_bytes(prefix + data)
    specs = [{"name": "x", "shape": [1, 2, 4, 4], "dtype": "float32"}]
    for reader in (load_samples, load_calibration):
        try:
            reader(path, specs)
        except EdgecompError as exc:
            assert exc.exit_code == 2 and "\n" not in str(exc), str(exc)


@pytest.mark.parametrize(
    "array",
    [np.zeros((3, 3), np.float32), np.array(["a", "b"]), np.zeros((2, 1, 2, 4, 5), np.float32),
     np.full((1, 2, 4, 4), 1e40), np.zeros((0, 2, 4, 4), np.float32), np.array(3.0)],
    ids=["wrong-shape", "strings", "wrong-sample-shape", "overflow", "no-samples", "scalar"],
)  # fmt: skip
def test_bad_arrays_are_one_line_errors(array, tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, array)
    specs = [{"name": "x", "shape": [1, 2, 4, 4], "dtype": "float32"}]
    for reader in (load_samples, load_calibration):
        try:
            out = reader(path, specs)
        except EdgecompError as exc:
            assert exc.exit_code == 2 and "\n" not in str(exc), str(exc)
        else:
            assert out and all(s[0].shape == (1, 2, 4, 4) for s in out)


def _target_variants() -> list[str]:
    text = (data_dir("targets") / "cortex-m7.toml").read_text()
    return text.splitlines()


TARGET_LINES = _target_variants()


@settings(max_examples=300, deadline=5000, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(drop=st.sets(st.integers(0, len(TARGET_LINES) - 1), max_size=4),
       edits=st.lists(st.tuples(st.integers(0, len(TARGET_LINES) - 1),
                                st.sampled_from(['"x"', "-1", "3.5", "[1, 2]", "true", "{", "0", '""'])),
                      max_size=3))  # fmt: skip
def test_bad_target_files(drop, edits, tmp_path_factory):
    lines = list(TARGET_LINES)
    for i, value in edits:
        if "=" in lines[i]:
            lines[i] = lines[i].split("=", 1)[0] + "= " + value
    text = "\n".join(line for i, line in enumerate(lines) if i not in drop)
    path = tmp_path_factory.mktemp("tg") / "board.toml"
    path.write_text(text)
    try:
        load_target(str(path))
    except EdgecompError as exc:
        assert exc.exit_code == 2 and "\n" not in str(exc), str(exc)


@pytest.mark.slow
@pytest.mark.parametrize("k", range(24))
def test_cli_on_mutants_is_one_line_and_leaves_nothing(k, tmp_path):
    """End to end through `edgecomp build`: a broken model exits 2 with one stderr line and no
    output folder; one that survives the mutation builds (exit 0)."""
    kind = KINDS[k % len(KINDS)]
    model = _mutate(SEEDS[k % len(SEEDS)], kind, k)
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "edgecomp", "build", str(path), "-t", "host", "-o", str(out), "-q"],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode in (0, 2), (kind, proc.returncode, proc.stderr)
    if proc.returncode == 2:
        assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert not out.exists()
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")], (
            "temporary folder left behind"
        )
