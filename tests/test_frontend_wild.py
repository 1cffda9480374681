"""Models as third-party exporters write them: initializers listed as inputs (IR < 4), dynamic
dims of every spelling, shape arithmetic and If nodes that fold once inputs are pinned or frozen,
names that are not C identifiers, onnxruntime's uint8 QDQ models, tiny outputs in `run`'s check.

Each model is built with onnx.helper, compiled for the host (ASan/UBSan, -Werror) and compared
with onnxruntime; the CLI's refusals are one line with exit code 2."""

from __future__ import annotations

import json
import re
import shlex

import numpy as np
import onnx
import pytest
from conftest import compile_and_compare, make_model, weight
from onnx import TensorProto, helper, numpy_helper
from test_cli_errors import assert_clean_error, edgecomp

from edgecomp.errors import UserError
from edgecomp.frontend import load_model
from edgecomp.pipeline import BuildOptions, build
from edgecomp.runner import run_samples
from edgecomp.targets import load_target
from edgecomp.verify import Comparison, Reference, check_outputs, compare

HOST = dict(extra_cflags="-Werror", sanitize=True)


def _save(model: onnx.ModelProto, tmp_path, name: str = "m.onnx"):
    path = tmp_path / name
    onnx.save(model, path)
    return path


def _const(name: str, value, dtype=np.int64) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(value, dtype), name)


# -- 1. initializers listed as inputs ----------------------------------------------------------


def _ir3_model() -> onnx.ModelProto:
    """An IR-3 / opset-9 model as the caffe2 model zoo wrote them: every initializer is also a
    graph input, the weight is made by ConstantOfShape from a shape initializer (2048 values: more
    than the growth guard folds), and one int64 initializer (BatchNorm's counter) is unused."""
    nodes = [
        helper.make_node("ConstantOfShape", ["w_shape"], ["w"],
                         value=numpy_helper.from_array(np.array([0.03], np.float32))),  # fmt: skip
        helper.make_node("MatMul", ["x", "w"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["y"]),
    ]
    inits = [_const("w_shape", [64, 32]), weight("b", [32]), _const("bn.num_batches_tracked", 0)]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])] + [
        helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in inits
    ]
    graph = helper.make_graph(nodes, "ir3", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32])],
                              inits)  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)])
    model.ir_version = 3
    onnx.checker.check_model(model)
    return model


def test_initializer_inputs_are_weights(tmp_path):
    err = compile_and_compare(_ir3_model(), "host", tmp_path, options=BuildOptions(**HOST))
    assert err < 1e-5
    report = json.loads((tmp_path / "out-host" / "report.json").read_text())
    assert [i["name"] for i in report["inputs"]] == ["x"]
    assert "int model_run(const float *x, float *y)" in (tmp_path / "out-host" / "model.h").read_text()


def test_keep_input_keeps_an_initializer_as_input(tmp_path):
    err = compile_and_compare(_ir3_model(), "host", tmp_path, options=BuildOptions(keep_inputs=("b",), **HOST))
    assert err < 1e-5
    report = json.loads((tmp_path / "out-host" / "report.json").read_text())
    assert [i["name"] for i in report["inputs"]] == ["x", "b"]


def test_keep_input_unknown_name_is_a_clear_error(tmp_path):
    path = _save(_ir3_model(), tmp_path)
    proc = edgecomp("build", path, "-t", "host", "--keep-input", "x", "-o", tmp_path / "o")
    assert_clean_error(proc, 2, "--keep-input", "'x'", "w_shape")


# -- 2. dynamic dims ---------------------------------------------------------------------------


def _paddle_style() -> onnx.ModelProto:
    """Paddle2ONNX 1.x: batch -1, H and W with neither value nor param, outputs declared with
    symbolic dims that pinning must not contradict."""
    conv = helper.make_node("Conv", ["x", "w"], ["c"], "conv", pads=[1, 1, 1, 1])
    relu = helper.make_node("Relu", ["c"], ["y"], "")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 3, None, None])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["p2o.DynamicDimension.0", 4, "unk__12", -1])
    graph = helper.make_graph([conv, relu], "paddle", [x], [y], [weight("w", [4, 3, 3, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 7
    return model


def test_minus_one_and_unnamed_dims_are_pinned(tmp_path):
    model = load_model(_save(_paddle_style(), tmp_path), {"x": [2, 3, 6, 5]})
    dims = [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim]
    assert dims == [2, 4, 6, 5]


def test_dynamic_shape_hint_is_a_working_command_line(tmp_path):
    path = _save(_paddle_style(), tmp_path)
    proc = edgecomp("build", path, "-t", "host", "-o", tmp_path / "o")
    assert_clean_error(proc, 2, "dynamic shape", "--input-shape x=1,3,1,1")
    hint = re.search(r"(--input-shape \S+)", proc.stderr).group(1)
    x = np.random.default_rng(0).standard_normal((1, 3, 1, 1)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    ok = edgecomp("run", path, "-t", "host", "-o", tmp_path / "o", "-i", tmp_path / "x.npy", *shlex.split(hint))
    assert ok.returncode == 0, ok.stderr


def test_dim_param_spellings_are_dynamic(tmp_path):
    for spelling in ["N", "batch", "unk__12", "p2o.DynamicDimension.0", "s6", "floor(height/2 - 1/2) + 1"]:
        model = make_model([helper.make_node("Relu", ["x"], ["y"])], [("x", [spelling, 4])], [("y", [spelling, 4])])
        path = _save(model, tmp_path)
        with pytest.raises(UserError, match=r"--input-shape x=1,4"):
            load_model(path)
        assert [d.dim_value for d in load_model(path, {"x": [3, 4]}).graph.output[0].type.tensor_type.shape.dim] == [3, 4]


def test_fixed_dim_conflict_names_dimension(tmp_path):
    with pytest.raises(UserError, match="dimension 1 is fixed to 3"):
        load_model(_save(_paddle_style(), tmp_path), {"x": [1, 4, 8, 8]})


# -- 3. shape chains to a fixed point ----------------------------------------------------------


def _shape_chain() -> onnx.ModelProto:
    """Exporter shape arithmetic on a dynamic batch: Shape -> Gather -> Concat -> Reshape, Shape ->
    Slice -> ConstantOfShape, Range -> Expand, all constant once the batch is pinned."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "zero1"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus1"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["flat"]),                      # [N, 24]
        helper.make_node("Shape", ["flat"], ["fs"]),
        helper.make_node("Slice", ["fs", "one1", "two1"], ["width"]),                # [24]
        helper.make_node("Squeeze", ["width", "zero1"], ["w0"]),
        helper.make_node("Cast", ["w0"], ["wf"], to=TensorProto.FLOAT),
        helper.make_node("Range", ["zerof", "wf", "onef"], ["ramp"]),                # 0..23
        helper.make_node("Expand", ["ramp", "fs"], ["ramps"]),
        helper.make_node("ConstantOfShape", ["fs"], ["ones"], value=numpy_helper.from_array(np.array([0.5], np.float32))),
        helper.make_node("Mul", ["flat", "ones"], ["half"]),
        helper.make_node("Add", ["half", "ramps"], ["y"]),
    ]  # fmt: skip
    inits = [_const("zero", 0), _const("zero1", [0]), _const("minus1", [-1]), _const("one1", [1]),
             _const("two1", [2]), _const("zerof", 0.0, np.float32), _const("onef", 1.0, np.float32)]  # fmt: skip
    return make_model(nodes, [("x", ["N", 2, 3, 4])], [("y", ["N", 24])], inits)


def test_shape_chain_folds_and_matches(tmp_path):
    model = load_model(_save(_shape_chain(), tmp_path), {"x": [2, 2, 3, 4]})
    assert {n.op_type for n in model.graph.node} <= {"Reshape", "Mul", "Add"}
    err = compile_and_compare(_shape_chain(), "host", tmp_path,
                              options=BuildOptions(input_shapes={"x": [2, 2, 3, 4]}, **HOST))  # fmt: skip
    assert err < 1e-6


# -- 4. --freeze and If ------------------------------------------------------------------------


def _branch(name: str, nodes, out: str) -> onnx.GraphProto:
    return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)])


def _if_on_sr(nested: bool = False) -> onnx.ModelProto:
    """Silero-VAD style: an If on `sr == 16000`; nested: the taken branch holds another If on
    `sr > 8000`, and its local names collide with the outer graph's ('t')."""
    inner = helper.make_node(
        "If", ["gt"], ["t"],
        then_branch=_branch("inner_then", [helper.make_node("Mul", ["x", "two"], ["t"])], "t"),
        else_branch=_branch("inner_else", [helper.make_node("Neg", ["x"], ["t_neg"])], "t_neg"),
    )  # fmt: skip
    then_nodes = [helper.make_node("Greater", ["sr", "k8"], ["gt"]), inner] if nested else [
        helper.make_node("Mul", ["x", "two"], ["t"])]  # fmt: skip
    then_nodes.append(helper.make_node("Add", ["t", "one"], ["r16"]))
    outer = helper.make_node(
        "If", ["is16k"], ["r"],
        then_branch=_branch("then", then_nodes, "r16"),
        else_branch=_branch("else", [helper.make_node("Mul", ["x", "three"], ["r8"])], "r8"),
    )  # fmt: skip
    nodes = [
        helper.make_node("Equal", ["sr", "k16"], ["is16k"]),
        outer,
        helper.make_node("Relu", ["x"], ["t_outer"]),
        helper.make_node("Add", ["r", "t_outer"], ["y"]),
    ]
    inits = [_const("k16", 16000), _const("k8", 8000), _const("two", 2.0, np.float32),
             _const("three", 3.0, np.float32), _const("one", 1.0, np.float32)]  # fmt: skip
    graph = helper.make_graph(
        nodes, "vad",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8]), helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])], inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 16)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@pytest.mark.parametrize("nested", [False, True])
def test_if_on_a_frozen_input_is_inlined(tmp_path, nested):
    model = _if_on_sr(nested)
    folded = load_model(_save(model, tmp_path), freeze={"sr": [16000]})
    assert "If" not in {n.op_type for n in folded.graph.node}
    assert [i.name for i in folded.graph.input] == ["x"]
    err = compile_and_compare(model, "host", tmp_path, options=BuildOptions(freeze={"sr": [16000]}, **HOST))
    assert err < 1e-6
    # The build computes the branch that sr=16000 takes.
    x = np.random.default_rng(1).standard_normal((1, 8)).astype(np.float32)
    want = Reference(model).run([x, np.array(16000, np.int64)])[0]
    result = build(tmp_path / "m.onnx", load_target("host"), tmp_path / "out-host",
                   BuildOptions(freeze={"sr": [16000]}, **HOST), reuse=True, log=lambda *_: None)  # fmt: skip
    got = run_samples(result, [[x]])[0].outputs[0]
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_if_on_a_live_input_is_refused_with_the_way_out(tmp_path):
    proc = edgecomp("build", _save(_if_on_sr(), tmp_path), "-t", "host", "-o", tmp_path / "o")
    assert_clean_error(proc, 2, "If", "['sr']", "--freeze")


def test_freeze_errors(tmp_path):
    path = _save(_if_on_sr(), tmp_path)
    for args, needles in [
        (["--freeze", "rate=16000"], ["--freeze", "unknown input", "'rate'", "sr"]),
        (["--freeze", "sr=16000.5"], ["--freeze sr", "integer"]),
        (["--freeze", "sr=1,2"], ["--freeze sr", "2 given"]),
        (["--freeze", "sr=abc"], ["bad --freeze"]),
        (["--freeze", "x=1"], ["--freeze x", "8 values", "1 given"]),
    ]:
        assert_clean_error(edgecomp("build", path, "-t", "host", "-o", tmp_path / "o", *args), 2, *needles)
    assert not (tmp_path / "o").exists()


def test_freeze_respects_dtype(tmp_path):
    model = load_model(_save(_if_on_sr(), tmp_path), freeze={"sr": [16000]})
    # folded away, but the frozen constant was int64 (a float one would fail the Equal's type check)
    assert "sr" not in [i.name for i in model.graph.input]


# -- 5. names that are not C identifiers -------------------------------------------------------

HOSTILE = {
    "in_slash": "gpu_0/data_0", "in_colon": "input:0", "in_dup": "a/b", "in_dup2": "a_b",
    "out_json": '{"1": "1_minute_timer", "2": "x"}', "out_kw": "int", "out_rc": "rc",
}  # fmt: skip
INTERMEDIATE = ["onnx::Mul_3", "x.1", "with space", "quote'\"", "9starts_with_digit", "é_non_ascii",
                "end */ comment", "args"]  # fmt: skip


def _hostile_model() -> onnx.ModelProto:
    a, b, c, d = HOSTILE["in_slash"], HOSTILE["in_colon"], HOSTILE["in_dup"], HOSTILE["in_dup2"]
    i0, i1, i2, i3, i4, i5, i6, i7 = INTERMEDIATE
    nodes = [
        helper.make_node("Mul", [a, b], [i0], "node/with:odd.name"),
        helper.make_node("Add", [i0, c], [i1]),
        helper.make_node("Relu", [i1], [i2]),
        helper.make_node("Sub", [i2, d], [i3]),
        helper.make_node("Sigmoid", [i3], [i4]),
        helper.make_node("Add", [i4, "weight::w"], [i5]),
        helper.make_node("Tanh", [i5], [i6]),
        helper.make_node("Neg", [i6], [i7]),
        helper.make_node("Identity", [i7], [HOSTILE["out_json"]]),
        helper.make_node("Abs", [i3], [HOSTILE["out_kw"]]),
        helper.make_node("Mul", [i7, i0], [HOSTILE["out_rc"]]),
    ]
    return make_model(nodes, [(n, [1, 6]) for n in (a, b, c, d)],
                      [(HOSTILE[k], [1, 6]) for k in ("out_json", "out_kw", "out_rc")], [weight("weight::w", [6])])  # fmt: skip


def test_hostile_names_compile_and_match(tmp_path):
    err = compile_and_compare(_hostile_model(), "host", tmp_path)
    assert err < 1e-5
    out = tmp_path / "out-host"
    report = json.loads((out / "report.json").read_text())
    assert [i["name"] for i in report["inputs"]] == [HOSTILE[k] for k in ("in_slash", "in_colon", "in_dup", "in_dup2")]
    assert [o["name"] for o in report["outputs"]] == [HOSTILE[k] for k in ("out_json", "out_kw", "out_rc")]
    header = (out / "model.h").read_text()
    assert "/* input 0: 'gpu_0/data_0' float[1][6] */" in header
    assert "'{\"1\": \"1_minute_timer\", \"2\": \"x\"}'" in header  # the model's own name, in a comment
    # Unique identifiers: 'a/b' and 'a_b' both map to a_b.
    assert "const float *a_b, const float *a_b_2" in header
    assert "float *v_int, float *v_rc" in header


def test_hostile_names_through_the_cli(tmp_path):
    path = _save(_hostile_model(), tmp_path)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "x.npz", **{HOSTILE[k]: rng.standard_normal((1, 6)).astype(np.float32)
                                    for k in ("in_slash", "in_colon", "in_dup", "in_dup2")})  # fmt: skip
    proc = edgecomp("run", path, "-t", "host", "-i", tmp_path / "x.npz", "-o", tmp_path / "o")
    assert proc.returncode == 0, proc.stderr


# -- 6. refusals name node, op and way out -----------------------------------------------------


def test_unnamed_node_is_named_by_its_output(tmp_path):
    model = make_model([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("NonZero", ["r"], ["nz_out"])],
                       [("x", [1, 4])], [("nz_out", [2, 4])])  # fmt: skip
    model.graph.output[0].type.tensor_type.elem_type = TensorProto.INT64
    proc = edgecomp("build", _save(model, tmp_path), "-t", "host", "-o", tmp_path / "o")
    assert_clean_error(proc, 2, "NonZero (node 'nz_out')")
    assert "#1" not in proc.stderr


def test_missing_op_is_named(tmp_path):
    model = make_model([helper.make_node("Det", ["x"], ["y"], "the_det")], [("x", [1, 3, 3])], [("y", [1])])
    proc = edgecomp("build", _save(model, tmp_path), "-t", "host", "-o", tmp_path / "o")
    assert_clean_error(proc, 2, "Det (node 'the_det')", "edgecomp ops")


# -- 7. onnxruntime's uint8 QDQ models; run's absolute tolerance -------------------------------


def test_onnxruntime_uint8_activations_compile_bit_exact(tmp_path):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    x = "gpu_0/data_0"  # the integer path hands TVM safe names too
    conv = helper.make_node("Conv", [x, "w", "b"], ["c"], "conv", pads=[1, 1, 1, 1])
    nodes = [conv, helper.make_node("Relu", ["c"], ["r"]), helper.make_node("GlobalAveragePool", ["r"], ["y"])]
    model = make_model(nodes, [(x, [1, 3, 8, 8])], [("y", [1, 4, 1, 1])], [weight("w", [4, 3, 3, 3]), weight("b", [4])])
    rng = np.random.default_rng(0)
    samples = [rng.standard_normal((1, 3, 8, 8)).astype(np.float32) for _ in range(8)]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(samples)

        def get_next(self):
            sample = next(self.it, None)
            return None if sample is None else {x: sample}

    src, dst = _save(model, tmp_path, "f.onnx"), tmp_path / "q.onnx"
    # onnxruntime's defaults: uint8 activations, int8 weights
    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)  # fmt: skip
    zps = [numpy_helper.to_array(t) for t in onnx.load(dst).graph.initializer if "zero_point" in t.name]
    assert any(z.dtype == np.uint8 for z in zps)
    result = build(dst, load_target("host"), tmp_path / "out", BuildOptions(**HOST), log=lambda *_: None)
    assert result.int_graph is not None
    data = [[s] for s in samples[:3]]
    runs = run_samples(result, data)
    check = check_outputs(result, data, [r.outputs for r in runs])
    assert check.ok and check.figures["bit_exact"], check.lines


def test_absolute_tolerance_for_tiny_outputs():
    tiny = Comparison(max_abs_error=1.3e-7, max_abs_reference=1e-4, argmax_agreement=1.0)
    assert tiny.rel_error > 1e-4  # what the relative check alone refused
    assert tiny.within(1e-4)  # atol 1e-6 by default
    assert not tiny.within(1e-4, atol=0.0)
    assert not Comparison(2e-3, 1.0, 1.0).within(1e-4)


# -- 8. exporters' own patterns, whole models --------------------------------------------------


def _matches_downloaded(model: onnx.ModelProto, tmp_path, shapes: dict, feed: dict) -> float:
    """Build `model` as saved (only --input-shape), run `feed` on the host and return the relative
    error against onnxruntime running the saved file itself (not edgecomp's folded model)."""
    import onnxruntime as ort

    path = _save(model, tmp_path, "downloaded.onnx")
    result = build(path, load_target("host"), tmp_path / "out", BuildOptions(input_shapes=shapes, **HOST),
                   log=lambda *_: None)  # fmt: skip
    assert [i["name"] for i in result.report["inputs"]] == list(feed)  # the model's own names
    got = run_samples(result, [list(feed.values())])[0].outputs
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)
    return compare([got], [want]).rel_error


def _tf2onnx_style() -> onnx.ModelProto:
    """tf2onnx from Keras: NHWC input named 'input_1:0' with an 'unk__' batch, Transposes around the
    NCHW Conv, tensor names with '/' and ':', a flatten through Shape -> Gather -> Concat."""
    p = "StatefulPartitionedCall/model/"
    nodes = [
        helper.make_node("Transpose", ["input_1:0"], [p + "conv2d/BiasAdd__6:0"], p + "conv2d/BiasAdd__6", perm=[0, 3, 1, 2]),
        helper.make_node("Conv", [p + "conv2d/BiasAdd__6:0", "const_fold_opt__21", "conv2d/bias:0"],
                         [p + "conv2d/BiasAdd:0"], p + "conv2d/BiasAdd", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", [p + "conv2d/BiasAdd:0"], [p + "conv2d/Relu:0"], p + "conv2d/Relu"),
        helper.make_node("Transpose", [p + "conv2d/Relu:0"], [p + "conv2d/Relu__9:0"], p + "conv2d/Relu__9",
                         perm=[0, 2, 3, 1]),
        helper.make_node("Shape", [p + "conv2d/Relu__9:0"], [p + "flatten/Shape:0"], p + "flatten/Shape"),
        helper.make_node("Gather", [p + "flatten/Shape:0", "zero"], [p + "flatten/strided_slice:0"], axis=0),
        helper.make_node("Unsqueeze", [p + "flatten/strided_slice:0", "zero1"], [p + "flatten/batch:0"]),
        helper.make_node("Concat", [p + "flatten/batch:0", "flat_width"], [p + "flatten/Reshape/shape:0"], axis=0),
        helper.make_node("Reshape", [p + "conv2d/Relu__9:0", p + "flatten/Reshape/shape:0"], [p + "flatten/Reshape:0"]),
        helper.make_node("MatMul", [p + "flatten/Reshape:0", "dense/kernel:0"], [p + "dense/MatMul:0"]),
        helper.make_node("Add", [p + "dense/MatMul:0", "dense/bias:0"], [p + "dense/BiasAdd:0"]),
        helper.make_node("Softmax", [p + "dense/BiasAdd:0"], ["dense"], axis=-1),
    ]  # fmt: skip
    inits = [weight("const_fold_opt__21", [4, 3, 3, 3]), weight("conv2d/bias:0", [4]), _const("zero", 0),
             _const("zero1", [0]), _const("flat_width", [8 * 8 * 4]), weight("dense/kernel:0", [256, 5]),
             weight("dense/bias:0", [5])]  # fmt: skip
    return make_model(nodes, [("input_1:0", ["unk__316", 8, 8, 3])], [("dense", ["unk__317", 5])], inits)


def test_tf2onnx_nhwc_model_compiles_as_downloaded(tmp_path):
    x = np.random.default_rng(0).standard_normal((1, 8, 8, 3)).astype(np.float32)
    assert _matches_downloaded(_tf2onnx_style(), tmp_path, {"input_1:0": [1, 8, 8, 3]}, {"input_1:0": x}) < 1e-5


def test_tf2onnx_export_of_a_keras_model_compiles_as_downloaded(tmp_path):
    """The real route: a Keras model (conv, depthwise, batch norm, pooling, dense, softmax; random
    non-trivial batch-norm statistics) exported by tf2onnx with a dynamic batch, compiled with only
    --input-shape and compared with onnxruntime on the exported file."""
    tf = pytest.importorskip("tensorflow", reason="tensorflow (dev extra) is not installed")
    tf2onnx = pytest.importorskip("tf2onnx", reason="tf2onnx (dev extra) is not installed")
    tf.keras.utils.set_random_seed(0)
    model = tf.keras.Sequential([
        tf.keras.Input((12, 12, 3)), tf.keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
        tf.keras.layers.DepthwiseConv2D(3, strides=2), tf.keras.layers.BatchNormalization(),
        tf.keras.layers.ReLU(6.0), tf.keras.layers.GlobalAveragePooling2D(), tf.keras.layers.Dense(5),
        tf.keras.layers.Softmax()])  # fmt: skip
    bn = model.layers[2]
    rng = np.random.default_rng(1)
    bn.set_weights([rng.uniform(0.5, 1.5, 8), rng.normal(0, 0.2, 8), rng.normal(0, 0.3, 8), rng.uniform(0.5, 2, 8)])
    spec = (tf.TensorSpec((None, 12, 12, 3), tf.float32, name="input_1"),)
    proto, _ = tf2onnx.convert.from_function(tf.function(lambda x: model(x)), input_signature=spec, opset=13)
    name = proto.graph.input[0].name
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 0  # exported with a dynamic batch
    x = rng.standard_normal((1, 12, 12, 3)).astype(np.float32)
    assert _matches_downloaded(proto, tmp_path, {name: [1, 12, 12, 3]}, {name: x}) < 1e-5


def _hugging_face_style(vocab: int = 50, hidden: int = 16, heads: int = 2) -> onnx.ModelProto:
    """A BERT-style encoder layer as torch.onnx exports Hugging Face models (opset 14): int64
    input_ids and attention_mask with symbolic batch_size/sequence_length, position ids from
    Shape -> Gather -> Range, LayerNorm spelt out (ReduceMean, Pow, Sqrt), the mask turned into
    (1 - mask) * float32 min, heads split and merged by Reshapes whose shapes come from Shape ->
    Gather -> Concat, Softmax attention on 4-D MatMuls, the Erf form of Gelu."""
    n: list[onnx.NodeProto] = []
    inits = [weight("word_embeddings.weight", [vocab, hidden]), weight("position_embeddings.weight", [32, hidden])]

    def node(op, ins, outs=None, **attrs):
        out = outs or [f"/{op}_{len(n)}_output_0"]
        n.append(helper.make_node(op, ins, out, f"/{op}_{len(n)}", **attrs))
        return out[0]

    def const(name, value, dtype=np.int64):
        inits.append(_const(name, value, dtype))
        return name

    def dim(x, i):  # Shape -> Gather -> Unsqueeze: one dim of x as a 1-D int64 tensor
        return node("Unsqueeze", [node("Gather", [node("Shape", [x]), const(f"idx{len(n)}", i)], axis=0), "axes0"])

    def layer_norm(x, tag):
        inits.extend([weight(f"{tag}.weight", [hidden]), weight(f"{tag}.bias", [hidden])])
        c = node("Sub", [x, node("ReduceMean", [x], axes=[-1])])
        var = node("ReduceMean", [node("Pow", [c, const(f"two{len(n)}", 2.0, np.float32)])], axes=[-1])
        norm = node("Div", [c, node("Sqrt", [node("Add", [var, const(f"eps{len(n)}", 1e-12, np.float32)])])])
        return node("Add", [node("Mul", [norm, f"{tag}.weight"]), f"{tag}.bias"])

    def linear(x, tag, out_dim):
        inits.extend([weight(f"{tag}.weight", [hidden, out_dim]), weight(f"{tag}.bias", [out_dim])])
        return node("Add", [f"{tag}.bias", node("MatMul", [x, f"{tag}.weight"])])

    const("axes0", [0])
    ids = "input_ids"
    seq = node("Gather", [node("Shape", [ids]), const("one_index", 1)], axis=0)
    positions = node("Unsqueeze", [node("Range", [const("start", 0), seq, const("step", 1)]), "axes0"])
    emb = node("Add", [node("Gather", ["word_embeddings.weight", ids]),
                       node("Gather", ["position_embeddings.weight", positions])])  # fmt: skip
    x = layer_norm(emb, "embeddings.LayerNorm")
    mask = node("Cast", [node("Unsqueeze", ["attention_mask", const("axes12", [1, 2])])], to=TensorProto.FLOAT)
    ext = node("Mul", [node("Sub", [const("one_f", 1.0, np.float32), mask]),
                       const("fmin", np.finfo(np.float32).min, np.float32)])  # fmt: skip
    head = hidden // heads
    split = node("Concat", [dim(x, 0), dim(x, 1), const("heads", [heads, head])], axis=0)

    def heads_of(tag, perm):
        return node("Transpose", [node("Reshape", [linear(x, tag, hidden), split])], perm=perm)

    q, k, v = heads_of("query", [0, 2, 1, 3]), heads_of("key", [0, 2, 3, 1]), heads_of("value", [0, 2, 1, 3])
    scores = node("Add", [node("Div", [node("MatMul", [q, k]), const("sqrt_d", np.sqrt(head), np.float32)]), ext])
    ctx = node("Transpose", [node("MatMul", [node("Softmax", [scores], axis=-1), v])], perm=[0, 2, 1, 3])
    merge = node("Concat", [dim(ctx, 0), dim(ctx, 1), const("hidden", [hidden])], axis=0)
    attn = layer_norm(node("Add", [linear(node("Reshape", [ctx, merge]), "attention.output.dense", hidden), x]),
                      "attention.output.LayerNorm")  # fmt: skip
    h = linear(attn, "intermediate.dense", hidden)
    erf = node("Erf", [node("Div", [h, const("sqrt2", np.sqrt(2.0), np.float32)])])
    node("Mul", [node("Mul", [h, node("Add", [erf, const("one_g", 1.0, np.float32)])]), const("half", 0.5, np.float32)],
         ["last_hidden_state"])
    spec = ["batch_size", "sequence_length"]
    graph = helper.make_graph(n, "main_graph", [helper.make_tensor_value_info(i, TensorProto.INT64, spec)
                                                for i in ("input_ids", "attention_mask")],
                              [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, [*spec, hidden])],
                              inits)  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)], producer_name="pytorch")
    model.ir_version = 7
    onnx.checker.check_model(model, full_check=True)
    return model


def test_hugging_face_encoder_compiles_as_downloaded(tmp_path):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 50, (2, 6)).astype(np.int64)
    mask = np.ones((2, 6), np.int64)
    mask[1, 4:] = 0  # padding in the second sequence
    shapes = {"input_ids": [2, 6], "attention_mask": [2, 6]}
    err = _matches_downloaded(_hugging_face_style(), tmp_path, shapes, {"input_ids": ids, "attention_mask": mask})
    assert err < 1e-5


def _qoperator(tmp_path, with_add: bool):
    """A float model quantized by onnxruntime's quantize_static in its QOperator format (uint8
    activations, its default): QLinearConv, QLinearMatMul, and com.microsoft.QLinearAdd for an Add."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], "conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]), helper.make_node("Reshape", ["r", "shape"], ["f"]),
             helper.make_node("MatMul", ["f", "w2"], ["m" if with_add else "y"], "fc")]  # fmt: skip
    inits = [weight("w", [4, 3, 3, 3]), weight("b", [4]), _const("shape", [1, 256]), weight("w2", [256, 5])]
    if with_add:
        nodes.append(helper.make_node("Add", ["m", "b2"], ["y"], "fc_bias"))
        inits.append(weight("b2", [5]))
    model = make_model(nodes, [("x", [1, 3, 8, 8])], [("y", [1, 5])], inits)
    rng = np.random.default_rng(0)
    samples = [rng.standard_normal((1, 3, 8, 8)).astype(np.float32) for _ in range(8)]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(samples)

        def get_next(self):
            sample = next(self.it, None)
            return None if sample is None else {"x": sample}

    dst = tmp_path / "qop.onnx"
    quantize_static(str(_save(model, tmp_path, "f.onnx")), str(dst), Reader(), quant_format=QuantFormat.QOperator,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)  # fmt: skip
    return dst, samples


def test_onnxruntime_qoperator_model_matches_onnxruntime(tmp_path):
    path, samples = _qoperator(tmp_path, with_add=False)
    assert {"QLinearConv", "QLinearMatMul"} <= {n.op_type for n in onnx.load(path).graph.node}
    result = build(path, load_target("host"), tmp_path / "out", BuildOptions(**HOST), log=lambda *_: None)
    data = [[s] for s in samples[:3]]
    got = [r.outputs for r in run_samples(result, data)]
    ref = Reference(onnx.load(path))  # onnxruntime's own QLinear kernels on the file
    cmp = compare(got, [ref.run(d) for d in data])
    # The requantization is float (as the ONNX reference): within float rounding, no whole step off.
    assert cmp.rel_error < 1e-5, cmp


def test_onnxruntime_qoperator_contrib_op_names_the_way_out(tmp_path):
    path, _ = _qoperator(tmp_path, with_add=True)
    proc = edgecomp("build", path, "-t", "host", "-o", tmp_path / "o")
    assert_clean_error(proc, 2, "com.microsoft.QLinearAdd", "fc_bias", "QuantFormat.QDQ", "--quantize int8")
