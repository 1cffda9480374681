"""Lossless simplification and structured channel pruning: valid smaller models that onnxruntime
runs, consistent channel counts across residual Adds, depthwise convolutions, Concat and
Flatten -> Gemm, and compiled output equal to the pruned model's own reference."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import HAVE_ARM, make_model, needs_qemu, random_inputs, weight
from onnx import helper, numpy_helper

from edgecomp.cli import main
from edgecomp.errors import UserError
from edgecomp.options import parse_prune
from edgecomp.passes import dead_channel_masks, prune_channels, simplify
from edgecomp.pipeline import BuildOptions, build
from edgecomp.runner import run_samples
from edgecomp.targets import load_target
from edgecomp.verify import Reference, compare, expected_outputs


def _run(model, sample):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, dict(zip([i.name for i in sess.get_inputs()], sample, strict=True)))


def _conv(name, x, y, cin, cout, k=3, group=1, relu=True):
    nodes = [helper.make_node("Conv", [x, f"{name}_w", f"{name}_b"], [y + ("_c" if relu else "")], name=name,
                              pads=[k // 2] * 4, group=group)]  # fmt: skip
    if relu:
        nodes.append(helper.make_node("Relu", [y + "_c"], [y]))
    return nodes, [weight(f"{name}_w", [cout, cin // group, k, k]), weight(f"{name}_b", [cout])]


def _net(kind: str) -> onnx.ModelProto:
    """Small networks with every structure pruning must keep consistent; 10 logits out."""
    nodes, inits = [], []

    def add(parts):
        nodes.extend(parts[0])
        inits.extend(parts[1])

    add(_conv("c0", "x", "r0", 3, 8))
    if kind == "residual":
        add(_conv("c1", "r0", "r1", 8, 8))
        add(_conv("c2", "r1", "c2o", 8, 8, relu=False))
        nodes += [helper.make_node("Add", ["r0", "c2o"], ["s"]), helper.make_node("Relu", ["s"], ["feat"])]
        c = 8
    elif kind == "depthwise":
        add(_conv("dw", "r0", "d", 8, 8, group=8))
        add(_conv("pw", "d", "feat", 8, 12, k=1))
        c = 12
    elif kind == "concat":
        add(_conv("a", "r0", "ra", 8, 6))
        add(_conv("b", "r0", "rb", 8, 4, k=1))
        nodes.append(helper.make_node("Concat", ["ra", "rb"], ["cat"], axis=1))
        add(_conv("m", "cat", "feat", 10, 8, k=1))
        c = 8
    nodes += [
        helper.make_node("MaxPool", ["feat"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["y"], name="fc", transB=1),
    ]
    inits += [weight("fc_w", [10, c * 16]), weight("fc_b", [10])]
    return make_model(nodes, [("x", [1, 3, 8, 8])], [("y", [1, 10])], inits)


def _params(model) -> int:
    return sum(int(np.prod(i.dims)) for i in model.graph.initializer)


def _initializer(model, name):
    return next(numpy_helper.to_array(i) for i in model.graph.initializer if i.name == name)


@pytest.mark.parametrize("kind", ["residual", "depthwise", "concat"])
def test_pruned_model_is_valid_and_smaller(kind):
    model = _net(kind)
    pruned, report = prune_channels(model, 0.5)
    onnx.checker.check_model(pruned, full_check=True)
    x = random_inputs(model, 0)
    out = _run(pruned, x)[0]
    assert out.shape == (1, 10) and np.isfinite(out).all()
    assert report["layers"] and all(layer["kept"] < layer["channels"] for layer in report["layers"])
    assert _params(pruned) < 0.6 * _params(model)
    if kind == "residual":  # both branches of the Add keep the same channels: one group, 8 -> 4
        groups = {tuple(layer["producers"]): (layer["channels"], layer["kept"]) for layer in report["layers"]}
        assert groups[("c0", "c2")] == (8, 4)
        assert _initializer(pruned, "c2_w").shape == (4, 4, 3, 3)
        assert _initializer(pruned, "fc_w").shape == (10, 4 * 16)  # Flatten -> Gemm: 16 features a channel
    if kind == "depthwise":  # the depthwise conv follows its input's channels; group shrinks with them
        dw = next(n for n in pruned.graph.node if n.name == "dw")
        assert (
            next(a.i for a in dw.attribute if a.name == "group") == _initializer(pruned, "dw_w").shape[0] == 4
        )
    if kind == "concat":  # each part pruned on its own, the consumer sliced per part
        assert (
            _initializer(pruned, "m_w").shape[1]
            == _initializer(pruned, "a_w").shape[0] + _initializer(pruned, "b_w").shape[0]
            == 5
        )


def test_pruning_keeps_the_important_channels():
    model = _net("depthwise")
    w = _initializer(model, "pw_w").copy()
    w[[1, 4, 7]] *= 100.0  # three much larger channels must survive a 75% cut
    model.graph.initializer[[i.name for i in model.graph.initializer].index("pw_w")].CopyFrom(
        numpy_helper.from_array(w, "pw_w")
    )
    for importance in ("l1", "l2"):
        pruned, report = prune_channels(model, 0.0, per_layer={"pw": 0.75}, importance=importance)
        np.testing.assert_array_equal(_initializer(pruned, "pw_w"), w[[1, 4, 7]])
        assert _initializer(pruned, "fc_w").shape == (10, 3 * 16)
    samples = [random_inputs(model, s) for s in range(4)]
    pruned, _ = prune_channels(model, 0.5, importance="activation", samples=samples)
    assert _run(pruned, samples[0])[0].shape == (1, 10)


def test_outputs_and_inputs_are_never_pruned():
    model = _net("residual")
    pruned, _ = prune_channels(model, 0.9)
    assert _initializer(pruned, "c0_w").shape[1] == 3  # the image's channels
    assert _initializer(pruned, "fc_w").shape[0] == 10  # the logits
    per_layer, report = prune_channels(model, 0.0, per_layer={"c1": 0.5})
    assert [layer["producers"] for layer in report["layers"]] == [["c1"]]


def test_simplify_is_lossless():
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "g", "beta", "mean", "var"], ["bn"], epsilon=1e-3),
        helper.make_node("Identity", ["bn"], ["i"]),
        helper.make_node("Dropout", ["i"], ["d"]),
        helper.make_node("Relu", ["d"], ["r"]),
        helper.make_node("Transpose", ["r"], ["t1"], perm=[0, 2, 3, 1]),
        helper.make_node("Transpose", ["t1"], ["t2"], perm=[0, 3, 1, 2]),  # undoes t1
        helper.make_node("Reshape", ["t2", "s1"], ["h1"]),
        helper.make_node("Reshape", ["h1", "s2"], ["y"]),
        helper.make_node("Sigmoid", ["r"], ["unused"]),  # read by nobody
    ]
    rng = np.random.default_rng(1)
    inits = [weight("w", [4, 3, 3, 3]), weight("b", [4]),
             numpy_helper.from_array(rng.uniform(0.5, 2, 4).astype(np.float32), "g"), weight("beta", [4]),
             weight("mean", [4]), numpy_helper.from_array(rng.uniform(0.5, 2, 4).astype(np.float32), "var"),
             numpy_helper.from_array(np.array([1, 4, 36], np.int64), "s1"),
             numpy_helper.from_array(np.array([1, 144], np.int64), "s2"), weight("spare", [3])]  # fmt: skip
    model = make_model(nodes, [("x", [1, 3, 6, 6])], [("y", [1, 144])], inits)
    simple, stats = simplify(model)
    assert stats == {"batchnorm_folded": 1, "dead_nodes_removed": 1, "dropout_removed": 1, "identity_removed": 1,
                     "reshape_merged": 1, "transpose_merged": 1, "transpose_removed": 1,
                     "unused_initializers_removed": 8}  # fmt: skip
    assert [n.op_type for n in simple.graph.node] == ["Conv", "Relu", "Reshape"]
    for seed in range(3):
        x = random_inputs(model, seed)
        np.testing.assert_allclose(_run(simple, x)[0], _run(model, x)[0], rtol=1e-5, atol=1e-5)


def test_dead_channels_are_removed_without_changing_outputs():
    model = _net("depthwise")
    w, b, dw_b = (_initializer(model, n).copy() for n in ("c0_w", "c0_b", "dw_b"))
    w[[2, 5]] = b[[2, 5]] = dw_b[[2, 5]] = 0.0  # zero in, zero out through ReLU and the depthwise conv
    names = [i.name for i in model.graph.initializer]
    for name, value in (("c0_w", w), ("c0_b", b), ("dw_b", dw_b)):
        model.graph.initializer[names.index(name)].CopyFrom(numpy_helper.from_array(value, name))
    masks = dead_channel_masks(model)
    assert {k: list(np.flatnonzero(~v)) for k, v in masks.items()} == {"c0": [2, 5]}
    pruned, _ = prune_channels(model, keep_masks=masks)
    assert _initializer(pruned, "dw_w").shape[0] == 6
    for seed in range(3):
        x = random_inputs(model, seed)
        np.testing.assert_allclose(_run(pruned, x)[0], _run(model, x)[0], rtol=1e-5, atol=1e-5)
    b[2] = 0.5  # a bias keeps channel 2 alive
    model.graph.initializer[names.index("c0_b")].CopyFrom(numpy_helper.from_array(b, "c0_b"))
    assert list(np.flatnonzero(~dead_channel_masks(model)["c0"])) == [5]


def test_prune_spec_errors(tmp_path):
    assert parse_prune("channels=0.25") == {"channels": 0.25}
    for bad in ("channels=1.5", "sparsity=x", "depth=0.5", "channels=", "channels=0.1,channels=0.2"):
        with pytest.raises(UserError):
            parse_prune(bad)
    path = tmp_path / "m.onnx"
    onnx.save(_net("residual"), path)
    assert (
        main(["build", str(path), "--target", "host", "--prune", "channels=2", "-o", str(tmp_path / "o")])
        == 2
    )
    ratios = tmp_path / "r.json"
    ratios.write_text('{"c1": 3}')
    assert (
        main(
            [
                "build",
                str(path),
                "--target",
                "host",
                "--prune",
                f"channels={ratios}",
                "-o",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )


@pytest.mark.parametrize("target", ["host", pytest.param("cortex-m7", marks=needs_qemu)])
def test_pruned_build_matches_its_reference(target, tmp_path):
    """fp32: the device matches onnxruntime on the pruned model; int8: bit-exact with its reference."""
    path = tmp_path / "m.onnx"
    onnx.save(_net("residual"), path)
    ratios = tmp_path / "ratios.json"
    ratios.write_text(json.dumps({"c0": 0.5, "c1": 0.25}))
    t = load_target(target)
    pruned = tmp_path / "p.onnx"
    fp = build(path, t, tmp_path / "fp", BuildOptions(prune=f"channels={ratios}"), log=lambda *_: None,
               save_pruned=pruned)  # fmt: skip
    assert fp.report["pruning"]["params_after"] < fp.report["pruning"]["params_before"]
    assert onnx.load(pruned).graph.node  # --save-pruned wrote the model that was compiled
    samples = [random_inputs(fp.model, s) for s in range(2)]
    runs = run_samples(fp, samples)
    assert compare([r.outputs for r in runs], [Reference(fp.model).run(s) for s in samples]).rel_error <= 1e-4
    calib = tmp_path / "calib.npy"
    np.save(calib, np.random.default_rng(0).standard_normal((8, 1, 3, 8, 8)).astype(np.float32))
    q = build(path, t, tmp_path / "q", BuildOptions(prune="channels=0.5", quantize="int8"), log=lambda *_: None,
              calib=calib)  # fmt: skip
    for run, want in zip(run_samples(q, samples), expected_outputs(q, samples), strict=True):
        np.testing.assert_array_equal(run.outputs[0], want[0])


def test_analyze_writes_table_json_and_png(tmp_path):
    path, data = tmp_path / "m.onnx", tmp_path / "eval.npz"
    onnx.save(_net("residual"), path)
    np.savez(data, x=np.random.default_rng(0).standard_normal((6, 1, 3, 8, 8)).astype(np.float32))
    out, png = tmp_path / "a.json", tmp_path / "a.png"
    args = [
        "analyze",
        str(path),
        "--eval",
        str(data),
        "--ratios",
        "0.25,0.5",
        "--json",
        str(out),
        "--plot",
        str(png),
    ]
    assert main(args) == 0
    result = json.loads(out.read_text())
    assert {(r["group"], r["ratio"]) for r in result["rows"]} == {
        (g, r) for g in ("c0", "c1") for r in (0.25, 0.5)
    }
    assert all(0 < r["macs_saved"] < result["macs"] and r["kept"] < r["channels"] for r in result["rows"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["analyze", str(path), "--eval", str(data), "--ratios", "1.5"]) == 2


@pytest.mark.skipif(not HAVE_ARM, reason="needs arm-none-eabi-gcc")
def test_fit_picks_the_best_configuration_within_budget(tmp_path, capsys):
    model = _net("residual")
    path, calib, data = tmp_path / "m.onnx", tmp_path / "calib.npy", tmp_path / "eval.npz"
    onnx.save(model, path)
    rng = np.random.default_rng(0)
    np.save(calib, rng.standard_normal((8, 1, 3, 8, 8)).astype(np.float32))
    x = rng.standard_normal((16, 1, 3, 8, 8)).astype(np.float32)
    labels = np.array([_run(model, [s])[0].argmax() for s in x])  # the float model is 100% right
    np.savez(data, x=x, y=labels)
    common = [
        "build",
        str(path),
        "--target",
        "cortex-m7",
        "--fit",
        "--calib",
        str(calib),
        "--eval",
        str(data),
    ]
    assert main([*common, "--max-flash", "12K", "-o", str(tmp_path / "f")]) == 0
    summary = json.loads((tmp_path / "f" / "report.json").read_text())["fit"]
    fitting = [c for c in summary["candidates"] if c["fits"]]
    chosen = next(c for c in summary["candidates"] if c["config"] == summary["chosen"])
    assert chosen["flash_bytes"] <= 12 * 1024 and chosen["top1"] == max(c["top1"] for c in fitting)
    assert any(not c["fits"] for c in summary["candidates"])  # the budget did bind
    capsys.readouterr()
    assert main([*common, "--max-flash", "1K", "-o", str(tmp_path / "g")]) == 2
    assert "the closest is" in capsys.readouterr().err


def test_magnitude_pruning_zeroes_blocks_and_the_sparse_kernel_stores_only_the_rest(tmp_path):
    """sparsity=0.6 zeroes 60% of each dense layer's 4x4 tiles (four rows, four weights; a left-over
    row's blocks of four one by one); the int8 dense micro-kernel then keeps a bitmask and the
    nonzero tiles (less flash, fewer MACs) and stays bit-exact on host and M7."""
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1", transB=1),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2")]  # fmt: skip
    model = make_model(nodes, [("x", [1, 64])], [("y", [1, 26])], [weight("w1", [40, 64]), weight("b1", [40]),
                                                                   weight("w2", [40, 26])])  # fmt: skip
    from edgecomp.passes import magnitude_prune

    sparse, report = magnitude_prune(model, 0.6)
    tiles = _initializer(sparse, "w1").reshape(10, 4, 16, 4)
    assert np.mean(np.all(tiles == 0, axis=(1, 3))) == pytest.approx(0.6, abs=0.01)
    assert np.array_equal(
        np.all(tiles == 0, axis=(1, 3)), np.any(tiles == 0, axis=(1, 3))
    )  # never partly zero
    w2 = _initializer(sparse, "w2").T  # 26 rows: six groups of four, two rows left over
    units = np.concatenate([np.all(w2[:24].reshape(6, 4, 10, 4) == 0, axis=(1, 3)).reshape(-1),
                            np.all(w2[24:].reshape(2, 10, 4) == 0, axis=2).reshape(-1)])  # fmt: skip
    assert np.mean(units) == pytest.approx(0.6, abs=0.01)
    assert [layer["node"] for layer in report["layers"]] == ["fc1", "fc2"]
    path, calib = tmp_path / "m.onnx", tmp_path / "calib.npy"
    onnx.save(model, path)
    np.save(calib, np.random.default_rng(0).standard_normal((8, 1, 64)).astype(np.float32))
    clean = build(path, load_target("host"), tmp_path / "asan", BuildOptions(quantize="int8", prune="sparsity=0.6",
                  sanitize=True), log=lambda *_: None, calib=calib)  # fmt: skip
    run_samples(clean, [random_inputs(model, 0)])  # a sanitizer report fails the run
    targets = ["host"] + (["cortex-m7"] if HAVE_ARM else [])
    for target in targets:
        dense = build(path, load_target(target), tmp_path / f"d-{target}", BuildOptions(quantize="int8"),
                      log=lambda *_: None, calib=calib)  # fmt: skip
        result = build(path, load_target(target), tmp_path / f"s-{target}",
                       BuildOptions(quantize="int8", prune="sparsity=0.6"), log=lambda *_: None, calib=calib)  # fmt: skip
        assert (result.outdir / "model_kernels.c").read_text().count("_dense_sparse_s8(") >= 2
        assert result.report["weights_bytes"] < 0.6 * dense.report["weights_bytes"]
        samples = [random_inputs(model, s) for s in range(3)]
        for run, want in zip(run_samples(result, samples), expected_outputs(result, samples), strict=True):
            np.testing.assert_array_equal(run.outputs[0], want[0])
    assert parse_prune("channels=0.25,sparsity=0.5") == {"channels": 0.25, "sparsity": 0.5}


def test_dead_channels_proven_or_observed_on_calibration_are_removed(tmp_path):
    """Channel 2 of c0 has a bias no input in the calibrated range can overcome: interval
    arithmetic proves it dead and every quantized build drops it. Channel 3 stays below zero on
    the calibration samples only: --dead-channels calib drops it too, none keeps both. The float
    outputs on the calibration samples do not change; the int8 device output is bit-exact."""
    nodes, inits = _conv("c0", "x", "r0", 3, 6)
    nodes2, inits2 = _conv("c1", "r0", "r1", 6, 4)
    nodes += nodes2 + [helper.make_node("GlobalAveragePool", ["r1"], ["g"]), helper.make_node("Flatten", ["g"], ["f"]),
                       helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["y"], transB=1)]  # fmt: skip
    inits += inits2 + [weight("fc_w", [10, 4]), weight("fc_b", [10])]
    w, bias = numpy_helper.to_array(inits[0]).copy(), numpy_helper.to_array(inits[1]).copy()
    bias[2] = -1000.0
    w[3], bias[3] = 0.0, -0.01  # x[0] - x[1] - 0.01 at the centre tap: below 0 where the two planes
    w[3, 0, 1, 1], w[3, 1, 1, 1] = 1.0, -1.0  # are equal, as in the calibration samples; not in general
    inits[0], inits[1] = numpy_helper.from_array(w, "c0_w"), numpy_helper.from_array(bias, "c0_b")
    model = make_model(nodes, [("x", [1, 3, 8, 8])], [("y", [1, 10])], inits)
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    calib = np.concatenate([random_inputs(model, s)[0] for s in range(8)])
    calib[:, 1] = calib[:, 0]
    np.save(tmp_path / "calib.npy", calib)
    samples = [[c[None]] for c in calib]
    kept = {}
    for mode, key, dead in (("proven", "channels_dead_proven", 1), ("calib", "channels_dead_on_calibration", 2),
                            ("none", None, 0)):  # fmt: skip
        result = build(path, load_target("host"), tmp_path / mode, BuildOptions(quantize="int8", dead_channels=mode),
                       log=lambda *_: None, calib=tmp_path / "calib.npy")  # fmt: skip
        stats = result.report["simplify"]
        if key:
            assert stats[key] == dead and stats["dead_channels_removed"] == dead, stats
        kept[mode] = _initializer(result.float_model, "c0_w").shape[0]
        for s in samples:
            np.testing.assert_allclose(
                _run(result.float_model, s)[0], _run(model, s)[0], rtol=1e-5, atol=1e-5
            )
        for r, want in zip(run_samples(result, samples[:2]), expected_outputs(result, samples[:2]), strict=True):
            np.testing.assert_array_equal(r.outputs[0], want[0])
    assert kept == {"proven": 5, "calib": 4, "none": 6}


@pytest.mark.parametrize("kind", ["residual", "depthwise", "concat"])
def test_interval_bounds_hold_for_inputs_in_range(kind):
    """Soundness of the proof: no input in [lo, hi] drives a channel above its interval bound,
    and the bounds are not vacuous (finite)."""
    from edgecomp.passes import interval_upper_bounds, observed_upper_bounds

    model = _net(kind)
    rng = np.random.default_rng(0)
    samples = [[rng.uniform(-2, 3, (1, 3, 8, 8)).astype(np.float32)] for _ in range(16)]
    samples += [[np.full((1, 3, 8, 8), v, np.float32)] for v in (-2, 3)]  # the corners
    bound = interval_upper_bounds(model, -2.0, 3.0)
    seen = observed_upper_bounds(model, samples)
    assert bound and bound.keys() == seen.keys()
    for name, b in bound.items():
        assert np.all(np.isfinite(b)) and np.all(seen[name] <= b + 1e-5), name


def _dead_after(model, lo, hi):
    from edgecomp.passes import interval_upper_bounds, zero_dead_channels

    return zero_dead_channels(model, interval_upper_bounds(model, lo, hi))


def test_dead_channel_proof_holds_in_corner_cases():
    """Cases where a careless proof zeroes live channels: weights shared by two Convs, a Gemm with
    negative alpha, an AveragePool that averages SAME padding in; and a (1, N) Gemm bias must not
    crash it. Each pruned model must equal the original on inputs across the range."""
    from onnx import numpy_helper as nh

    f32 = lambda a, n: nh.from_array(np.asarray(a, np.float32), n)  # noqa: E731
    shared = make_model(
        [helper.make_node("Conv", ["x", "W", "B"], ["a"]), helper.make_node("Relu", ["a"], ["ra"]),
         helper.make_node("Conv", ["x", "N", ""], ["nx"]), helper.make_node("Conv", ["nx", "W", "B"], ["b"]),
         helper.make_node("Relu", ["b"], ["rb"]), helper.make_node("Add", ["ra", "rb"], ["y"])],
        [("x", [1, 1, 2, 2])], [("y", [1, 2, 2, 2])],
        [f32([[[[1.0]]], [[[-1.0]]]], "W"), f32([-0.1, -0.1], "B"), f32([[[[-1.0]]]], "N")])  # fmt: skip
    neg_alpha = make_model(
        [helper.make_node("Gemm", ["x", "W", "b"], ["g"], transB=1, alpha=-1.0), helper.make_node("Relu", ["g"], ["y"])],
        [("x", [1, 1])], [("y", [1, 2])], [f32([[1.0], [-1.0]], "W"), f32([0.0, -0.5], "b")])  # fmt: skip
    same_pool = make_model(
        [helper.make_node("Conv", ["x", "w1", "b1"], ["c"]),
         helper.make_node("AveragePool", ["c"], ["p"], kernel_shape=[3, 3], auto_pad="SAME_UPPER", count_include_pad=1),
         helper.make_node("Conv", ["p", "w2", "b2"], ["d"]), helper.make_node("Relu", ["d"], ["y"])],
        [("x", [1, 1, 4, 4])], [("y", [1, 1, 4, 4])],
        [f32([[[[1.0]]]], "w1"), f32([-2.0], "b1"), f32([[[[1.0]]]], "w2"), f32([0.7], "b2")])  # fmt: skip
    row_bias = make_model(
        [helper.make_node("Gemm", ["x", "W", "b"], ["g"], transB=1), helper.make_node("Relu", ["g"], ["r"]),
         helper.make_node("Gemm", ["r", "W2", "b2"], ["h"], transB=1), helper.make_node("Relu", ["h"], ["y"])],
        [("x", [1, 2])], [("y", [1, 2])],
        [f32([[1, 0], [0, 1]], "W"), f32([[0.0, -5.0]], "b"), f32([[1, 1], [1, -1]], "W2"), f32([0.0, -9.0], "b2")])  # fmt: skip
    for model, lo, hi in (
        (shared, 0.0, 1.0),
        (neg_alpha, 0.0, 1.0),
        (same_pool, 0.0, 1.0),
        (row_bias, 0.0, 1.0),
    ):
        pruned, _ = _dead_after(model, lo, hi)
        for v in np.linspace(lo, hi, 5):
            x = [
                np.full([d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim], v, np.float32)
            ]
            np.testing.assert_allclose(_run(pruned, x)[0], _run(model, x)[0], atol=1e-6)
    assert (
        _dead_after(row_bias, 0.0, 1.0).report["zeroed"] == 1
    )  # W2's second row: x0 - x1 - 9 < 0, provable through (1, N)
