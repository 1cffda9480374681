"""The int8 micro-kernels (templates/kernels/): the shapes their loops split on (odd pixel and
channel counts, K not a multiple of 4, strides, dilations, padding, batch), bit-exact against
the integer reference and against TVM's kernels (--kernels tvm), in portable C on the host and
with SMLAD/SXTB16 on a Cortex-M7."""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import onnx
import pytest
from conftest import make_model, needs_qemu, random_inputs, weight
from onnx import helper

from edgecomp.passes.quantize import quantize
from edgecomp.pipeline import BuildOptions, build
from edgecomp.runner import run_samples
from edgecomp.targets import load_target
from edgecomp.verify import expected_outputs


def _conv(cin, cout, hw, k, stride=1, dil=1, pads=(1, 1, 1, 1), group=1, batch=1, relu=True):
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], strides=[stride, stride], dilations=[dil, dil],
                              pads=list(pads), group=group)]  # fmt: skip
    nodes.append(helper.make_node("Relu" if relu else "Identity", ["c"], ["y"]))
    kh, kw = k
    oh = (hw[0] + pads[0] + pads[2] - dil * (kh - 1) - 1) // stride + 1
    ow = (hw[1] + pads[1] + pads[3] - dil * (kw - 1) - 1) // stride + 1
    return make_model(nodes, [("x", [batch, cin, *hw])], [("y", [batch, cout, oh, ow])],
                      [weight("w", [cout, cin // group, kh, kw]), weight("b", [cout])])  # fmt: skip


def _dense(k, n_out, batch=1):
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)]
    return make_model(
        nodes, [("x", [batch, k])], [("y", [batch, n_out])], [weight("w", [n_out, k]), weight("b", [n_out])]
    )


def _residual(c, hw):
    """conv0 -> [conv1 -> relu -> conv2] + conv0's output -> relu (ResNet's identity block)."""
    nodes = [
        helper.make_node("Conv", ["x", "w0", "b0"], ["r0"], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["r0", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["r0", "c2"], ["s"]),  # the conv result is Add's second input
        helper.make_node("Relu", ["s"], ["y"]),
    ]
    inits = [weight(f"{k}{i}", [c, c, 3, 3] if k == "w" else [c]) for i in range(3) for k in "wb"]
    return make_model(nodes, [("x", [1, c, *hw])], [("y", [1, c, *hw])], inits)


def _add_of_pools():
    """Add of two pooled tensors: no convolution to fuse it into, so the standalone add kernel."""
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("MaxPool", ["c"], ["m"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("AveragePool", ["c"], ["a"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["m", "a"], ["y"])]  # fmt: skip
    return make_model(
        nodes, [("x", [1, 3, 6, 6])], [("y", [1, 4, 6, 6])], [weight("w", [4, 3, 3, 3]), weight("b", [4])]
    )


def _chain(cin, hw, first, second):
    """A convolution feeding another, so that the second may run in place of its input (an
    intermediate) and has scratch room under the first one's peak. `first`/`second`: (cout, k, stride,
    pads, group); cout None = its input's channels (depthwise)."""
    nodes, inits, c, size = [], [], cin, list(hw)
    for i, (cout, k, stride, pads, group) in enumerate((first, second)):
        cout = c if cout is None else cout
        nodes.append(helper.make_node("Conv", [f"x{i}", f"w{i}", f"b{i}"], [f"c{i}"], strides=[stride, stride],
                                      pads=list(pads), group=group))  # fmt: skip
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"x{i + 1}" if i == 0 else "y"]))
        inits += [weight(f"w{i}", [cout, c // group, k, k]), weight(f"b{i}", [cout])]
        size = [(s + pads[j] + pads[j + 2] - k) // stride + 1 for j, s in enumerate(size)]
        c = cout
    return make_model(nodes, [("x0", [1, cin, *hw])], [("y", [1, c, *size])], inits)


def _global_avgpool(hw):
    """conv -> relu -> GlobalAveragePool: the pool as global_avgpool_s8 (a count not a multiple of 4)."""
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["y"])]  # fmt: skip
    return make_model(nodes, [("x", [1, 3, *hw])], [("y", [1, 6, 1, 1])], [weight("w", [6, 3, 3, 3]), weight("b", [6])])


def _depthwise_spread_scales(c, hw, stride):
    """A 3x3 depthwise layer whose channels' weight scales span 2^-12..1: their requantization shifts
    differ by more than int16 weights can absorb, so dwconv_rows_s8 keeps one shift per channel."""
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], strides=[stride, stride], pads=[1, 1, 1, 1], group=c),
             helper.make_node("Relu", ["c"], ["y"])]  # fmt: skip
    w = onnx.numpy_helper.to_array(weight("w", [c, 1, 3, 3])) * np.logspace(0, -12, c, base=2)[:, None, None, None]
    oh, ow = ((s + 2 - 3) // stride + 1 for s in hw)
    # no bias: a large one would pin the small channels to a constant output (then no shift at all)
    inits = [onnx.numpy_helper.from_array(w.astype(np.float32), "w"),
             onnx.numpy_helper.from_array(np.zeros(c, np.float32), "b")]  # fmt: skip
    return make_model(nodes, [("x", [1, c, *hw])], [("y", [1, c, oh, ow])], inits)


CASES = {
    "conv_k27_odd_pixels": lambda: _conv(3, 5, (5, 7), (3, 3)),  # K=27 (padded to 28), 35 pixels, 5 channels
    "conv_stride2_asym": lambda: _conv(4, 6, (9, 8), (3, 3), stride=2, pads=(0, 1, 2, 1)),
    "conv_dilated_nopad": lambda: _conv(8, 4, (9, 9), (3, 3), dil=2, pads=(0, 0, 0, 0)),
    "conv_1x1_batch2": lambda: _conv(6, 7, (3, 3), (1, 1), pads=(0, 0, 0, 0), batch=2, relu=False),
    "conv_10x4_kws_like": lambda: _conv(1, 4, (12, 6), (10, 4), stride=2, pads=(5, 1, 4, 2)),
    "conv_4x4_row4_cin3": lambda: _conv(3, 5, (9, 10), (4, 4), pads=(1, 1, 2, 2)),  # row4: interior and border
    # row3 columns of inside pixel pairs in assembly (cin <= 3): 9, 3 and 6 kernel rows, strides 1 and 2
    "conv_row3_cin3_s2": lambda: _conv(3, 4, (11, 12), (3, 3), stride=2, pads=(0, 0, 1, 1)),
    "conv_row3_cin1_s2": lambda: _conv(1, 4, (9, 10), (3, 3), stride=2),
    "conv_row3_cin1": lambda: _conv(1, 4, (7, 8), (3, 3)),
    "conv_row3_cin2": lambda: _conv(2, 6, (8, 9), (3, 3)),
    # two records a loop step with 3P + 1 >= 4096: the second record's outputs from y + 2P in a register
    "conv_two_records_far": lambda: _conv(3, 4, (46, 46), (3, 3)),  # 2P = 4232: MOVW + ADD
    # windows 1 to 3 columns past either edge: a row's bytes as one shifted word of its end
    "conv_row4_pad3": lambda: _conv(2, 3, (7, 9), (3, 4), pads=(1, 3, 1, 3)),
    "depthwise_3x3": lambda: _conv(6, 6, (7, 5), (3, 3), group=6),  # odd width: the 2-output loop's tail
    "depthwise_stride2": lambda: _conv(4, 4, (8, 9), (3, 3), stride=2, group=4),
    "depthwise_narrow_pad_left2": lambda: _conv(3, 3, (6, 3), (3, 3), pads=(0, 2, 1, 0), group=3),  # width < 4
    "depthwise_rows_shift_per_channel": lambda: _depthwise_spread_scales(5, (7, 6), 1),
    "depthwise_rows_shift_per_channel_s2": lambda: _depthwise_spread_scales(5, (6, 7), 2),
    # whole rows of 4k bytes: the LDM/STM image copy (pad left 1: odd halfword columns; pad 0, stride 2)
    "depthwise_rows_ldm_w20": lambda: _conv(3, 3, (5, 20), (3, 3), group=3),
    "depthwise_rows_ldm_s2_w16": lambda: _conv(4, 4, (7, 16), (3, 3), stride=2, pads=(0, 0, 1, 1), group=4),
    # conv_pw_few_s8: inputs in registers; an odd pixel count; an odd cout (a channel a loop step), no ReLU;
    # P >= 256 (the output steps by ADDW)
    "pointwise_few_cin8_odd_pixels": lambda: _conv(8, 16, (5, 7), (1, 1), pads=(0, 0, 0, 0)),
    "pointwise_few_cin6_cout9": lambda: _conv(6, 9, (4, 4), (1, 1), pads=(0, 0, 0, 0), relu=False),
    "pointwise_few_cin4_wide": lambda: _conv(4, 10, (16, 20), (1, 1), pads=(0, 0, 0, 0)),
    "depthwise_5x4_dilated": lambda: _conv(3, 3, (10, 9), (5, 4), dil=2, pads=(4, 3, 4, 3), group=3),
    "dense_k30_out7": lambda: _dense(30, 7),  # K % 4 and rows % 4 left over
    "dense_batch3": lambda: _dense(16, 8, batch=3),
    "dense_interleaved_out6": lambda: _dense(32, 6),  # rows interleaved by four, two left over
    "residual_add_fused": lambda: _residual(6, (6, 5)),
    # >= WIDE_MIN_PIXELS output pixels: int16 weights, odd pixel and channel counts, border windows
    "conv_wide_weights": lambda: _conv(3, 5, (23, 23), (3, 3)),
    "residual_add_fused_wide": lambda: _residual(4, (24, 22)),
    "add_standalone": _add_of_pools,
    "global_avgpool": lambda: _global_avgpool((7, 6)),
    # conv_pw_s8 in place of its input: int8 records (w8), odd pixel count, fewer outputs than inputs
    "pointwise_in_place_w8": lambda: _chain(3, (5, 5), (64, 3, 1, (1, 1, 1, 1), 1), (47, 1, 1, (0,) * 4, 1)),
    # odd pixel count, even cout: the last pixel as an overlapping pair of the last block, in place
    "pointwise_in_place_w8_odd_pixels": lambda: _chain(3, (5, 5), (64, 3, 1, (1, 1, 1, 1), 1),
                                                       (46, 1, 1, (0,) * 4, 1)),  # fmt: skip
    "pointwise_w16s_odd_pixels": lambda: _chain(16, (18, 18), (64, 3, 4, (1, 1, 1, 1), 1), (62, 1, 1, (0,) * 4, 1)),
    "conv_odd_pixels_even_cout": lambda: _conv(3, 6, (5, 7), (3, 3)),
    "conv_single_pixel": lambda: _conv(4, 6, (3, 3), (3, 3), pads=(0, 0, 0, 0)),  # no pixel pair: one-lane path only
    # room under the first layer's peak: int8 records widened into scratch per block (w16s), odd cout
    "pointwise_widened_w16s": lambda: _chain(16, (16, 16), (64, 3, 4, (1, 1, 1, 1), 1), (63, 1, 1, (0,) * 4, 1)),
    # odd pixel count (9) with 36 groups: the odd last pixel's lane-only pass loops over its groups
    "pointwise_w16s_odd_pixels_g36": lambda: _chain(64, (12, 12), (144, 3, 4, (1, 1, 1, 1), 1), (40, 1, 1, (0,) * 4, 1)),
    # w16s, even pixel count, 36 groups (a k loop): the matrix loop widens each record itself
    "pointwise_w16s_g36_in_loop": lambda: _chain(64, (16, 16), (144, 3, 4, (1, 1, 1, 1), 1), (40, 1, 1, (0,) * 4, 1)),
    # w16s with an odd group count (K = 20): the LDM/STM widening's one-group tail
    "pointwise_w16s_odd_groups": lambda: _chain(16, (16, 16), (20, 3, 4, (1, 1, 1, 1), 1), (110, 1, 1, (0,) * 4, 1)),
    # dwconv_rows_s8 with fewer buffered rows than the padded plane, in place, strides 1 and 2
    "depthwise_rows_streamed": lambda: _chain(1, (60, 61), (4, 3, 1, (1, 1, 1, 1), 1), (None, 3, 1, (1, 1, 1, 1), 4)),
    "depthwise_rows_streamed_s2": lambda: _chain(1, (61, 60), (4, 3, 1, (1, 1, 1, 1), 1),
                                                 (None, 3, 2, (0, 1, 2, 1), 4)),  # fmt: skip
}


# What the generated kernels must show for a case (regular expressions on model_kernels.c).
PATHS = {
    "pointwise_in_place_w8": [r"ec_mk1_conv_pw_s8: .* records w8,"],
    "pointwise_widened_w16s": [r"ec_mk1_conv_pw_s8: .* records w16s,"],
    "pointwise_w16s_odd_groups": [r"ec_mk1_conv_pw_s8: .* 20 slots, records w16s,", r"the loop widens each record"],
    "pointwise_w16s_g36_in_loop": [r"ec_mk1_conv_pw_s8: .* 144 slots, records w16s,", r"the loop widens each record"],
    "pointwise_w16s_odd_pixels_g36": [r"ec_mk1_conv_pw_s8: .* 144 slots, records w16s,", r"ec_mk1_conv_pw_s8_mm1\(&c\)"],
    "pointwise_in_place_w8_odd_pixels": [r"ec_mk1_conv_pw_s8: .* records w8,", r"const int32_t last = "],
    "pointwise_w16s_odd_pixels": [r"ec_mk1_conv_pw_s8: .* records w16s,", r"const int32_t last = "],
    "conv_odd_pixels_even_cout": [r"ec_mk0_conv_mm_s8: .* records w16,", r"const int32_t last = "],
    "conv_single_pixel": [r"ec_mk0_conv_mm_s8: "],
    "depthwise_rows_streamed": [r"ec_mk1_dwconv_rows_s8: .* stride 1, .* (\d+) of (?!\1\b)\d+ buffered"],
    "depthwise_rows_streamed_s2": [r"ec_mk1_dwconv_rows_s8: .* stride 2, .* (\d+) of (?!\1\b)\d+ buffered"],
    "depthwise_rows_shift_per_channel": [r"ec_mk0_dwconv_rows_s8: .* shift per channel"],
    "depthwise_rows_shift_per_channel_s2": [r"ec_mk0_dwconv_rows_s8: .* stride 2, .* shift per channel"],
    "depthwise_rows_ldm_w20": [r"ec_mk0_dwconv_rows_s8_image_asm\(plane"],
    "depthwise_rows_ldm_s2_w16": [r"ec_mk0_dwconv_rows_s8_image_asm\(plane"],
    "pointwise_few_cin8_odd_pixels": [r"ec_mk0_conv_pw_few_s8: "],
    "pointwise_few_cin6_cout9": [r"ec_mk0_conv_pw_few_s8: .* 1 channels a loop step"],
    "pointwise_few_cin4_wide": [r"ec_mk0_conv_pw_few_s8: ", r"add lr, lr, #640"],  # channel pairs: one ADD of 2P
    "conv_k27_odd_pixels": [r"conv_mm_s8: .* im2col row3", r"Two records a loop step"],
    "conv_wide_weights": [r"Two records a loop step"],
    "conv_10x4_kws_like": [r"conv_mm_s8: .* im2col row4"],
    "conv_4x4_row4_cin3": [r"conv_mm_s8: .* im2col row4"],
    "conv_row4_pad3": [r"conv_mm_s8: .* im2col row4"],
    "conv_two_records_far": [r"Two records a loop step", r"add r1, r0, r1"],
    "conv_row3_cin3_s2": [r"conv_mm_s8: .* im2col row3", r"_cols_in\(src, d\)"],
    "conv_row3_cin1_s2": [r"conv_mm_s8: .* im2col row3", r"_cols_in\(src, d\)"],
    "conv_row3_cin1": [r"conv_mm_s8: .* im2col row3", r"_cols_in\(src, d\)"],
    "conv_row3_cin2": [r"conv_mm_s8: .* im2col row3", r"_cols_in\(src, d\)"],
    "global_avgpool": [r"ec_mk1_global_avgpool_s8: "],
    "conv_dilated_nopad": [r"conv_mm_s8: .* im2col generic"],
    "depthwise_narrow_pad_left2": [r"ec_mk0_dwconv_rows_s8: "],
}
IN_PLACE = {"pointwise_in_place_w8", "pointwise_in_place_w8_odd_pixels", "depthwise_rows_streamed", "depthwise_rows_streamed_s2"}
# Cases that take no scratch room beyond the kernels' minimum (the float output would leave room
# for the whole plane or widened records): the row buffer then holds fewer rows than the padded
# plane, the pointwise layer reads int8 records.
NO_ROOM = {"depthwise_rows_streamed", "depthwise_rows_streamed_s2", "pointwise_in_place_w8",
           "pointwise_in_place_w8_odd_pixels"}


def _build(model, target, tmp_path, kernels="auto", io="float"):
    qmodel = quantize(onnx.shape_inference.infer_shapes(model), [random_inputs(model, s) for s in range(8)]).model
    path = tmp_path / "q.onnx"
    onnx.save(qmodel, path)
    options = BuildOptions(extra_cflags="-Werror", kernels=kernels, io=io)
    return build(path, load_target(target), tmp_path / f"{target}-{kernels}", options, log=lambda *_: None)


def _check(name, target, tmp_path, monkeypatch=None):
    if name in NO_ROOM:
        from edgecomp.lower.kernels import mm

        monkeypatch.setattr(mm, "ROOM_SHARE", 0.0)
    if name in IN_PLACE:  # the kernel's in-place path, even where a separate output makes a smaller arena
        from edgecomp.codegen import memory

        monkeypatch.setattr(memory, "SHRINKING_ALIASES", (True,))
    model = CASES[name]()
    result = _build(model, target, tmp_path)
    kernels_c = (result.outdir / "model_kernels.c").read_text()
    assert "ec_mk0_" in kernels_c  # a micro-kernel took the layer, not TVM
    for pattern in PATHS.get(name, ()):  # the kernel path the case is there for was taken
        assert re.search(pattern, kernels_c), pattern
    if name in IN_PLACE:
        assert any("in_place_of" in b for b in result.report["memory_plan"])
    samples = [random_inputs(model, s) for s in range(3)]
    got = [r.outputs for r in run_samples(result, samples)]
    for outs, wants in zip(got, expected_outputs(result, samples), strict=True):
        for g, want in zip(outs, wants, strict=True):
            np.testing.assert_array_equal(g, want)
    return result, got, samples


@pytest.mark.parametrize("name", sorted(CASES))
def test_microkernel_host_bit_exact(name, tmp_path, monkeypatch):
    _check(name, "host", tmp_path, monkeypatch)


@needs_qemu
@pytest.mark.parametrize("name", ["conv_k27_odd_pixels", "conv_stride2_asym", "depthwise_3x3", "depthwise_5x4_dilated",
                                  "dense_k30_out7", "dense_interleaved_out6", "dense_batch3", "residual_add_fused", "conv_wide_weights",
                                  "add_standalone", "global_avgpool", "pointwise_in_place_w8_odd_pixels",
                                  "pointwise_w16s_odd_pixels", "conv_odd_pixels_even_cout", "conv_single_pixel", "depthwise_narrow_pad_left2", "conv_4x4_row4_cin3", "conv_1x1_batch2", "conv_10x4_kws_like", "depthwise_stride2",
                                  "conv_dilated_nopad", "pointwise_in_place_w8", "pointwise_widened_w16s",
                                  "pointwise_w16s_odd_groups", "pointwise_w16s_odd_pixels_g36", "pointwise_w16s_g36_in_loop", "conv_row4_pad3",
                                  "conv_row3_cin3_s2", "conv_row3_cin1_s2", "conv_row3_cin1", "conv_row3_cin2",
                                  "conv_two_records_far", "depthwise_rows_streamed", "depthwise_rows_streamed_s2",
                                  "depthwise_rows_shift_per_channel", "depthwise_rows_shift_per_channel_s2",
                                  "depthwise_rows_ldm_w20", "depthwise_rows_ldm_s2_w16", "pointwise_few_cin8_odd_pixels",
                                  "pointwise_few_cin6_cout9", "pointwise_few_cin4_wide"])  # fmt: skip
def test_microkernel_cortex_m7_bit_exact(name, tmp_path, monkeypatch):
    _check(name, "cortex-m7", tmp_path, monkeypatch)


def test_fused_add_runs_in_place_and_matches_tvm_kernels(tmp_path):
    """The residual block's Add is fused into the second convolution, whose output takes the
    residual's arena slot; TVM's kernels (--kernels tvm) give the same bytes with a larger arena."""
    model = _residual(8, (12, 12))
    fused = _build(model, "host", tmp_path, io="int8")
    assert "conv_add_s8" in (fused.outdir / "model_kernels.c").read_text()
    assert any("in_place_of" in b for b in fused.report["memory_plan"])
    tvm = _build(model, "host", tmp_path, kernels="tvm", io="int8")
    assert "ec_mk" not in (tvm.outdir / "model_kernels.c").read_text()
    rng = np.random.default_rng(0)
    samples = [[rng.integers(-128, 128, (1, 8, 12, 12)).astype(np.int8)] for _ in range(2)]
    for a, b in zip(run_samples(fused, samples), run_samples(tvm, samples), strict=True):
        np.testing.assert_array_equal(a.outputs[0], b.outputs[0])
    # At most two 8x12x12 tensors live at once (the residual is the output) plus two int16 im2col
    # columns (K = 8*3*3 = 72); TVM's separate Add needs a third tensor.
    assert fused.report["arena_bytes"] <= 2 * 1152 + 2 * 72 * 2 < tvm.report["arena_bytes"]


def _large_multiplier():
    """x and a copy of x into a 1x1 conv whose channels nearly cancel them: the output range is a
    few percent of the input's, so the requantization multiplier is above 1/4 (n <= 32)."""
    nodes = [helper.make_node("Concat", ["x", "x"], ["xx"], axis=1),
             helper.make_node("Conv", ["xx", "w", "b"], ["y"])]  # fmt: skip
    w = np.array([[1.0, -0.97], [-1.0, 0.98], [0.5, -0.47]], np.float32).reshape(3, 2, 1, 1)
    inits = [onnx.numpy_helper.from_array(w, "w"), onnx.numpy_helper.from_array(np.zeros(3, np.float32), "b")]
    return make_model(nodes, [("x", [1, 1, 6, 5])], [("y", [1, 3, 6, 5])], inits)


@pytest.mark.parametrize(("target", "kernel", "requant"), [
    ("host", "ec_mk0_conv_s8", "ec_requant_s8_int64("),
    pytest.param("cortex-m7", "ec_mk0_conv_s8", "ec_requant_s8_int64(", marks=needs_qemu),
    # conv_mve_s8's vector form of it (VMULH/VMUL halves, rounding shifts), in QEMU mps3-an547
    pytest.param("cortex-m55", "ec_mk0_conv_mve_s8", "ec_mve_requant_int64(", marks=needs_qemu),
])  # fmt: skip
def test_requantization_with_a_large_multiplier_keeps_the_micro_kernel(target, kernel, requant, tmp_path):
    """A multiplier above 1/4 (n <= 32, the int64 definition) keeps the convolution's micro-kernel."""
    model = _large_multiplier()
    result = _build(model, target, tmp_path)
    conv = next(op for op in result.int_graph.ops if op.kind == "conv")
    assert np.any((conv.shift <= 32) & (conv.mult != 0))
    text = (result.outdir / "model_kernels.c").read_text()
    assert kernel in text and requant in text
    samples = [random_inputs(model, s) for s in range(3)]
    for run, want in zip(run_samples(result, samples), expected_outputs(result, samples), strict=True):
        np.testing.assert_array_equal(run.outputs[0], want[0])


def test_smmla_form_equals_the_requantization():
    """The kernels' SMMLA form of the requantization (addend and shift per channel, constants for
    dead channels) gives the reference's result for accumulators across the whole reachable range."""
    from edgecomp.lower.kernels.requant import smmla_form
    from edgecomp.quant.fixedpoint import quantize_multipliers, requant

    rng = np.random.default_rng(0)
    reals = np.concatenate([10.0 ** rng.uniform(-9, -0.7, 200), [0.0, 1e-12]])
    mult, shift = quantize_multipliers(reals)
    bias = rng.integers(-(2**20), 2**20, reals.size)
    bias[:5] = -(2**31) + 1000  # pinned to the clamp's bottom: dead after ReLU
    reach = np.full(reals.size, 2**22)
    for zp, lo, hi in [(-128, -128, 127), (3, -128, 127), (-128, -128, 30)]:
        m, addend, sh = smmla_form(mult, shift, zp, lo, hi, (bias - reach, bias + reach))
        assert np.all(m[:5] == 0) and np.all(m[-2:] == 0)  # the dead and zero channels are constants
        acc = np.clip(bias[:, None] + rng.integers(-(2**22), 2**22, (reals.size, 64)), -(2**31), 2**31 - 1)
        want = np.clip(requant(acc, mult[:, None], shift[:, None]) + zp, lo, hi)
        top = (addend[:, None] * 2**32 + acc * m[:, None]) >> 32  # SMMLA: the top word, exact in int64
        got = np.clip(top >> sh[:, None], lo, hi)
        np.testing.assert_array_equal(got, want)
    assert smmla_form(np.array([2**30]), np.array([31]), 0, -128, 127, (-(2**20), 2**20)) is None  # n <= 32


# Helium (cortex-m55 declares "mve"): the MVE variant takes the layer, bit-exact in QEMU mps3-an547.
MVE_CASES = {
    "conv_k27_odd_pixels": "conv_mve_s8",  # row columns (cin 3), K 27 -> 32 slots, odd pixels and channels
    "conv_stride2_asym": "conv_mve_s8",  # chan columns with a channel tail (cin 4), asymmetric pads
    "conv_dilated_nopad": "conv_mve_s8",
    "conv_1x1_batch2": "conv_mve_s8",  # pointwise, batch 2, odd channels
    "conv_10x4_kws_like": "conv_mve_s8",  # row columns, 10x4 windows, cin 1
    "conv_wide_weights": "conv_mve_s8",
    "conv_single_pixel": "conv_mve_s8",
    "pointwise_in_place_w8_odd_pixels": "conv_mve_s8",  # in place of its input, odd pixel count
    "residual_add_fused": "conv_mve_s8",  # the Add in the epilogue (gathered residual, table lookups)
    "residual_add_fused_wide": "conv_mve_s8",
    "depthwise_3x3": "dwconv_mve_s8",
    "depthwise_stride2": "dwconv_mve_s8",
    "depthwise_narrow_pad_left2": "dwconv_mve_s8",
    "depthwise_5x4_dilated": "dwconv_mve_s8",  # 20 taps: beyond a 16-lane gather, the DSP kernel
    "depthwise_rows_streamed": "dwconv_mve_s8",
    "dense_k30_out7": "dense_mve_s8",  # K tail predicated, rows % 4 left over
    "dense_batch3": "dense_mve_s8",
    "dense_interleaved_out6": "dense_mve_s8",
}


@needs_qemu
@pytest.mark.parametrize("name", sorted(MVE_CASES))
def test_microkernel_cortex_m55_mve_bit_exact(name, tmp_path, monkeypatch):
    model = CASES[name]()
    result = _build(model, "cortex-m55", tmp_path)
    kernels_c = (result.outdir / "model_kernels.c").read_text()
    if name == "depthwise_5x4_dilated":
        assert "dwconv_mve_s8" not in kernels_c and "_dwconv_s8" in kernels_c
    else:
        assert MVE_CASES[name] in kernels_c
    if name in IN_PLACE:
        assert any("in_place_of" in b for b in result.report["memory_plan"])
    if name.startswith("residual"):
        assert "conv_add_s8" in kernels_c
    samples = [random_inputs(model, s) for s in range(3)]
    for run, wants in zip(run_samples(result, samples), expected_outputs(result, samples), strict=True):
        for g, want in zip(run.outputs, wants, strict=True):
            np.testing.assert_array_equal(g, want)


@needs_qemu
def test_max_flash_keeps_int8_records_for_the_cheapest_layers(tmp_path):
    """--max-flash on an int8 build: a convolution over >= 512 pixels reads int16 records (twice its
    weights' bytes); under a budget one byte below that build's flash it reads int8 ones instead,
    fits, and stays bit-exact; a budget nothing can meet is refused, saying by how much."""
    from edgecomp.errors import DoesNotFitError

    model = _conv(16, 16, (24, 24), (3, 3))
    qmodel = quantize(onnx.shape_inference.infer_shapes(model), [random_inputs(model, s) for s in range(8)]).model
    path = tmp_path / "q.onnx"
    onnx.save(qmodel, path)
    target = load_target("cortex-m7")
    options = BuildOptions(extra_cflags="-Werror", integrity=False)
    wide = build(path, target, tmp_path / "wide", options, log=lambda *_: None)
    assert "records w16," in (wide.outdir / "model_kernels.c").read_text()
    budget = wide.report["flash_bytes"] - 1
    fit = build(path, target, tmp_path / "fit", replace(options, max_flash=budget), log=lambda *_: None)
    assert fit.report["options"]["narrow_records"] and fit.report["flash_bytes"] <= budget
    assert re.search(r"ec_mk0_conv_mm_s8: .* records (w8|w16s),", (fit.outdir / "model_kernels.c").read_text())
    samples = [random_inputs(model, s) for s in range(2)]
    for run, want in zip(run_samples(fit, samples), expected_outputs(fit, samples), strict=True):
        np.testing.assert_array_equal(run.outputs[0], want[0])
    with pytest.raises(DoesNotFitError, match="exceeds --max-flash"):
        build(path, target, tmp_path / "none", replace(options, max_flash=1000), log=lambda *_: None)
    assert not (tmp_path / "none").exists()  # a build over the budget is not left behind


def _dense_chain(batch=2):
    """Dense layers of K 13, 9, 3, 8, 16 (K % 4 left over; only the tail; two and four groups a loop
    step) and 9, 3, 8, 16, 6 rows (one and two rows left over; fewer than four; none), with ReLU and
    Clip clamps."""
    widths, nodes, inits = [13, 9, 3, 8, 16, 6], [], []
    acts = {0: "Relu", 1: "Clip", 3: "Relu"}
    for i, (k, n) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        out = f"g{i}" if i in acts else f"x{i + 1}"
        nodes.append(helper.make_node("Gemm", [f"x{i}", f"w{i}", f"b{i}"], [out], transB=1))
        inits += [weight(f"w{i}", [n, k]), weight(f"b{i}", [n])]
        if acts.get(i) == "Relu":
            nodes.append(helper.make_node("Relu", [out], [f"x{i + 1}"]))
        elif acts.get(i) == "Clip":
            inits += [onnx.numpy_helper.from_array(np.float32(v), n_) for v, n_ in ((-0.5, "lo"), (0.5, "hi"))]
            nodes.append(helper.make_node("Clip", [out, "lo", "hi"], [f"x{i + 1}"]))
    nodes[-1].output[0] = "y"
    return make_model(nodes, [("x0", [batch, widths[0]])], [("y", [batch, widths[-1]])], inits)


@pytest.mark.parametrize("target", ["host", pytest.param("cortex-m7", marks=needs_qemu)])
def test_dense_int16_records_under_optimize_speed(target, tmp_path):
    """--optimize speed: the dense layers of four rows or more read int16 weight records
    (dense_w16_s8, twice the weights' flash), bit-exact with the integer reference; fewer rows, and
    all of them under --optimize size: the int8 kernel."""
    model = _dense_chain()
    qmodel = quantize(onnx.shape_inference.infer_shapes(model), [random_inputs(model, s) for s in range(8)]).model
    path = tmp_path / "q.onnx"
    onnx.save(qmodel, path)
    samples = [random_inputs(model, s) for s in range(3)]
    for optimize, w16 in (("speed", {0, 2, 3, 4}), ("size", set())):
        options = BuildOptions(extra_cflags="-Werror", integrity=False, optimize=optimize)
        result = build(path, load_target(target), tmp_path / optimize, options, log=lambda *_: None)
        kernels_c = (result.outdir / "model_kernels.c").read_text()
        for i in range(5):
            assert f"ec_mk{i}_{'dense_w16_s8' if i in w16 else 'dense_s8'}: " in kernels_c, (optimize, i)
        for run, want in zip(run_samples(result, samples), expected_outputs(result, samples), strict=True):
            np.testing.assert_array_equal(run.outputs[0], want[0])
    # --max-flash narrows from speed's choice: the dense layers too, the fewest rows first (2 for all
    # here), then the most bytes saved: the 13 -> 9 layer, 9 rows of K4 16 int16 instead of K 13 int8
    from edgecomp.lower.kernels import narrow_plan

    features = load_target(target).features
    names, saved = narrow_plan(result.int_graph, features, 1, optimize="speed")
    assert len(names) == 1 and saved == 9 * (2 * 16 - 13)
    assert narrow_plan(result.int_graph, features, 10**6, optimize="size") == ((), 0)
