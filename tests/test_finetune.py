"""Fine-tuning (optional extra, PyTorch): the torch interpretation of an ONNX graph computes what
onnxruntime computes, and distillation from the unpruned model recovers a pruned CNN's accuracy
on real data (scikit-learn's digits) while keeping the graph as it was."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import make_model, random_inputs, weight
from digits import load_split, to_onnx, train
from onnx import helper, numpy_helper

from edgecomp.cli import main
from edgecomp.passes import fold_constants, prune_channels, simplify
from edgecomp.verify import Reference

torch = pytest.importorskip("torch")

from edgecomp.finetune import FinetuneConfig, finetune, graph_module  # noqa: E402


def _ops_model():
    """One of most ops the converter handles: asymmetric padding, depthwise, pools with padding,
    a residual Add, Concat, Clip, Reshape, Gemm and a final Softmax."""
    nodes = [
        helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], pads=[0, 1, 2, 1], strides=[2, 1]),
        helper.make_node("Clip", ["c0", "lo", "hi"], ["r0"]),
        helper.make_node("Conv", ["r0", "wd", "bd"], ["d"], pads=[1, 1, 1, 1], group=4),
        helper.make_node("Add", ["r0", "d"], ["s"]),
        helper.make_node("AveragePool", ["s"], ["a"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("MaxPool", ["s"], ["m"], kernel_shape=[2, 2], pads=[0, 0, 1, 1], strides=[1, 1]),
        helper.make_node("Concat", ["a", "m"], ["cat"], axis=1),
        helper.make_node("GlobalAveragePool", ["cat"], ["g"]),
        helper.make_node("Reshape", ["g", "shape"], ["f"]),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["z"], transB=1),
        helper.make_node("Softmax", ["z"], ["y"], axis=1),
    ]
    inits = [weight("w0", [4, 3, 3, 3]), weight("b0", [4]), weight("wd", [4, 1, 3, 3]), weight("bd", [4]),
             weight("fc_w", [5, 8]), weight("fc_b", [5]), numpy_helper.from_array(np.float32(0), "lo"),
             numpy_helper.from_array(np.float32(6), "hi"),
             numpy_helper.from_array(np.array([2, 8], np.int64), "shape")]  # fmt: skip
    return make_model(nodes, [("x", [2, 3, 9, 8])], [("y", [2, 5])], inits)


def test_graph_module_computes_what_onnxruntime_computes():
    model = _ops_model()
    module = graph_module(model)
    for seed in range(3):
        x = random_inputs(model, seed)
        got = module(*[torch.from_numpy(a) for a in x])["y"].detach().numpy()
        np.testing.assert_allclose(got, Reference(model).run(x)[0], rtol=1e-5, atol=1e-6)
    assert {p.shape for p in module.parameters()} == {(4, 3, 3, 3), (4,), (4, 1, 3, 3), (5, 8), (5,)}


def test_unsupported_op_is_named():
    from edgecomp.errors import UserError

    model = make_model([helper.make_node("Erf", ["x"], ["y"], name="e1")], [("x", [1, 4])], [("y", [1, 4])])
    with pytest.raises(UserError, match="unsupported op Erf .*e1"):
        graph_module(model)


@pytest.fixture(scope="module")
def digits_cnn():
    (xt, yt), (xv, yv) = load_split()
    model, _ = simplify(to_onnx(train("cnn", xt, yt)))
    return fold_constants(onnx.shape_inference.infer_shapes(model)).model, (xt, yt), (xv, yv)


def _top1(model, x, y):
    ref = Reference(model)
    return float(np.mean([ref.run([s[None]])[0].argmax() == t for s, t in zip(x, y, strict=True)]))


def test_distillation_recovers_a_pruned_cnn_and_keeps_its_graph(digits_cnn):
    model, (xt, yt), (xv, yv) = digits_cnn
    pruned = prune_channels(model, 0.5)[0]
    before = _top1(pruned, xv, yv)
    tuned, report = finetune(pruned, model, xt, yt, FinetuneConfig(epochs=8))
    after = _top1(tuned, xv, yv)
    assert report.losses[-1] < report.losses[0]
    assert after >= _top1(model, xv, yv) - 0.03 and after > before + 0.03, (before, after)
    # The same graph: nodes, inputs, outputs and initializer shapes; only float weights moved.
    assert [n.SerializeToString() for n in tuned.graph.node] == [
        n.SerializeToString() for n in pruned.graph.node
    ]
    shapes = {t.name: tuple(t.dims) for t in tuned.graph.initializer}
    assert shapes == {t.name: tuple(t.dims) for t in pruned.graph.initializer}
    moved = [t.name for t, u in zip(tuned.graph.initializer, pruned.graph.initializer, strict=True)
             if not np.array_equal(numpy_helper.to_array(t), numpy_helper.to_array(u))]  # fmt: skip
    assert sorted(moved) == report.trained and moved
    onnx.checker.check_model(tuned, full_check=True)


def test_finetune_cli(digits_cnn, tmp_path, capsys):
    model, (xt, yt), (xv, yv) = digits_cnn
    onnx.save(model, tmp_path / "m.onnx")
    onnx.save(prune_channels(model, 0.5)[0], tmp_path / "p.onnx")
    np.savez(tmp_path / "train.npz", x=xt[:400], y=yt[:400])
    np.savez(tmp_path / "eval.npz", x=xv[:200], y=yv[:200])
    args = ["finetune", str(tmp_path / "p.onnx"), "--teacher", str(tmp_path / "m.onnx"), "--data",
            str(tmp_path / "train.npz"), "--eval", str(tmp_path / "eval.npz"), "--epochs", "3", "-o",
            str(tmp_path / "out" / "ft.onnx")]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "top-1:" in out and "wrote" in out
    assert Reference(onnx.load(tmp_path / "out" / "ft.onnx")).run([xv[:1]])[0].shape == (1, 10)
    assert not list((tmp_path / "out").glob("*.tmp"))
    assert main([*args[:-1], str(tmp_path / "x.onnx"), "--lr", "0"]) == 2
    onnx.save(_ops_model(), tmp_path / "other.onnx")  # a teacher with another output: a clear error
    bad = [*args[:-1], str(tmp_path / "x.onnx")]
    bad[bad.index("--teacher") + 1] = str(tmp_path / "other.onnx")
    assert main(bad) == 2
    assert "differ" in capsys.readouterr().err
    missing = [*args[:-1], str(tmp_path / "x.onnx")]
    missing[missing.index("--data") + 1] = str(tmp_path / "none.npz")
    assert main(missing) == 2
    assert "--data needs an existing .npz" in capsys.readouterr().err


def test_finetune_keeps_magnitude_pruned_zeros(digits_cnn):
    from edgecomp.passes import magnitude_prune

    model, (xt, yt), _ = digits_cnn
    sparse, _ = magnitude_prune(model, 0.5)
    tuned, report = finetune(sparse, model, xt[:256], yt[:256], FinetuneConfig(epochs=1))
    before = {t.name: numpy_helper.to_array(t) for t in sparse.graph.initializer}
    for t in tuned.graph.initializer:
        if t.name in report.trained:
            after = numpy_helper.to_array(t)
            assert np.array_equal(after == 0, before[t.name] == 0), t.name  # same zeros, nothing else zeroed
    assert any(np.any(before[n] == 0) for n in report.trained)
