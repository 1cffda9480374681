"""Generated code: liveness-planned arena, deterministic bytes, C99 without warnings, sanitizer-clean."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import HAVE_ARM, compile_and_compare, make_model, random_inputs, weight, weight_bytes
from onnx import helper
from test_ops import MODELS

from edgecomp.codegen.memory import Buffer, plan_arena
from edgecomp.pipeline import BuildOptions, build
from edgecomp.runner import run_samples
from edgecomp.targets import load_target

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "tiny_cnn.onnx"


def test_arena_plan_never_overlaps_live_buffers():
    rng = np.random.default_rng(0)
    for _ in range(50):
        bufs = []
        for i in range(int(rng.integers(1, 25))):
            first = int(rng.integers(0, 20))
            bufs.append(Buffer(f"b{i}", int(rng.integers(1, 5000)), first, first + int(rng.integers(0, 6))))
        plan = plan_arena(bufs)
        assert plan.arena_bytes <= plan.unshared_bytes
        for a in bufs:
            assert plan.offsets[a.name] % 16 == 0
            assert plan.offsets[a.name] + a.size <= plan.arena_bytes
            for b in bufs:
                if a is b or a.last < b.first or b.last < a.first:
                    continue
                a0, b0 = plan.offsets[a.name], plan.offsets[b.name]
                assert a0 + a.size <= b0 or b0 + b.size <= a0, (a, b)
        assert plan_arena(list(reversed(bufs))).offsets == plan.offsets


def test_chain_reuses_memory():
    # x -> t0 -> t1 -> t2: t0 and t2 can share, so the arena is two buffers, not three.
    bufs = [Buffer("t0", 1000, 0, 1), Buffer("t1", 1000, 1, 2), Buffer("t2", 1000, 2, 3)]
    assert plan_arena(bufs).arena_bytes == 2 * 1008


def _files(folder: Path) -> dict[str, bytes]:
    skip = {"report.json", "firmware.map"}
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name not in skip and "obj" not in p.parts}  # fmt: skip


@pytest.mark.parametrize("dtype", ["fp32", "int8"])
@pytest.mark.parametrize("target", ["host", "cortex-m7"] if HAVE_ARM else ["host"])
def test_same_input_same_bytes(target, dtype, tmp_path):
    if dtype == "fp32":
        a = build(EXAMPLE, load_target(target), tmp_path / "a", log=lambda *_: None)
        b = build(EXAMPLE, load_target(target), tmp_path / "b", log=lambda *_: None)
    else:
        a, b = _int8_example(tmp_path, target, "a"), _int8_example(tmp_path, target, "b")
    fa, fb = _files(a.outdir), _files(b.outdir)
    assert fa.keys() == fb.keys() and "model.c" in fa
    assert [k for k in fa if fa[k] != fb[k]] == []


def _int8_example(tmp_path: Path, target: str, subdir: str = "q"):
    calib = tmp_path / "calib.npy"
    np.save(calib, np.random.default_rng(0).standard_normal((8, 1, 1, 28, 28)).astype(np.float32))
    return build(EXAMPLE, load_target(target), tmp_path / subdir, BuildOptions(quantize="int8"),
                 log=lambda *_: None, calib=calib)  # fmt: skip


COMPILERS = [("gcc", [])] + ([("arm-none-eabi-gcc", ["-mcpu=cortex-m7", "-mthumb"])] if HAVE_ARM else [])


@pytest.mark.parametrize("dtype", ["fp32", "int8"])
@pytest.mark.parametrize("cc,arch", COMPILERS)
def test_generated_c_is_pedantic_c99_and_warning_free(dtype, cc, arch, tmp_path):
    """TVM's kernels (fp32) and the micro-kernels (int8: portable C on the host, DSP on the M7)."""
    if dtype == "fp32":
        result = build(EXAMPLE, load_target("host"), tmp_path / "o", log=lambda *_: None)
    else:
        result = _int8_example(tmp_path, "host")
        assert "ec_mk" in (result.outdir / "model_kernels.c").read_text()
    for name in ("model.c", "model_weights.c", "model_kernels.c"):
        proc = subprocess.run(
            [cc, *arch, "-std=c99", "-pedantic", "-Wall", "-Wextra", "-Werror", "-I.", "-c", name, "-o", "/dev/null"],
            cwd=result.outdir, capture_output=True, text=True,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr


def test_generated_code_has_no_malloc_and_no_tvm_runtime(tmp_path):
    result = build(EXAMPLE, load_target("host"), tmp_path / "o", log=lambda *_: None)
    text = "".join((result.outdir / n).read_text() for n in ("model.c", "model_kernels.c", "model_weights.c"))
    assert "malloc" not in text and "tvm/" not in text
    nm = subprocess.run(
        ["nm", "-u", str(result.outdir / "obj" / "model_kernels.o")], capture_output=True, text=True
    )
    undefined = {line.split()[-1] for line in nm.stdout.splitlines()}
    assert undefined <= {"expf", "TVMBackendAllocWorkspace", "TVMBackendFreeWorkspace"}, undefined


@pytest.mark.parametrize("name", ["residual_block", "depthwise", "softmax", "concat"])
def test_asan_ubsan_clean(name, tmp_path):
    rel = compile_and_compare(MODELS[name](), "host", tmp_path, samples=2,
                              options=BuildOptions(extra_cflags="-Werror", sanitize=True))  # fmt: skip
    assert rel <= 1e-4


@pytest.mark.parametrize("name", ["conv_k27_odd_pixels", "depthwise_5x4_dilated", "dense_k30_out7",
                                  "residual_add_fused", "conv_wide_weights", "conv_dilated_nopad", "dense_batch3"])  # fmt: skip
def test_micro_kernels_asan_ubsan_clean(name, tmp_path):
    from test_microkernels import CASES

    from edgecomp.passes.quantize import quantize

    model = CASES[name]()
    qmodel = quantize(model, [random_inputs(model, s) for s in range(8)]).model
    path = tmp_path / "q.onnx"
    onnx.save(qmodel, path)
    result = build(path, load_target("host"), tmp_path / "o", BuildOptions(extra_cflags="-Werror", sanitize=True),
                   log=lambda *_: None)  # fmt: skip
    assert "ec_mk" in (result.outdir / "model_kernels.c").read_text()
    (run,) = run_samples(result, [random_inputs(model, 0)])  # a sanitizer report fails the run
    assert run.outputs[0].shape == tuple(result.report["outputs"][0]["shape"])


@pytest.mark.parametrize("target", ["host"] + (["cortex-m7"] if HAVE_ARM else []))
def test_a_model_without_inputs_and_the_extreme_int64_constants_compile_warning_free(target, tmp_path):
    """No inputs: no zero-length arrays, no always-false `i < 0u`; INT64_MIN and the largest uint64
    as C literals that are not warnings (the minus of a too-large constant)."""
    from onnx import TensorProto, helper, numpy_helper

    big = np.array([np.iinfo(np.int64).min, 5, np.iinfo(np.int64).max], dtype=np.int64)
    ubig = np.array([np.iinfo(np.uint64).max, 0, 1 << 63], dtype=np.uint64)
    nodes = [helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(big, "k")),
             helper.make_node("Constant", [], ["u"], value=numpy_helper.from_array(ubig, "u")),
             helper.make_node("Identity", ["k"], ["y"]), helper.make_node("Identity", ["u"], ["z"])]  # fmt: skip
    graph = helper.make_graph(nodes, "consts", [], [helper.make_tensor_value_info("y", TensorProto.INT64, [3]),
                                                    helper.make_tensor_value_info("z", TensorProto.UINT64, [3])])  # fmt: skip
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    options = BuildOptions(extra_cflags="-Werror", sanitize=target == "host")
    result = build(path, load_target(target), tmp_path / "o", options, log=lambda *_: None)
    y, z = run_samples(result, [[]])[0].outputs
    np.testing.assert_array_equal(y, big)
    np.testing.assert_array_equal(z, ubig)


def test_weights_are_binary_data_not_c_literals(tmp_path):
    """model_weights.c declares the constants and .incbin's their bytes from model_weights.bin: its
    size does not grow with the weights (4 MB of them here), each constant lands in the executable
    with its bytes at the offset the declaration states, and the model still computes the same."""
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], transB=1)]  # fmt: skip
    inits = [weight("w1", [1024, 1000]), weight("b1", [1024]), weight("w2", [3, 1024]), weight("b2", [3])]
    model = make_model(nodes, [("x", [1, 1000])], [("y", [1, 3])], inits)
    assert compile_and_compare(model, "host", tmp_path) <= 1e-4
    out = tmp_path / "out-host"
    source = (out / "model_weights.c").read_text()
    blob = (out / "model_weights.bin").read_bytes()
    assert len(blob) >= 4 * 1024 * 1000 and len(source) < 4096
    places = {m[3]: (int(m[2]), int(m[1])) for m in re.finditer(
        r"(\d+) bytes at model_weights\.bin \+ (\d+) \*/\nextern const \w+ (ec_c\d+)\[", source)}  # fmt: skip
    found = weight_bytes(out / "harness")
    assert len(places) == 4 and sorted(name for name, _, _ in found) == sorted(places)
    elf = (out / "harness").read_bytes()
    for name, at, size in found:
        start, nbytes = places[name]
        assert size == nbytes and start % 16 == 0, name
        assert elf[at : at + size] == blob[start : start + nbytes], name


def test_a_kernel_taking_one_constant_twice_gets_the_right_descriptors(tmp_path):
    """Equal constants are stored once, so one fused kernel can take the same tensor twice (here
    6.0 for the Add and for the Div, as hard-swish exports write it); every later kernel argument
    must still point at its own descriptor (PP-OCRv4 rec wrote its output into a constant)."""
    from onnx import numpy_helper

    def six(name: str) -> onnx.TensorProto:
        return numpy_helper.from_array(np.full([1], 6.0, np.float32), name)

    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c", "six_a"], ["a"]), helper.make_node("Div", ["a", "six_b"], ["d"]),
             helper.make_node("Conv", ["d", "w2"], ["e"], pads=[1, 1, 1, 1]), helper.make_node("Sigmoid", ["e"], ["y"])]  # fmt: skip
    model = make_model(nodes, [("x", [1, 2, 6, 6])], [("y", [1, 3, 6, 6])],
                       [weight("w", [4, 2, 3, 3]), six("six_a"), six("six_b"), weight("w2", [3, 4, 3, 3])])  # fmt: skip
    assert compile_and_compare(model, "host", tmp_path) < 1e-5  # ASan: a write into a constant fails the run
