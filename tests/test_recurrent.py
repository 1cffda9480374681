"""LSTM, GRU and RNN (lower/recurrent.py: unrolled over the sequence) compiled for the host and
QEMU Cortex-M7 and checked against onnxruntime: models built with onnx.helper for every
direction, layout and state input, and models exported from PyTorch (whole sequence, and the
one-step-with-state form streaming audio models run)."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import pytest
from conftest import assert_outputs_match, errors_vs_onnxruntime, needs_qemu, typed_model, weight
from onnx import helper, numpy_helper

from edgecomp.errors import UnsupportedModelError
from edgecomp.frontend import load_model

TOL = 1e-4
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def cell_model(op: str, seq: int = 4, batch: int = 2, inputs: int = 3, hidden: int = 5,
               direction: str = "forward", layout: int = 0, states: bool = True, outputs: str = "y,h,c",
               peepholes: bool = False, seq_lens: np.ndarray | str | None = None, opset: int = 14,
               **attrs) -> onnx.ModelProto:  # fmt: skip
    """One LSTM/GRU/RNN node: X (and initial states, if `states`) as model inputs, weights
    constant; `outputs` names which of Y, Y_h, Y_c are model outputs."""
    d = 2 if direction == "bidirectional" else 1
    gates = GATES[op]
    inits = [
        weight(f"{op}_W", [d, gates * hidden, inputs]),
        weight(f"{op}_R", [d, gates * hidden, hidden]),
        weight(f"{op}_B", [d, 2 * gates * hidden]),
    ]
    x_shape = [seq, batch, inputs] if layout == 0 else [batch, seq, inputs]
    state_shape = [d, batch, hidden] if layout == 0 else [batch, d, hidden]
    graph_inputs = [("x", x_shape)]
    names = ["x", f"{op}_W", f"{op}_R", f"{op}_B", "", "", ""]
    if isinstance(seq_lens, str):
        graph_inputs.append(("lens", [batch], onnx.TensorProto.INT32))
        names[4] = "lens"
    elif seq_lens is not None:
        inits.append(numpy_helper.from_array(seq_lens.astype(np.int32), "lens"))
        names[4] = "lens"
    if states:
        graph_inputs.append(("h0", state_shape))
        names[5] = "h0"
        if op == "LSTM":
            graph_inputs.append(("c0", state_shape))
            names[6] = "c0"
    if peepholes:
        inits.append(weight(f"{op}_P", [d, 3 * hidden]))
        names.append(f"{op}_P")
    names = names[: 7 if op == "LSTM" else 6]
    while names and not names[-1]:
        names.pop()
    y_shape = [seq, d, batch, hidden] if layout == 0 else [batch, seq, d, hidden]
    wanted = outputs.split(",")
    outs = [n if n in wanted else "" for n in ("y", "h", "c")[: 3 if op == "LSTM" else 2]]
    while not outs[-1]:
        outs.pop()
    node = helper.make_node(op, names, outs, f"{op.lower()}_node", hidden_size=hidden, direction=direction,
                            layout=layout, **attrs)  # fmt: skip
    shapes = {"y": y_shape, "h": state_shape, "c": state_shape}
    return typed_model([node], graph_inputs, [(o, shapes[o]) for o in outs if o], inits, opset=opset)


def time_major(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same function as a layout=1 (batch-major) cell model, with a layout=0 node between
    Transposes: onnxruntime runs no batch-major recurrent op."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    node = out.graph.node[0]
    next(a for a in node.attribute if a.name == "layout").i = 0
    graph_inputs = {v.name for v in out.graph.input}
    before, after = [], []
    for i, name in enumerate(node.input):
        if name in graph_inputs:  # X [B, S, I] and the states [B, D, H]
            before.append(helper.make_node("Transpose", [name], [name + "_tm"], perm=[1, 0, 2]))
            node.input[i] = name + "_tm"
    for i, name in enumerate(node.output):
        if name:  # Y [S, D, B, H] -> [B, S, D, H]; Y_h, Y_c [D, B, H] -> [B, D, H]
            perm = [2, 0, 1, 3] if i == 0 else [1, 0, 2]
            after.append(helper.make_node("Transpose", [name + "_tm"], [name], perm=perm))
            node.output[i] = name + "_tm"
    del out.graph.node[:]
    out.graph.node.extend([*before, node, *after])
    return out


HELPER_CASES = {
    "lstm_forward_states": lambda: cell_model("LSTM"),
    "lstm_reverse_no_state": lambda: cell_model("LSTM", direction="reverse", states=False, outputs="y,h"),
    "lstm_bidirectional_states": lambda: cell_model("LSTM", direction="bidirectional"),
    "lstm_bidirectional_layout1": lambda: cell_model("LSTM", direction="bidirectional", layout=1),
    "lstm_reverse_layout1_yc_only": lambda: cell_model("LSTM", direction="reverse", layout=1, outputs="c"),
    "lstm_peepholes_clip": lambda: cell_model("LSTM", peepholes=True, clip=0.4),
    "lstm_full_sequence_lens": lambda: cell_model("LSTM", seq_lens=np.full(2, 4)),
    "lstm_relu_activations": lambda: cell_model(
        "LSTM", direction="bidirectional", activations=["Sigmoid", "Relu", "Tanh", "Sigmoid", "Tanh", "Relu"]
    ),
    "lstm_one_step": lambda: cell_model("LSTM", seq=1, batch=1, inputs=8, hidden=6),
    "gru_forward_states": lambda: cell_model("GRU"),
    "gru_linear_before_reset": lambda: cell_model("GRU", linear_before_reset=1),
    "gru_reverse_no_state": lambda: cell_model("GRU", direction="reverse", states=False),
    "gru_reverse_lbr_no_state": lambda: cell_model("GRU", direction="reverse", states=False, linear_before_reset=1),
    "gru_bidirectional_layout1": lambda: cell_model("GRU", direction="bidirectional", layout=1),
    "gru_bidirectional_lbr_clip": lambda: cell_model("GRU", direction="bidirectional", linear_before_reset=1,
                                                     clip=0.5),  # fmt: skip
    "gru_one_step": lambda: cell_model("GRU", seq=1, batch=1, linear_before_reset=1),
    "rnn_bidirectional": lambda: cell_model("RNN", direction="bidirectional"),
    "rnn_relu_layout1": lambda: cell_model("RNN", layout=1, activations=["Relu"], states=False),
}


@pytest.mark.parametrize("name", sorted(HELPER_CASES))
def test_helper_built_host(name, tmp_path):
    model = HELPER_CASES[name]()
    reference = time_major(model) if "layout1" in name else None
    assert_outputs_match(model, errors_vs_onnxruntime(model, "host", tmp_path, reference=reference), TOL)


@needs_qemu
@pytest.mark.parametrize("name", ["lstm_bidirectional_layout1", "gru_bidirectional_lbr_clip"])
def test_helper_built_cortex_m7(name, tmp_path):
    model = HELPER_CASES[name]()
    reference = time_major(model) if "layout1" in name else None
    errors = errors_vs_onnxruntime(model, "cortex-m7", tmp_path, samples=1, reference=reference)
    assert_outputs_match(model, errors, TOL)


REFUSED = {
    "sequence_lens_input": (lambda: cell_model("LSTM", seq_lens="input"), "sequence_lens must be a constant"),
    "sequence_lens_short": (lambda: cell_model("GRU", seq_lens=np.array([4, 2])), "shorter than the sequence"),
    "hard_sigmoid": (
        lambda: cell_model("GRU", activations=["HardSigmoid", "Tanh"]),
        "activation HardSigmoid is not compiled",
    ),
    "input_forget": (lambda: cell_model("LSTM", input_forget=1), "input_forget=1"),
    "activation_alpha": (
        lambda: cell_model("RNN", activations=["Relu"], activation_alpha=[0.5]),
        "activation_alpha",
    ),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_with_the_node_named(name, tmp_path):
    make, reason = REFUSED[name]
    model = make()
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    with pytest.raises(UnsupportedModelError) as err:
        from edgecomp.pipeline import BuildOptions, build
        from edgecomp.targets import load_target

        build(path, load_target("host"), tmp_path / "out", BuildOptions(), log=lambda *_: None)
    message = str(err.value)
    assert reason in message and f"'{model.graph.node[0].name}'" in message and "\n" not in message


def test_weights_that_are_not_constants_are_refused(tmp_path):
    model = cell_model("GRU")
    w = model.graph.initializer[0]
    model.graph.input.append(helper.make_tensor_value_info(w.name, w.data_type, list(w.dims)))
    model.graph.initializer.remove(w)
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    from edgecomp.pipeline import BuildOptions, build
    from edgecomp.targets import load_target

    with pytest.raises(UnsupportedModelError, match="GRU node 'gru_node': its weights W must be constants"):
        build(path, load_target("host"), tmp_path / "out", BuildOptions(), log=lambda *_: None)


# --- PyTorch exports --------------------------------------------------------------------------


def _torch_export(module, args, input_names, output_names, dynamo: bool = False) -> onnx.ModelProto:
    torch = pytest.importorskip("torch")
    module.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if dynamo:
            pytest.importorskip("onnxscript", reason="needs onnxscript (optional: the dynamo exporter's)")
            program = torch.onnx.export(module, args, dynamo=True, input_names=input_names,
                                        output_names=output_names)  # fmt: skip
            return program.model_proto
        buf = io.BytesIO()
        torch.onnx.export(module, args, buf, dynamo=False, input_names=input_names, output_names=output_names)
    return onnx.load_from_string(buf.getvalue())


def _sequence_model(kind: str, bidirectional: bool, dynamo: bool = False) -> onnx.ModelProto:
    """A two-layer batch-first LSTM/GRU over a whole sequence of 6 frames, then a linear head on
    every frame: y (per frame) and the final hidden state."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            cls = torch.nn.LSTM if kind == "LSTM" else torch.nn.GRU
            self.rnn = cls(10, 12, num_layers=2, batch_first=True, bidirectional=bidirectional)
            self.head = torch.nn.Linear(24 if bidirectional else 12, 4)

        def forward(self, x):
            y, state = self.rnn(x)
            h = state[0] if kind == "LSTM" else state
            return self.head(y), h

    return _torch_export(Net(), (torch.randn(1, 6, 10),), ["x"], ["y", "h"], dynamo)


def _streaming_model(kind: str, dynamo: bool = False) -> onnx.ModelProto:
    """The stateful one-step form: one frame and the state in, the output and the new state
    out (what a keyword-spotting or noise-suppression model runs per audio frame)."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(1)

    class Step(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            cls = torch.nn.LSTM if kind == "LSTM" else torch.nn.GRU
            self.rnn = cls(16, 20, num_layers=1)
            self.head = torch.nn.Linear(20, 3)

        def forward(self, x, h, *c):
            if kind == "LSTM":
                y, (h1, c1) = self.rnn(x, (h, c[0]))
                return torch.sigmoid(self.head(y)), h1, c1
            y, h1 = self.rnn(x, h)
            return torch.sigmoid(self.head(y)), h1

    args = (torch.randn(1, 1, 16), torch.randn(1, 1, 20))
    names_in, names_out = ["frame", "h_in"], ["mask", "h_out"]
    if kind == "LSTM":
        args += (torch.randn(1, 1, 20),)
        names_in.append("c_in")
        names_out.append("c_out")
    return _torch_export(Step(), args, names_in, names_out, dynamo)


TORCH_CASES = {
    "lstm_sequence": lambda: _sequence_model("LSTM", bidirectional=False),
    "lstm_sequence_bidirectional": lambda: _sequence_model("LSTM", bidirectional=True),
    "gru_sequence": lambda: _sequence_model("GRU", bidirectional=False),
    "gru_sequence_bidirectional": lambda: _sequence_model("GRU", bidirectional=True),
    "lstm_streaming_step": lambda: _streaming_model("LSTM"),
    "gru_streaming_step": lambda: _streaming_model("GRU"),
    "lstm_sequence_dynamo": lambda: _sequence_model("LSTM", bidirectional=True, dynamo=True),
    "lstm_streaming_step_dynamo": lambda: _streaming_model("LSTM", dynamo=True),
    "gru_sequence_dynamo": lambda: _sequence_model("GRU", bidirectional=False, dynamo=True),
    "gru_streaming_step_dynamo": lambda: _streaming_model("GRU", dynamo=True),
}


@pytest.mark.parametrize("name", sorted(TORCH_CASES))
def test_torch_export_host(name, tmp_path):
    model = TORCH_CASES[name]()
    assert {"LSTM", "GRU"} & {n.op_type for n in model.graph.node}
    assert_outputs_match(model, errors_vs_onnxruntime(model, "host", tmp_path), TOL)


@needs_qemu
@pytest.mark.parametrize("name", ["lstm_streaming_step", "gru_sequence_bidirectional"])
def test_torch_export_cortex_m7(name, tmp_path):
    model = TORCH_CASES[name]()
    assert_outputs_match(model, errors_vs_onnxruntime(model, "cortex-m7", tmp_path, samples=1), TOL)


def test_streaming_state_round_trip(tmp_path):
    """Feeding the state outputs back as inputs frame by frame gives what the whole sequence
    gives in one call (the streaming form is the same cell)."""
    model = cell_model("LSTM", seq=1, batch=1, inputs=3, hidden=5, outputs="y,h,c")
    path = tmp_path / "step.onnx"
    onnx.save(model, path)
    from edgecomp.pipeline import BuildOptions, build
    from edgecomp.runner import run_samples
    from edgecomp.targets import load_target

    result = build(path, load_target("host"), tmp_path / "out", BuildOptions(sanitize=True), log=lambda *_: None)
    whole = cell_model("LSTM", seq=5, batch=1, inputs=3, hidden=5, outputs="y,h,c")
    from edgecomp.verify import Reference

    rng = np.random.default_rng(3)
    frames = rng.standard_normal((5, 1, 3)).astype(np.float32)
    h = rng.standard_normal((1, 1, 5)).astype(np.float32)
    c = rng.standard_normal((1, 1, 5)).astype(np.float32)
    y_ref, h_ref, c_ref = Reference(whole).run([frames, h, c])
    ys = []
    for t in range(5):
        (run,) = run_samples(result, [[frames[t : t + 1], h, c]])
        y, h, c = run.outputs
        ys.append(y)
    scale = float(np.max(np.abs(y_ref)))
    assert float(np.max(np.abs(np.concatenate(ys) - y_ref))) / scale <= TOL
    assert float(np.max(np.abs(h - h_ref))) / scale <= TOL
    assert float(np.max(np.abs(c - c_ref))) / max(float(np.max(np.abs(c_ref))), 1e-6) <= TOL


def test_front_end_accepts_recurrent_ops(tmp_path):
    """The op check passes LSTM/GRU/RNN (rewritten before TVM) and names a refused attribute."""
    path = tmp_path / "m.onnx"
    onnx.save(cell_model("GRU"), path)
    load_model(path)
    onnx.save(cell_model("LSTM", activations=["Sigmoid", "Tanh", "Softsign"]), path)
    with pytest.raises(UnsupportedModelError, match="LSTM \\(node 'lstm_node'\\): activation Softsign"):
        load_model(path)
