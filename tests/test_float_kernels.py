"""The float micro-kernels (conv_f32, dwconv_f32, dense_f32: templates/kernels/, chosen on targets
that declare "fpu") on the shapes their loops split on: odd channel and pixel counts, strides,
asymmetric padding, dilation, batch, 1x1 layers read in place, depthwise filters of more taps than
registers, dense layers with and without bias, fused ReLU / Clip (both bounds, one) and residual
Adds (in place where the residual dies there, not when it is also the layer's input). Within 1e-4
of onnxruntime on the host (portable C, ASan/UBSan, -Werror) and in QEMU on a Cortex-M7, M4 and M55
(VFMA); the layers no variant covers stay with TVM's kernels."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
from conftest import HAVE_ARM, make_model, random_inputs, weight
from onnx import helper, numpy_helper

from edgecomp.pipeline import BuildOptions, build
from edgecomp.runner import run_samples
from edgecomp.targets import load_target
from edgecomp.verify import Reference, compare


def _conv(x, y, w, b=None, k=3, stride=1, dil=1, pads=(1, 1, 1, 1), group=1, kshape=None):
    ins = [x, w] + ([b] if b else [])
    kh, kw = kshape or (k, k)
    return helper.make_node("Conv", ins, [y], kernel_shape=[kh, kw], strides=[stride, stride],
                            dilations=[dil, dil] if isinstance(dil, int) else list(dil), pads=list(pads),
                            group=group)  # fmt: skip


def _clip(x, y, lo=None, hi=None):
    return helper.make_node("Clip", [x, "" if lo is None else lo, "" if hi is None else hi], [y])


def _scalar(name, v):
    return numpy_helper.from_array(np.array(v, np.float32), name)


def conv_odd():
    """3->5 channels on a 7x9 image (63 pixels: a last block of three), ReLU; 5->6 stride 2 with
    TensorFlow's SAME padding (bottom/right only), Clip(0, 6); 6->7 dilated, no bias, Clip(max only)."""
    nodes = [_conv("x", "c1", "w1", "b1"), helper.make_node("Relu", ["c1"], ["r1"]),
             _conv("r1", "c2", "w2", "b2", stride=2, pads=(0, 0, 1, 1)), _clip("c2", "r2", "zero", "six"),
             _conv("r2", "c3", "w3", dil=2, pads=(2, 2, 2, 2)), _clip("c3", "y", hi="half")]  # fmt: skip
    inits = [weight("w1", [5, 3, 3, 3]), weight("b1", [5]), weight("w2", [6, 5, 3, 3]), weight("b2", [6]),
             weight("w3", [7, 6, 3, 3]), _scalar("zero", 0.0), _scalar("six", 6.0), _scalar("half", 0.5)]  # fmt: skip
    return make_model(nodes, [("x", [1, 3, 7, 9])], [("y", [1, 7, 3, 4])], inits), {"conv_f32": 3}


def pointwise_batch():
    """Batch 2: a 1x1 layer read in place (25 pixels: a last block from scratch) + the model's input
    (a residual that is not the arena's to reuse), ReLU; a 1x1 stride-2 layer (through im2col)."""
    nodes = [_conv("x", "c1", "w1", "b1", k=1, pads=(0, 0, 0, 0)), helper.make_node("Add", ["c1", "x"], ["s"]),
             helper.make_node("Relu", ["s"], ["r"]), _conv("r", "y", "w2", "b2", k=1, stride=2, pads=(0, 0, 0, 0))]  # fmt: skip
    inits = [weight("w1", [8, 8, 1, 1]), weight("b1", [8]), weight("w2", [3, 8, 1, 1]), weight("b2", [3])]
    return make_model(nodes, [("x", [2, 8, 5, 5])], [("y", [2, 3, 3, 3])], inits), {"conv_f32": 2}


def residuals():
    """relu(conv1x1(y) + y) where y is also the layer's input (no in-place output), then ResNet's
    shortcut: relu((conv3x3(z) + b) + (conv1x1(z) + b)), one Add fused into a convolution, in place."""
    nodes = [_conv("x", "c0", "w0", "b0"), helper.make_node("Relu", ["c0"], ["y0"]),
             _conv("y0", "c1", "w1", "b1", k=1, pads=(0, 0, 0, 0)), helper.make_node("Add", ["c1", "y0"], ["s1"]),
             helper.make_node("Relu", ["s1"], ["z"]),
             _conv("z", "a", "w2", "b2"), _conv("z", "sc", "w3", "b3", k=1, pads=(0, 0, 0, 0)),
             helper.make_node("Add", ["sc", "a"], ["s2"]), helper.make_node("Relu", ["s2"], ["y"])]  # fmt: skip
    inits = [weight("w0", [8, 4, 3, 3]), weight("b0", [8]), weight("w1", [8, 8, 1, 1]), weight("b1", [8]),
             weight("w2", [6, 8, 3, 3]), weight("b2", [6]), weight("w3", [6, 8, 1, 1]), weight("b3", [6])]  # fmt: skip
    return make_model(nodes, [("x", [1, 4, 8, 8])], [("y", [1, 6, 8, 8])], inits), {"conv_f32": 4}


def depthwise():
    """3x3 stride 1 on a 10-wide row (two blocks of four, two single outputs), ReLU; 3x3 stride 2
    with SAME padding, Clip(0, 6); 5x4 dilated (2, 1), no bias, + its input as the residual; an
    unpadded 4x5 filter (20 taps: read from flash, not registers)."""
    nodes = [_conv("x", "c1", "w1", "b1", group=5), helper.make_node("Relu", ["c1"], ["r1"]),
             _conv("r1", "c2", "w2", "b2", stride=2, pads=(0, 0, 1, 1), group=5), _clip("c2", "r2", "zero", "six"),
             _conv("r2", "c3", "w3", kshape=(5, 4), dil=(2, 1), pads=(4, 1, 4, 2), group=5),
             helper.make_node("Add", ["r2", "c3"], ["s"]),
             _conv("s", "y", "w4", "b4", kshape=(4, 5), pads=(0, 0, 0, 0), group=5)]  # fmt: skip
    inits = [weight("w1", [5, 1, 3, 3]), weight("b1", [5]), weight("w2", [5, 1, 3, 3]), weight("b2", [5]),
             weight("w3", [5, 1, 5, 4]), weight("w4", [5, 1, 4, 5]), weight("b4", [5]),
             _scalar("zero", 0.0), _scalar("six", 6.0)]  # fmt: skip
    return make_model(nodes, [("x", [1, 5, 9, 10])], [("y", [1, 5, 1, 1])], inits), {"dwconv_f32": 4}


def dense():
    """Gemm 30->7 (fewer than 8 rows: blocks of 4), ReLU; MatMul 7->19 with its bias as an Add,
    Clip(-1, 1); two Gemms 19->16 added (one Add fused into the other's kernel)."""
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["g1"], transB=1), helper.make_node("Relu", ["g1"], ["r1"]),
             helper.make_node("MatMul", ["r1", "w2"], ["m2"]), helper.make_node("Add", ["m2", "b2"], ["a2"]),
             _clip("a2", "r2", "lo", "hi"),
             helper.make_node("Gemm", ["r2", "w3", "b3"], ["g3"], transB=1),
             helper.make_node("Gemm", ["r2", "w4"], ["g4"], transB=1), helper.make_node("Add", ["g3", "g4"], ["y"])]  # fmt: skip
    inits = [weight("w1", [7, 30]), weight("b1", [7]), weight("w2", [7, 19]), weight("b2", [19]),
             weight("w3", [16, 19]), weight("b3", [16]), weight("w4", [16, 19]),
             _scalar("lo", -1.0), _scalar("hi", 1.0)]  # fmt: skip
    return make_model(nodes, [("x", [1, 30])], [("y", [1, 16])], inits), {"dense_f32": 4}


def dense_batch():
    """Batch 3: Gemm 10->9 (a last block of one row), ReLU; MatMul without bias 9->5."""
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["g1"], transB=1), helper.make_node("Relu", ["g1"], ["r1"]),
             helper.make_node("MatMul", ["r1", "w2"], ["y"])]  # fmt: skip
    inits = [weight("w1", [9, 10]), weight("b1", [9]), weight("w2", [9, 5])]
    return make_model(nodes, [("x", [3, 10])], [("y", [3, 5])], inits), {"dense_f32": 2}


def not_covered():
    """A grouped convolution (2 groups) and a depthwise one with two filters per channel: no variant
    covers them, TVM's kernels compute them; the 1x1 layer after them is a micro-kernel."""
    nodes = [_conv("x", "c1", "w1", "b1", group=2), _conv("c1", "c2", "w2", "b2", group=6),
             _conv("c2", "y", "w3", "b3", k=1, pads=(0, 0, 0, 0))]  # fmt: skip
    inits = [weight("w1", [6, 2, 3, 3]), weight("b1", [6]), weight("w2", [12, 1, 3, 3]), weight("b2", [12]),
             weight("w3", [3, 12, 1, 1]), weight("b3", [3])]  # fmt: skip
    return make_model(nodes, [("x", [1, 4, 6, 6])], [("y", [1, 3, 6, 6])], inits), {"conv_f32": 1}


CASES = {f.__name__: f for f in (conv_odd, pointwise_batch, residuals, depthwise, dense, dense_batch, not_covered)}
TARGETS = ["host"] + (["cortex-m7", "cortex-m4", "cortex-m55"] if HAVE_ARM else [])


def _build(model: onnx.ModelProto, target: str, tmp_path, **options):
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    options = BuildOptions(extra_cflags="-Werror", sanitize=target == "host", integrity=False, **options)
    return build(path, load_target(target), tmp_path / f"out-{target}", options, log=lambda *_: None)


def _rel_error(result, model, samples: int = 2) -> float:
    data = [random_inputs(model, s) for s in range(samples)]
    runs = run_samples(result, data)
    ref = Reference(model)
    return compare([r.outputs for r in runs], [ref.run(d) for d in data]).rel_error


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", list(CASES))
def test_float_kernels_match_onnxruntime(name, target, tmp_path):
    model, variants = CASES[name]()
    result = _build(model, target, tmp_path)
    chosen = Counter(layer["variant"] for layer in result.report["layers"] if layer["variant"] != "tvm")
    assert chosen == Counter(variants), result.report["layers"]
    assert _rel_error(result, model) <= 1e-4
    # The output takes the residual's buffer where the residual dies there (not where it is the
    # model's input, kept for another inference, or the layer's own input, still being read).
    in_place = [b for b in result.report["memory_plan"] if "in_place_of" in b]
    assert len(in_place) == {"residuals": 1, "dense": 1}.get(name, 0), in_place


def test_kernels_tvm_keeps_tvms_float_kernels(tmp_path):
    model, _ = residuals()
    auto = _build(model, "host", tmp_path / "a")
    tvm = _build(model, "host", tmp_path / "t", kernels="tvm")
    assert {layer["variant"] for layer in tvm.report["layers"]} == {"tvm"}
    assert "ec_mk" not in (tvm.outdir / "model_kernels.c").read_text()
    data = [random_inputs(model, 0)]
    a, t = run_samples(auto, data)[0].outputs[0], run_samples(tvm, data)[0].outputs[0]
    np.testing.assert_allclose(a, t, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not HAVE_ARM, reason="needs arm-none-eabi-gcc and qemu-system-arm")
def test_a_core_without_fpu_keeps_tvms_float_kernels(tmp_path):
    """Cortex-M3 declares no "fpu": software floating point gains nothing from the blocking."""
    model, _ = conv_odd()
    result = _build(model, "cortex-m3", tmp_path)
    assert {layer["variant"] for layer in result.report["layers"]} == {"tvm"}
    assert _rel_error(result, model, samples=1) <= 1e-4


@pytest.mark.skipif(not HAVE_ARM, reason="needs arm-none-eabi-gcc and qemu-system-arm")
def test_fpu_kernels_use_fused_multiply_add(tmp_path):
    """On the Cortex-M7 the inner loops are VFMA (one instruction per MAC) and the ReLU VMAXNM."""
    import subprocess

    model, _ = residuals()
    result = _build(model, "cortex-m7", tmp_path)
    dis = subprocess.run(["arm-none-eabi-objdump", "-d", str(result.outdir / "firmware.elf")], capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    kernels = [f for f in dis.split("\n\n") if "_conv_f32" in f.split("\n")[0]]
    assert kernels and sum(f.count("vfma.f32") for f in kernels) >= 4 * 16
    assert all("vmaxnm.f32" in f for f in kernels if "_gemm" in f.split("\n")[0])
    assert "<fmaf>" not in dis and "<fmaxf>" not in dis  # no library calls
