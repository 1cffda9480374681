"""Keras models converted by TensorFlow's own TFLiteConverter (full-integer int8, and int16x8:
int16 activations, int8 weights) compile bit-exact with TFLite Micro's interpreter (PyPI
tflite-micro), on the host (ASan/UBSan) and in QEMU on Cortex-M7. The models are built here with
deterministic weights (seeded initializers, batch-norm statistics set), converted once per module."""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from conftest import needs_qemu

from edgecomp.pipeline import BuildOptions, build
from edgecomp.runner import run_samples
from edgecomp.targets import load_target
from edgecomp.verify import check_outputs, expected_outputs, tflm_outputs

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
tf = pytest.importorskip("tensorflow", reason="needs tensorflow (the dev extra's tensorflow-cpu)")
L = tf.keras.layers
pytestmark = pytest.mark.filterwarnings("ignore:Statistics for quantized inputs:UserWarning")


def _init(seed: int):
    return tf.keras.initializers.GlorotUniform(seed=seed)


def _cnn():
    """Conv2D / DepthwiseConv2D with fused ReLU6 and ReLU, a residual Add, max and average pools,
    Concatenate over channels, Dense and softmax."""
    x = tf.keras.Input((12, 12, 3), batch_size=1)
    a = L.Conv2D(8, 3, padding="same", activation="relu6", kernel_initializer=_init(1), bias_initializer="ones")(x)
    b = L.DepthwiseConv2D(3, padding="same", activation="relu", depthwise_initializer=_init(2))(a)
    c = L.Add()([a, b])
    d = L.MaxPooling2D(2)(c)
    e = L.AveragePooling2D(2, strides=1, padding="same")(d)
    f = L.Concatenate()([e, L.Conv2D(4, 1, kernel_initializer=_init(3))(e)])
    g = L.Dense(10, kernel_initializer=_init(4))(L.Flatten()(f))
    return tf.keras.Model(x, L.Softmax()(g))


def _ds_cnn():
    """The MLPerf Tiny keyword-spotting network's shape, small: a strided Conv2D, depthwise-separable
    blocks with batch norm (folded by the converter) and ReLU, global average pooling, Dense, softmax."""
    x = tf.keras.Input((25, 10, 1), batch_size=1)
    y = L.Conv2D(16, (5, 3), strides=2, padding="same", use_bias=False, kernel_initializer=_init(5))(x)
    y = L.ReLU()(L.BatchNormalization()(y))
    for i in range(2):
        y = L.DepthwiseConv2D(3, padding="same", use_bias=False, depthwise_initializer=_init(6 + i))(y)
        y = L.ReLU()(L.BatchNormalization()(y))
        y = L.Conv2D(16, 1, use_bias=False, kernel_initializer=_init(8 + i))(y)
        y = L.ReLU()(L.BatchNormalization()(y))
    y = L.GlobalAveragePooling2D()(y)
    y = L.Dense(6, kernel_initializer=_init(10))(y)
    return tf.keras.Model(x, L.Softmax()(y))


def _misc():
    """ZeroPadding2D, a valid Conv2D, global mean, sigmoid, tanh, Multiply, Subtract, Concatenate,
    Reshape, Dense with a fused ReLU."""
    x = tf.keras.Input((8, 8, 4), batch_size=1)
    p = L.ZeroPadding2D(((1, 0), (0, 1)))(x)
    c = L.Conv2D(6, 3, kernel_initializer=_init(11), bias_initializer="ones")(p)
    m = L.GlobalAveragePooling2D()(c)
    s = L.Activation("sigmoid")(m)
    t = L.Activation("tanh")(m)
    mul = L.Multiply()([s, t])
    sub = L.Subtract()([m, t])
    r = L.Reshape((3, 6))(L.Concatenate()([mul, sub, s]))
    f = L.Dense(5, activation="relu", kernel_initializer=_init(12))(L.Flatten()(r))
    return tf.keras.Model(x, [f, mul])


MODELS = {"cnn": _cnn, "ds_cnn": _ds_cnn, "misc": _misc}


def _set_batch_norm(model, rng: np.random.Generator) -> None:
    """Batch-norm statistics that are not the identity, so that folding them matters."""
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, n), rng.uniform(-0.3, 0.3, n), rng.uniform(-0.2, 0.2, n),
                               rng.uniform(0.5, 2.0, n)])  # fmt: skip


def _float_samples(model, seed: int, count: int) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [[rng.standard_normal(tuple(i.shape)).astype(np.float32) for i in model.inputs] for _ in range(count)]


@cache
def converted(name: str, mode: str) -> tuple[bytes, tuple]:
    """(the .tflite, float samples from the calibration distribution) of MODELS[name] converted with
    full-integer quantization; mode "int8" or "int16x8"."""
    tf.keras.utils.set_random_seed(0)
    model = MODELS[name]()
    _set_batch_norm(model, np.random.default_rng(1))
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    calibration = _float_samples(model, 2, 16)
    conv.representative_dataset = lambda: iter(calibration)
    if mode == "int8":
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = conv.inference_output_type = tf.int8
    else:
        conv.target_spec.supported_ops = [tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
        conv.inference_input_type = conv.inference_output_type = tf.int16
    return conv.convert(), tuple(tuple(s) for s in _float_samples(model, 3, 2))


def _inputs(result, floats) -> list[list[np.ndarray]]:
    """Samples in the model's input types: the float samples quantized with the input's scale and
    zero point, and one over the type's whole range (saturating every layer)."""
    specs = result.report["inputs"]
    samples = []
    for s in floats:
        sample = []
        for x, spec in zip(s, specs, strict=True):
            info = np.iinfo(spec["dtype"])
            q = np.round(x / spec["scale"]) + spec["zero_point"]
            sample.append(np.clip(q, info.min, info.max).astype(spec["dtype"]).reshape(spec["shape"]))
        samples.append(sample)
    rng = np.random.default_rng(7)
    samples.append([rng.integers(np.iinfo(s["dtype"]).min, np.iinfo(s["dtype"]).max + 1, s["shape"]).astype(s["dtype"])
                    for s in specs])  # fmt: skip
    return samples


def _bit_exact(name: str, mode: str, target: str, tmp_path: Path) -> None:
    data, floats = converted(name, mode)
    path = tmp_path / f"{name}_{mode}.tflite"
    path.write_bytes(data)
    result = build(path, load_target(target), tmp_path / "o",
                   BuildOptions(extra_cflags="-Werror", sanitize=target == "host"), log=lambda *_: None)  # fmt: skip
    want_dtype = "int8" if mode == "int8" else "int16"
    assert {s["dtype"] for s in result.report["inputs"]} == {want_dtype}
    samples = _inputs(result, floats)
    runs = run_samples(result, samples)
    oracle = tflm_outputs(result, samples)
    for run, want, ref in zip(runs, oracle, expected_outputs(result, samples), strict=True):
        for got, w, r in zip(run.outputs, want, ref, strict=True):
            assert got.dtype == np.dtype(want_dtype)
            np.testing.assert_array_equal(r, w)  # edgecomp's integer reference is TFLM's arithmetic
            np.testing.assert_array_equal(got, w)  # and so is the device
    check = check_outputs(result, samples, [r.outputs for r in runs], 1e-4)
    assert check.ok and check.figures["tflm_bit_exact"], check.lines


CASES = [(name, mode) for mode in ("int8", "int16x8") for name in MODELS]


@pytest.mark.parametrize(("name", "mode"), CASES)
def test_keras_tflite_bit_exact_with_tflm_on_host(name, mode, tmp_path):
    _bit_exact(name, mode, "host", tmp_path)


@needs_qemu
@pytest.mark.parametrize(("name", "mode"), CASES)
def test_keras_tflite_bit_exact_with_tflm_on_cortex_m7(name, mode, tmp_path):
    _bit_exact(name, mode, "cortex-m7", tmp_path)
