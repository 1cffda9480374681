"""TFLite models in: integer models compile with TFLite Micro's arithmetic and are bit-exact with
its own interpreter (PyPI tflite-micro) on the host (ASan/UBSan, poisoned arena), in QEMU on
Cortex-M7 (DSP kernels) and on bare-metal Cortex-A53 (NEON kernels); float models match it to
float rounding. The models are built here (tests/tflite_models.py), plus the four MLPerf Tiny
int8 models when ../shared is there."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import needs_qemu
from tflite_models import BO, OPT, RELU, RELU6, SAME, VALID, Builder, options, random_input

from edgecomp.cli import main
from edgecomp.pipeline import BuildOptions, build
from edgecomp.runner import run_samples
from edgecomp.targets import load_target
from edgecomp.verify import check_outputs, expected_outputs, tflm_outputs

SHARED = Path(__file__).resolve().parents[2] / "shared" / "models" / "mlperf-tiny"


def _conv_stack():
    b = Builder("conv_stack")
    x = b.act([1, 12, 10, 3])
    y = b.conv(x, 8, 3, stride=2, act=RELU6)
    y = b.dwconv(y, 3, act=RELU)
    y = b.conv(y, 6, 1)
    y = b.conv(y, 5, 3, padding=VALID, dilation=2)
    return b.finish([x], [y])


def _depthwise_multiplier():
    b = Builder("dw_mult")
    x = b.act([1, 9, 9, 4])
    y = b.dwconv(x, 3, stride=2, mult=2, padding=VALID)
    return b.finish([x], [y])


def _residual_add_pool_fc_softmax():
    b = Builder("resnet_tail")
    x = b.act([1, 8, 8, 8])
    c1 = b.conv(x, 8, 3, act=RELU)
    c2 = b.conv(c1, 8, 3)
    s = b.act([1, 8, 8, 8], zp=-128)
    b.op(BO.ADD, [x, c2], [s], OPT.AddOptions, options("AddOptionsT", fusedActivationFunction=RELU))
    p = b.act([1, 4, 4, 8], scale=b.scale(s), zp=-128)
    b.op(BO.AVERAGE_POOL_2D, [s], [p], OPT.Pool2DOptions,
         options("Pool2DOptionsT", padding=SAME, strideH=2, strideW=2, filterHeight=3, filterWidth=3))  # fmt: skip
    f = b.fc(p, 10)
    y = b.tensor([1, 10], np.int8, scale=1 / 256, zp=-128)
    b.op(BO.SOFTMAX, [f], [y], OPT.SoftmaxOptions, options("SoftmaxOptionsT", beta=1.0))
    return b.finish([x], [y])


def _dense_stack():
    b = Builder("dense_stack")
    x = b.act([1, 40])
    y = b.fc(x, 32, act=RELU, per_channel=True)
    y = b.fc(y, 12)
    return b.finish([x], [y])


def _fc_keep_dims():
    b = Builder("fc_keep_dims")
    x = b.act([1, 3, 16])
    y = b.fc(x, 8, out_shape=[1, 3, 8])
    return b.finish([x], [y])


def _elementwise():
    """SUB, MUL with broadcast over channels, MAX_POOL, CONCATENATION, MEAN."""
    b = Builder("elementwise")
    x = b.act([1, 6, 6, 4])
    z = b.act([1, 6, 6, 4])
    d = b.act([1, 6, 6, 4])
    b.op(BO.SUB, [x, z], [d], OPT.SubOptions, options("SubOptionsT", fusedActivationFunction=0))
    g = b.act([1, 1, 1, 4])
    m = b.act([1, 6, 6, 4])
    b.op(BO.MUL, [d, g], [m], OPT.MulOptions, options("MulOptionsT", fusedActivationFunction=0))
    mp = b.act([1, 3, 3, 4], scale=b.scale(m), zp=b.sg.tensors[m].quantization.zeroPoint[0])
    b.op(BO.MAX_POOL_2D, [m], [mp], OPT.Pool2DOptions,
         options("Pool2DOptionsT", padding=VALID, strideH=2, strideW=2, filterHeight=2, filterWidth=2))  # fmt: skip
    q = dict(scale=b.scale(mp), zp=b.sg.tensors[mp].quantization.zeroPoint[0])
    mp2 = b.act([1, 3, 3, 4], **q)
    b.op(BO.RELU6, [mp], [mp2])
    cat = b.act([1, 3, 3, 8], **q)
    b.op(BO.CONCATENATION, [mp, mp2], [cat], OPT.ConcatenationOptions, options("ConcatenationOptionsT", axis=3))
    axes = b.tensor([2], np.int32, np.array([1, 2], np.int32))
    mean = b.act([1, 8])
    b.op(BO.MEAN, [cat, axes], [mean], OPT.ReducerOptions, options("ReducerOptionsT", keepDims=False))
    return b.finish([x, z, g], [mean, cat])


def _activations():
    """Element-wise int8 functions (tables of TFLM's own results) and PAD, RESHAPE, TRANSPOSE."""
    b = Builder("activations")
    x = b.act([1, 4, 4, 6], scale=0.05)
    outs = []
    for code, out_q in ((BO.LOGISTIC, (1 / 256, -128)), (BO.TANH, (1 / 128, 0)), (BO.HARD_SWISH, (0.04, -30)),
                        (BO.RELU, (0.03, -128))):  # fmt: skip
        y = b.act([1, 4, 4, 6], scale=out_q[0], zp=out_q[1])
        b.op(code, [x], [y])
        outs.append(y)
    leaky = b.act([1, 4, 4, 6], scale=0.04)
    b.op(BO.LEAKY_RELU, [x], [leaky], OPT.LeakyReluOptions, options("LeakyReluOptionsT", alpha=0.1))
    requant = b.act([1, 4, 4, 6], scale=0.07, zp=5)
    b.op(BO.QUANTIZE, [leaky], [requant])
    pads = b.tensor([4, 2], np.int32, np.array([[0, 0], [1, 2], [0, 1], [0, 0]], np.int32))
    padded = b.act([1, 7, 5, 6], scale=0.07, zp=5)
    b.op(BO.PAD, [requant, pads], [padded])
    shape = b.tensor([2], np.int32, np.array([1, 210], np.int32))
    flat = b.act([1, 210], scale=0.07, zp=5)
    b.op(BO.RESHAPE, [padded, shape], [flat], OPT.ReshapeOptions, options("ReshapeOptionsT", newShape=[1, 210]))
    perm = b.tensor([4], np.int32, np.array([0, 3, 1, 2], np.int32))
    tr = b.act([1, 6, 4, 4], scale=b.scale(outs[1]), zp=0)
    b.op(BO.TRANSPOSE, [outs[1], perm], [tr])
    return b.finish([x], [outs[0], outs[2], outs[3], flat, tr])


def _float_edges():
    """A float interface: QUANTIZE in, DEQUANTIZE out (TFLite's roundf at the input)."""
    b = Builder("float_edges")
    xf = b.tensor([1, 6, 6, 2], np.float32)
    x = b.act([1, 6, 6, 2], scale=0.02, zp=3)
    b.op(BO.QUANTIZE, [xf], [x])
    y = b.conv(x, 4, 3, act=RELU)
    yf = b.tensor([1, 6, 6, 4], np.float32)
    b.op(BO.DEQUANTIZE, [y], [yf])
    return b.finish([xf], [yf])


INT8 = {
    "conv_stack": _conv_stack,
    "depthwise_multiplier": _depthwise_multiplier,
    "residual_add_pool_fc_softmax": _residual_add_pool_fc_softmax,
    "dense_stack": _dense_stack,
    "fc_keep_dims": _fc_keep_dims,
    "elementwise": _elementwise,
    "activations": _activations,
    "float_edges": _float_edges,
}


def _compile(data: bytes, target: str, tmp_path: Path, options: BuildOptions | None = None):
    path = tmp_path / "model.tflite"
    path.write_bytes(data)
    options = options or BuildOptions(extra_cflags="-Werror", sanitize=target == "host")
    return build(path, load_target(target), tmp_path / f"o-{target}", options, log=lambda *_: None)


def _bit_exact(name: str, target: str, tmp_path: Path) -> None:
    data = INT8[name]()
    result = _compile(data, target, tmp_path)
    samples = [random_input(data, seed) for seed in range(3)]
    runs = run_samples(result, samples)
    oracle = tflm_outputs(result, samples)
    for run, want, ref in zip(runs, oracle, expected_outputs(result, samples), strict=True):
        for got, w, r in zip(run.outputs, want, ref, strict=True):
            np.testing.assert_array_equal(r, w)  # edgecomp's integer reference is TFLM's arithmetic
            np.testing.assert_array_equal(got, w)  # and so is the device
    check = check_outputs(result, samples, [r.outputs for r in runs], 1e-4)
    assert check.ok and check.figures["tflm_bit_exact"], check.lines


@pytest.mark.parametrize("name", sorted(INT8))
def test_int8_tflite_bit_exact_with_tflm_on_host(name, tmp_path):
    _bit_exact(name, "host", tmp_path)


@needs_qemu
@pytest.mark.parametrize("name", sorted(INT8))
def test_int8_tflite_bit_exact_with_tflm_on_cortex_m7(name, tmp_path):
    _bit_exact(name, "cortex-m7", tmp_path)


@pytest.mark.skipif(shutil.which("qemu-system-aarch64") is None, reason="needs qemu-system-aarch64")
@pytest.mark.parametrize("name", ["conv_stack", "depthwise_multiplier", "dense_stack", "residual_add_pool_fc_softmax"])
def test_int8_tflite_bit_exact_with_tflm_on_cortex_a53_neon(name, tmp_path):
    _bit_exact(name, "cortex-a53-virt", tmp_path)


def test_io_float_option_quantizes_as_tflite(tmp_path):
    """--io float on a full-integer model: TFLite's own QUANTIZE rounding at the edge, still
    bit-exact (through the output's dequantization) with TFLM fed the same float data."""
    data = _dense_stack()
    result = _compile(data, "host", tmp_path, BuildOptions(io="float", sanitize=True))
    assert result.report["inputs"][0]["dtype"] == "float32"
    rng = np.random.default_rng(1)
    scale = result.int_graph.tensors[result.int_graph.ops[0].output].scale
    # Values on exact .5 ties of the input grid: roundf and round-half-even disagree there.
    samples = [[((rng.integers(-60, 60, (1, 40)) + 0.5) * scale).astype(np.float32)] for _ in range(2)]
    runs = run_samples(result, samples)
    for run, want in zip(runs, tflm_outputs(result, samples), strict=True):
        np.testing.assert_array_equal(run.outputs[0], want[0])


def _float_model():
    b = Builder("float_model")
    rng = b.rng

    def w(shape):
        return b.tensor(shape, np.float32, rng.standard_normal(shape).astype(np.float32) * 0.3)

    x = b.tensor([1, 8, 8, 3], np.float32)
    c = b.tensor([1, 8, 8, 6], np.float32)
    b.op(BO.CONV_2D, [x, w([6, 3, 3, 3]), w([6])], [c], OPT.Conv2DOptions,
         options("Conv2DOptionsT", padding=SAME, strideH=1, strideW=1, fusedActivationFunction=RELU6,
                 dilationHFactor=1, dilationWFactor=1))  # fmt: skip
    d = b.tensor([1, 4, 4, 6], np.float32)
    b.op(BO.DEPTHWISE_CONV_2D, [c, w([1, 3, 3, 6]), w([6])], [d], OPT.DepthwiseConv2DOptions,
         options("DepthwiseConv2DOptionsT", padding=SAME, strideH=2, strideW=2, depthMultiplier=1,
                 fusedActivationFunction=RELU, dilationHFactor=1, dilationWFactor=1))  # fmt: skip
    p = b.tensor([1, 2, 2, 6], np.float32)
    b.op(BO.AVERAGE_POOL_2D, [d], [p], OPT.Pool2DOptions,
         options("Pool2DOptionsT", padding=SAME, strideH=2, strideW=2, filterHeight=3, filterWidth=3))  # fmt: skip
    f = b.tensor([1, 5], np.float32)
    b.op(BO.FULLY_CONNECTED, [p, w([5, 24]), w([5])], [f], OPT.FullyConnectedOptions,
         options("FullyConnectedOptionsT", fusedActivationFunction=0))  # fmt: skip
    y = b.tensor([1, 5], np.float32)
    b.op(BO.SOFTMAX, [f], [y], OPT.SoftmaxOptions, options("SoftmaxOptionsT", beta=1.0))
    return b.finish([x], [y])


@pytest.mark.parametrize("target", ["host", pytest.param("cortex-m7", marks=needs_qemu)])
def test_float_tflite_matches_tflm(target, tmp_path):
    from tflite_micro.python.tflite_micro import runtime

    data = _float_model()
    result = _compile(data, target, tmp_path)
    assert result.tflite is None and result.model is not None  # compiled as a float ONNX model
    samples = [random_input(data, s) for s in range(2)]
    interp = runtime.Interpreter.from_bytes(data)
    for run, sample in zip(run_samples(result, samples), samples, strict=True):
        interp.set_input(sample[0], 0)
        interp.invoke()
        np.testing.assert_allclose(run.outputs[0], interp.get_output(0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("target", ["host", pytest.param("cortex-m7", marks=needs_qemu)])
def test_tflite_model_shipped_in_a_pip_package(target, tmp_path):
    """A .tflite file as published, not built here: the hello-world sine model that the tflite-micro
    wheel ships, compiled from its own bytes and compared with TFLM's interpreter over its input range."""
    import tflite_micro
    from tflite_micro.python.tflite_micro import runtime

    shipped = Path(tflite_micro.__file__).parent / "python" / "tflite_micro" / "sine_float.tflite"
    data = shipped.read_bytes()
    result = _compile(data, target, tmp_path)
    samples = [[np.array([[x]], np.float32)] for x in (0.0, 0.5, 1.7, 3.1, 6.2)]
    interp = runtime.Interpreter.from_bytes(data)
    for run, sample in zip(run_samples(result, samples), samples, strict=True):
        interp.set_input(sample[0], 0)
        interp.invoke()
        want = interp.get_output(0)
        assert abs(float(want.reshape(-1)[0]) - np.sin(sample[0][0, 0])) < 0.2  # the model is a sine
        np.testing.assert_allclose(run.outputs[0], want, rtol=1e-5, atol=1e-6)


def test_unsupported_tflite_operator_named(tmp_path, capsys):
    b = Builder("unsupported")
    x = b.act([1, 4])
    y = b.act([1, 4])
    b.op(BO.FLOOR_DIV, [x, x], [y])
    (tmp_path / "m.tflite").write_bytes(b.finish([x], [y]))
    assert main(["build", str(tmp_path / "m.tflite"), "-t", "host", "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "FLOOR_DIV" in err and "operator #0" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_not_a_tflite_file_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "m.tflite").write_bytes(b"\x00\x01 not a flatbuffer at all")
    assert main(["build", str(tmp_path / "m.tflite"), "-t", "host", "-o", str(tmp_path / "o")]) == 2
    assert "not a TFLite model" in capsys.readouterr().err


MLPERF = ["ad_autoencoder", "ic_resnet8", "kws_dscnn", "vww_mobilenet"]


@pytest.mark.skipif(not SHARED.is_dir(), reason="needs ../shared/models/mlperf-tiny")
@pytest.mark.parametrize("target", ["host", pytest.param("cortex-m7", marks=needs_qemu)])
@pytest.mark.parametrize("model", MLPERF)
def test_mlperf_int8_tflite_bit_exact_with_tflm(model, target, tmp_path):
    result = build(SHARED / "tflite-int8" / f"{model}_int8.tflite", load_target(target), tmp_path / "o",
                   BuildOptions(sanitize=target == "host"), log=lambda *_: None)  # fmt: skip
    data = (SHARED / "tflite-int8" / f"{model}_int8.tflite").read_bytes()
    samples = [random_input(data, s) for s in range(2)]
    runs = run_samples(result, samples)
    for run, want in zip(runs, tflm_outputs(result, samples), strict=True):
        np.testing.assert_array_equal(run.outputs[0], want[0])
