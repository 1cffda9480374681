"""The integer LSTM (quant/ops/lstm.py, the C kernel lower/kernels/lstm.py): edgecomp's quantizer
quantizes an ONNX LSTM (passes/quantize_lstm.py), the build is bit-exact with the numpy reference
on the host and in QEMU Cortex-M7, and close to the float model (SQNR vs onnxruntime's float run,
on samples from the calibration distribution)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import needs_qemu, random_inputs, typed_model, weight
from onnx import helper
from test_recurrent import TORCH_CASES, cell_model

from edgecomp.errors import UnsupportedModelError
from edgecomp.passes.quantize import quantize
from edgecomp.pipeline import BuildOptions, build
from edgecomp.quant import extract_int_graph
from edgecomp.quant.accuracy import evaluate, sqnr_db
from edgecomp.quant.ops import Gru, Lstm
from edgecomp.runner import run_samples
from edgecomp.targets import load_target
from edgecomp.verify import Reference, expected_outputs

MIN_SQNR_DB = 20.0


def conv_lstm_dense(seq: int = 8, hidden: int = 12) -> onnx.ModelProto:
    """x [1, 4, seq] -> 1x1 Conv + Relu (int8) -> [seq, 1, 6] -> LSTM -> last h -> Gemm: a small
    keyword-spotting shape, every op on the integer path."""
    nodes = [
        helper.make_node("Unsqueeze", ["x", "ax"], ["x4"]),
        helper.make_node("Conv", ["x4", "cw", "cb"], ["cv"]),
        helper.make_node("Relu", ["cv"], ["cr"]),
        helper.make_node("Reshape", ["cr", "s3"], ["c3"]),  # [1, 6, seq]
        helper.make_node("Transpose", ["c3"], ["xs"], perm=[2, 0, 1]),  # [seq, 1, 6]
        helper.make_node("LSTM", ["xs", "W", "R", "B"], ["", "yh"], "lstm", hidden_size=hidden),
        helper.make_node("Reshape", ["yh", "s2"], ["h2"]),
        helper.make_node("Gemm", ["h2", "dw", "db"], ["y"], transB=1),
    ]
    inits = [weight("cw", [6, 4, 1, 1]), weight("cb", [6]), weight("W", [1, 4 * hidden, 6]),
             weight("R", [1, 4 * hidden, hidden]), weight("B", [1, 8 * hidden]), weight("dw", [3, hidden]),
             weight("db", [3]), onnx.numpy_helper.from_array(np.array([2], np.int64), "ax"),
             onnx.numpy_helper.from_array(np.array([1, 6, seq], np.int64), "s3"),
             onnx.numpy_helper.from_array(np.array([1, hidden], np.int64), "s2")]  # fmt: skip
    return typed_model(nodes, [("x", [1, 4, seq])], [("y", [1, 3])], inits, opset=14)


def stacked_state_slices(seq: int = 4, inputs: int = 5, hidden: int = 6) -> onnx.ModelProto:
    """Two stacked LSTMs whose states come in one [2, 1, H] input each for h and c (Slice per layer)
    and go out concatenated: the state form of Silero VAD and openWakeWord's VAD."""
    const = onnx.numpy_helper.from_array
    nodes = []
    for layer in range(2):
        for s in ("h", "c"):
            nodes.append(helper.make_node("Slice", [s, f"st{layer}", f"en{layer}", "ax0"], [f"{s}{layer}"]))
    nodes += [
        helper.make_node("LSTM", ["x", "W0", "R0", "B0", "", "h0", "c0"], ["y0", "yh0", "yc0"], "lstm0",
                         hidden_size=hidden),
        helper.make_node("Squeeze", ["y0", "ax1"], ["x1"]),
        helper.make_node("LSTM", ["x1", "W1", "R1", "B1", "", "h1", "c1"], ["y1", "yh1", "yc1"], "lstm1",
                         hidden_size=hidden),
        helper.make_node("Concat", ["yh0", "yh1"], ["hn"], axis=0),
        helper.make_node("Concat", ["yc0", "yc1"], ["cn"], axis=0),
    ]  # fmt: skip
    inits = [const(np.array([layer], np.int64), f"st{layer}") for layer in range(2)]
    inits += [const(np.array([layer + 1], np.int64), f"en{layer}") for layer in range(2)]
    inits += [const(np.array([0], np.int64), "ax0"), const(np.array([1], np.int64), "ax1")]
    for layer, k in ((0, inputs), (1, hidden)):
        inits += [weight(f"W{layer}", [1, 4 * hidden, k]), weight(f"R{layer}", [1, 4 * hidden, hidden]),
                  weight(f"B{layer}", [1, 8 * hidden])]  # fmt: skip
    state = [2, 1, hidden]
    return typed_model(nodes, [("x", [seq, 1, inputs]), ("h", state), ("c", state)],
                       [("y1", [seq, 1, 1, hidden]), ("hn", state), ("cn", state)], inits, opset=14)  # fmt: skip


MODELS = {
    # whole sequence, no state: Y and Y_h
    "sequence": lambda: cell_model("LSTM", seq=10, batch=1, inputs=5, hidden=8, states=False, outputs="y,h"),
    # the stateful one-step form streaming models run: state in, state out
    "one_step_state": lambda: cell_model("LSTM", seq=1, batch=1, inputs=8, hidden=6),
    # a sequence with initial states and every output
    "sequence_state": lambda: cell_model("LSTM", seq=6, batch=1, inputs=3, hidden=5),
    "conv_lstm_dense": conv_lstm_dense,
    "stacked_state_slices": stacked_state_slices,
    "reverse_state": lambda: cell_model("LSTM", seq=5, batch=1, inputs=4, hidden=6, direction="reverse"),
    "bidirectional_state": lambda: cell_model(
        "LSTM", seq=5, batch=1, inputs=4, hidden=6, direction="bidirectional"
    ),
    "bidirectional_y_only": lambda: cell_model(
        "LSTM", seq=7, batch=1, inputs=4, hidden=8, direction="bidirectional", states=False, outputs="y"
    ),
    # PyTorch: a two-layer bidirectional LSTM
    "torch_sequence_bidirectional": TORCH_CASES["lstm_sequence_bidirectional"],
    # GRU (edgecomp's integer GRU in the same arithmetic)
    "gru_state": lambda: cell_model("GRU", seq=6, batch=1, inputs=4, hidden=6),
    "gru_lbr_state": lambda: cell_model("GRU", seq=6, batch=1, inputs=4, hidden=6, linear_before_reset=1),
    "gru_bidirectional": lambda: cell_model(
        "GRU", seq=5, batch=1, inputs=3, hidden=5, direction="bidirectional", states=False
    ),
    "gru_reverse_y_only": lambda: cell_model(
        "GRU", seq=5, batch=1, inputs=3, hidden=5, direction="reverse", states=False, outputs="y"
    ),
    "torch_gru_sequence": TORCH_CASES["gru_sequence"],
    "torch_gru_streaming_step": TORCH_CASES["gru_streaming_step"],
    # PyTorch (TorchScript exporter): a two-layer batch-first LSTM and a linear head on every frame
    "torch_sequence": TORCH_CASES["lstm_sequence"],
    # PyTorch: one frame and (h, c) in, the output and the new (h, c) out
    "torch_streaming_step": TORCH_CASES["lstm_streaming_step"],
}


def _calib(model, n=16):
    return [random_inputs(model, seed) for seed in range(100, 100 + n)]


def _quantized(name):
    model = onnx.shape_inference.infer_shapes(MODELS[name]())
    return model, quantize(model, _calib(model)).model


def _check(name, target, tmp_path) -> list[float]:
    """Build the quantized model for `target`: its outputs bit-exact with the integer reference;
    the SQNR of each output against the float model on onnxruntime. (Not compared with onnxruntime's
    run of the QDQ model: there the recurrence runs in float between the quantizers, while the
    integer op requantizes h every step, as TFLite's does: 0-2 dB below it on these models.)"""
    float_model, qmodel = _quantized(name)
    path = tmp_path / "q.onnx"
    onnx.save(qmodel, path)
    result = build(path, load_target(target), tmp_path / f"o-{target}", BuildOptions(extra_cflags="-Werror"),
                   log=lambda *_: None)  # fmt: skip
    assert any(isinstance(op, Lstm | Gru) for op in result.int_graph.ops)
    samples = [random_inputs(float_model, seed) for seed in range(3)]  # the calibration's distribution
    runs = run_samples(result, samples)
    for run, wants in zip(runs, expected_outputs(result, samples), strict=True):
        for got, want in zip(run.outputs, wants, strict=True):
            np.testing.assert_array_equal(got, want)  # bit-exact
    floats = [Reference(float_model).run(s) for s in samples]
    return [float(sqnr_db(np.stack([f[k] for f in floats]), np.stack([r.outputs[k] for r in runs])))
            for k in range(len(runs[0].outputs))]  # fmt: skip


@pytest.mark.parametrize("name", sorted(MODELS))
def test_int8_lstm_host(name, tmp_path):
    sqnrs = _check(name, "host", tmp_path)
    assert min(sqnrs) > MIN_SQNR_DB, sqnrs


@needs_qemu
@pytest.mark.parametrize(
    "name",
    [
        "one_step_state",
        "conv_lstm_dense",
        "torch_streaming_step",
        "bidirectional_state",
        "gru_state",
        "torch_gru_streaming_step",
    ],
)
def test_int8_lstm_cortex_m7(name, tmp_path):
    sqnrs = _check(name, "cortex-m7", tmp_path)
    assert min(sqnrs) > MIN_SQNR_DB, sqnrs


@needs_qemu
def test_int8_lstm_cortex_m3_no_dsp(tmp_path):
    """The kernel's dot products in portable C (a core without the DSP extension)."""
    sqnrs = _check("sequence_state", "cortex-m3", tmp_path)
    assert min(sqnrs) > MIN_SQNR_DB, sqnrs


def test_quantized_lstm_form():
    """Weights int8 per gate row, h int8, c int16 with a power-of-two scale; Y, Y_h and Y_c all read:
    one recurrence (one op), each output cropped out of its result; one output read: one op for it."""
    _, qmodel = _quantized("sequence_state")
    graph = extract_int_graph(onnx.shape_inference.infer_shapes(qmodel))
    lstms = [op for op in graph.ops if isinstance(op, Lstm)]
    assert [op.result for op in lstms] == ["all"]
    (c_name,) = [op.inputs[0] for op in graph.ops if op.output == "c"]
    c = graph.tensors[c_name]
    assert c.dtype == "int16" and c.zero_point == 0 and 2.0 ** -lstms[0].cell_shift == c.scale
    float_model, qmodel = _quantized("conv_lstm_dense")
    graph = extract_int_graph(onnx.shape_inference.infer_shapes(qmodel))
    assert [op.result for op in graph.ops if isinstance(op, Lstm)] == ["h"]
    # The per-layer report (--eval) names the LSTM's output by its own name.
    layers = evaluate(float_model, graph, [random_inputs(float_model, s) for s in range(2)])[
        "per_layer_sqnr_db"
    ]
    assert "yh" in [row["tensor"] for row in layers]


def test_unsupported_lstm_stays_float_and_is_named():
    model = onnx.shape_inference.infer_shapes(cell_model("LSTM", seq=4, batch=1, clip=0.5))
    qmodel = quantize(model, _calib(model)).model
    assert not any(n.op_type == "QuantizeLinear" and n.input[0].startswith("lstm") for n in qmodel.graph.node)
    with pytest.raises(UnsupportedModelError, match="lstm_node.*LSTM.*cell clip"):
        extract_int_graph(onnx.shape_inference.infer_shapes(qmodel))


def test_cli_build_streaming_lstm_int8(tmp_path):
    """`edgecomp run model.onnx --quantize int8 --calib calib.npz`: a PyTorch streaming LSTM (frame,
    h, c in; mask, h, c out) builds as an integer LSTM and runs bit-exact on the host."""
    import subprocess
    import sys

    model = TORCH_CASES["lstm_streaming_step"]()
    onnx.save(model, tmp_path / "step.onnx")
    rng = np.random.default_rng(0)
    names = [i.name for i in model.graph.input]
    shapes = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    np.savez(
        tmp_path / "calib.npz", **{n: rng.standard_normal([16, *shapes[n]]).astype(np.float32) for n in names}
    )
    np.savez(tmp_path / "x.npz", **{n: rng.standard_normal(shapes[n]).astype(np.float32) for n in names})
    proc = subprocess.run([sys.executable, "-m", "edgecomp", "run", str(tmp_path / "step.onnx"), "-t", "host",
                           "--quantize", "int8", "--calib", str(tmp_path / "calib.npz"), "-i", str(tmp_path / "x.npz"),
                           "-o", str(tmp_path / "o")], capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "bit-exact" in proc.stdout
    assert "lstm_s8" in (tmp_path / "o" / "model_kernels.c").read_text()


def test_int16x8_leaves_lstm_in_float_and_says_so():
    model = onnx.shape_inference.infer_shapes(MODELS["sequence"]())
    qmodel = quantize(model, _calib(model), scheme="int16x8").model
    with pytest.raises(UnsupportedModelError, match="lstm_node.*LSTM.*left in float.*--quantize int8"):
        extract_int_graph(onnx.shape_inference.infer_shapes(qmodel))


def test_w4a8_quantizes_the_lstm_as_int8():
    """w4a8: int4 Conv/Gemm weights, the LSTM as with int8 (8-bit weights)."""
    float_model = onnx.shape_inference.infer_shapes(conv_lstm_dense())
    qmodel = quantize(float_model, _calib(float_model), scheme="w4a8").model
    graph = extract_int_graph(onnx.shape_inference.infer_shapes(qmodel))
    assert [op.result for op in graph.ops if isinstance(op, Lstm)] == ["h"]
