"""Patch-based execution (quant/patches.py): the first stage of a quantized CNN computed patch by
patch gives the same integers as the whole-tensor graph, for every cut and grid; a patched build
runs bit-exactly on the host and in QEMU with a smaller arena; --max-ram is met or refused with by
how much."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
from conftest import HAVE_ARM, make_model, weight
from onnx import helper

from edgecomp.errors import DoesNotFitError
from edgecomp.pipeline import BuildOptions, build
from edgecomp.quant import patches, run_int_graph
from edgecomp.runner import run_samples
from edgecomp.targets import load_target
from edgecomp.validate import validate
from edgecomp.verify import check_outputs

H = 22  # not a multiple of the grids: uneven patches


def cnn() -> onnx.ModelProto:
    """Conv (padded) -> ReLU -> depthwise 3x3 -> pointwise + residual Add -> max pool (padded) ->
    conv stride 2 -> average pool -> conv 1x1: every window op, halos, borders and a residual."""
    nodes = [
        helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c0"], ["r0"]),
        helper.make_node("Conv", ["r0", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], group=8),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"]),
        helper.make_node("Add", ["c2", "r0"], ["a2"]),
        helper.make_node("MaxPool", ["a2"], ["p2"], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["p2", "w3", "b3"], ["c3"], strides=[2, 2], pads=[0, 0, 1, 1]),
        helper.make_node("Relu", ["c3"], ["r3"]),
        helper.make_node("AveragePool", ["r3"], ["ap"], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["ap", "w4", "b4"], ["y"]),
    ]
    inits = [weight("w0", (8, 3, 3, 3)), weight("b0", (8,)), weight("w1", (8, 1, 3, 3)), weight("b1", (8,)),
             weight("w2", (8, 8, 1, 1)), weight("b2", (8,)), weight("w3", (12, 8, 3, 3)), weight("b3", (12,)),
             weight("w4", (4, 12, 1, 1)), weight("b4", (4,))]  # fmt: skip
    return make_model(nodes, [("x", [1, 3, H, H])], [("y", [1, 4, H // 2, H // 2])], inits)


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("patches")
    onnx.save(cnn(), d / "cnn.onnx")
    np.save(d / "calib.npy", np.random.default_rng(3).standard_normal((8, 1, 3, H, H)).astype(np.float32))
    return d / "cnn.onnx", d / "calib.npy"


def _build(model_files, target, out, **options):
    model, calib = model_files
    opts = BuildOptions(quantize="int8", integrity=False, dead_channels="none", **options)
    return build(model, load_target(target), out, opts, calib=calib, log=lambda *_: None)


def test_every_cut_and_grid_gives_the_same_integers(model_files, tmp_path):
    graph = _build(model_files, "host", tmp_path / "o").int_graph
    cuts = patches.candidates(graph)
    assert len(cuts) >= 4, cuts
    xs = [[np.random.default_rng(s).standard_normal((1, 3, H, H)).astype(np.float32)] for s in range(2)]
    want = [run_int_graph(graph, x) for x in xs]
    for cut in cuts:
        h, w = graph.tensors[cut].shape[2:]
        for grid in {(2, 2), (3, 3), (min(5, h), 2), (1, min(4, w)), (h, w)}:
            patched = patches.patch_graph(graph, cut, grid)
            assert sum(type(op).__name__ == "Place" for op in patched.ops) == grid[0] * grid[1]
            for x, y in zip(xs, want, strict=True):
                got = run_int_graph(patched, x)
                assert all(np.array_equal(a, b) for a, b in zip(got, y, strict=True)), (cut, grid)


def test_the_estimate_falls_and_the_macs_grow(model_files, tmp_path):
    graph = _build(model_files, "host", tmp_path / "o").int_graph
    plans = patches.all_plans(graph)
    assert plans and all(p.peak_bytes < p.peak_bytes_before for p in plans)
    best = patches.smallest_peak(plans, float("inf"))
    assert best.macs > best.macs_before  # halos are computed twice
    capped = patches.smallest_peak(plans, 1.0)
    assert capped is None or capped.macs == capped.macs_before


@pytest.mark.parametrize("target", ["host"] + (["cortex-m7"] if HAVE_ARM else []))
def test_a_patched_build_runs_bit_exact_with_a_smaller_arena(model_files, target, tmp_path):
    plain = _build(model_files, target, tmp_path / "plain")
    patched = _build(model_files, target, tmp_path / "patched", patch="auto:4")
    rep = patched.report["patches"]
    assert rep["grid"][0] * rep["grid"][1] > 1
    assert patched.report["arena_bytes"] < plain.report["arena_bytes"]
    xs = [[np.random.default_rng(s).standard_normal((1, 3, H, H)).astype(np.float32)] for s in range(3)]
    outs = [r.outputs for r in run_samples(patched, xs)]
    assert check_outputs(patched, xs, outs, 1e-4).ok
    # The same integers as the unpatched build, and every step of the patched one checks out.
    plain_outs = [r.outputs for r in run_samples(plain, xs)]
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(outs, plain_outs, strict=True))
    v = validate(patched, xs[0])
    assert v.ok and all(c.status == "match" for c in v.layers)
    # A cached rebuild keeps the patching (its integer graph is the one compiled).
    again = _build(model_files, target, tmp_path / "patched", patch="auto:4")
    assert len(again.int_graph.ops) == len(patched.int_graph.ops)


def test_patching_with_a_name_a_caller_arena_and_an_export(model_files, tmp_path):
    """Patched kernels (specialised identically, stored once) take the model's namespace: a named,
    caller-arena build gives the unnamed build's integers under ASan/UBSan, and an export records
    its patching and defines no global outside its prefix."""
    from edgecomp.export import export

    plain = _build(model_files, "host", tmp_path / "plain", patch="auto:4")
    named = _build(model_files, "host", tmp_path / "named", patch="auto:4", name="det", arena="caller",
                   sanitize=True, extra_cflags="-Werror")  # fmt: skip
    assert named.report["patches"] == plain.report["patches"]
    xs = [[np.random.default_rng(s).standard_normal((1, 3, H, H)).astype(np.float32)] for s in range(2)]
    for a, b in zip(run_samples(named, xs), run_samples(plain, xs), strict=True):
        assert np.array_equal(a.outputs[0], b.outputs[0])
    model, calib = model_files
    opts = BuildOptions(quantize="int8", integrity=False, dead_channels="none", patch="auto:4", name="det",
                        arena="caller", extra_cflags="-Werror")  # fmt: skip
    rep = export(model, load_target("host"), tmp_path / "exp", opts, "cmake", calib=calib, log=lambda *_: None).report
    assert rep["patches"] == plain.report["patches"]
    assert [s for s in rep["library"]["global_symbols"] if not s.startswith("det_")] == []


@pytest.mark.skipif(not HAVE_ARM, reason="needs arm-none-eabi-gcc and qemu-system-arm")
def test_max_ram_is_met_or_refused_with_the_shortfall(model_files, tmp_path):
    target = load_target("cortex-m7")
    plain = _build(model_files, "cortex-m7", tmp_path / "plain")
    small = _build(model_files, "cortex-m7", tmp_path / "small", patch="auto:4")
    # A budget below the unpatched build that a patching is known to meet (the planner keeps 768 B
    # for the RAM besides the arena, 536 B here).
    budget = small.report["ram_bytes"] + small.report["stack_reserved_bytes"] + 240
    assert budget < plain.report["ram_bytes"] + plain.report["stack_reserved_bytes"]
    fitted = _build(model_files, "cortex-m7", tmp_path / "fit", max_ram=budget)
    assert fitted.report["patches"]["max_ram"] == budget
    assert fitted.report["ram_bytes"] + fitted.report["stack_reserved_bytes"] <= budget
    assert fitted.report["macs"] <= small.report["macs"]  # the fewest MACs that meet it
    xs = [[np.random.default_rng(7).standard_normal((1, 3, H, H)).astype(np.float32)]]
    assert check_outputs(fitted, xs, [r.outputs for r in run_samples(fitted, xs)], 1e-4).ok
    with pytest.raises(DoesNotFitError, match="--max-ram"):
        _build(model_files, "cortex-m7", tmp_path / "no", max_ram=target.memory["stack_bytes"] + 2048)


def test_cli_rejects_a_bad_patch_and_a_float_model(model_files, tmp_path):
    model, _ = model_files
    base = [sys.executable, "-m", "edgecomp", "build", str(model), "-t", "host", "-o", str(tmp_path / "o")]
    for extra, words in ((["--patch", "c0:2by2"], "--patch takes"), (["--patch", "auto"], "quantized models"),
                         (["--quantize", "int8", "--calib", str(model_files[1]), "--patch", "nosuch:2x2"],
                          "not the end of a patchable stage")):  # fmt: skip
        proc = subprocess.run([*base, *extra], capture_output=True, text=True, timeout=600)
        assert proc.returncode == 2, proc.stderr
        assert words in proc.stderr and "Traceback" not in proc.stderr


def resnet() -> onnx.ModelProto:
    """ResNet-8's first stages in small: a stem conv, a residual block, then a stride-2 block with a
    1x1 stride-2 shortcut, pooled: the stage up to the second Add is what patching cuts."""
    nodes = [
        helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c0"], ["r0"]),
        helper.make_node("Conv", ["r0", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["r0", "c2"], ["a2"]),
        helper.make_node("Relu", ["a2"], ["s1"]),
        helper.make_node("Conv", ["s1", "w3", "b3"], ["c3"], strides=[2, 2], pads=[0, 0, 1, 1]),
        helper.make_node("Relu", ["c3"], ["r3"]),
        helper.make_node("Conv", ["r3", "w4", "b4"], ["c4"], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["s1", "w5", "b5"], ["c5"], strides=[2, 2]),
        helper.make_node("Add", ["c5", "c4"], ["a4"]),
        helper.make_node("Relu", ["a4"], ["s2"]),
        helper.make_node("GlobalAveragePool", ["s2"], ["y"]),
    ]
    inits = [weight("w0", (24, 3, 3, 3)), weight("b0", (24,)), weight("w1", (24, 24, 3, 3)), weight("b1", (24,)),
             weight("w2", (24, 24, 3, 3)), weight("b2", (24,)), weight("w3", (32, 24, 3, 3)), weight("b3", (32,)),
             weight("w4", (32, 32, 3, 3)), weight("b4", (32,)), weight("w5", (32, 24, 1, 1)), weight("b5", (32,))]  # fmt: skip
    return make_model(nodes, [("x", [1, 3, RH, RW])], [("y", [1, 32, 1, 1])], inits)


RH, RW = 32, 12  # tall: bands recompute only halo rows


@pytest.mark.parametrize("target", ["host"] + (["cortex-m7"] if HAVE_ARM else []))
def test_band_patching_of_residual_stages_is_bit_exact_and_crops_in_place(target, tmp_path):
    """Full-width bands (Rx1) through both residual blocks, up to the stride-2 block's Add: the
    integers of the integer reference on the host and in QEMU; the residual branches are cropped where
    their whole window dies, in that window's buffer, and the arena falls below the unpatched one's."""
    onnx.save(resnet(), tmp_path / "resnet.onnx")
    np.save(tmp_path / "calib.npy", np.random.default_rng(5).standard_normal((8, 1, 3, RH, RW)).astype(np.float32))
    files = tmp_path / "resnet.onnx", tmp_path / "calib.npy"
    plain = _build(files, target, tmp_path / "plain", io="int8")
    cut = [op.output for op in plain.int_graph.ops if type(op).__name__ == "Add"][-1]
    assert plain.int_graph.tensors[cut].shape == (1, 32, RH // 2, RW // 2)
    assert any(p.grid == (4, 1) for p in patches.all_plans(plain.int_graph))  # bands are among the plans
    banded = _build(files, target, tmp_path / "band", io="int8", patch=f"{cut}:4x1")
    assert banded.report["patches"]["grid"] == [4, 1]
    # Each patch crops the stem's output for the first Add and the first block's output for the 1x1
    # shortcut, each in the buffer of the window it is cut from.
    in_place = {b["name"] for b in banded.report["memory_plan"] if "in_place_of" in b}
    crops = [layer["outputs"][0] for layer in banded.report["layers"] if layer["variant"] == "crop"]
    assert len([c for c in crops if c in in_place]) >= 2 * 4, (crops, in_place)
    # Cropped before the block's second convolution, which then applies both Adds in its epilogue.
    kernels = [layer["kernel"] for layer in banded.report["layers"]]
    assert sum("conv_add" in k for k in kernels) == 2 * 4, kernels
    assert not any(layer["variant"] == "add_s8" for layer in banded.report["layers"])
    assert banded.report["arena_bytes"] < plain.report["arena_bytes"]
    rng = np.random.default_rng(0)
    xs = [[rng.integers(-128, 128, (1, 3, RH, RW)).astype(np.int8)] for _ in range(3)]
    for x, run in zip(xs, run_samples(banded, xs), strict=True):
        assert np.array_equal(run.outputs[0], run_int_graph(plain.int_graph, x)[0])
