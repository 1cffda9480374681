"""TFLite int16 operators whose arithmetic is TFLite Micro's own rather than a requantization:
LOGISTIC / TANH (its sigmoid table, over every int16 input), SOFTMAX (its exp and 1/(1+x)
tables), QUANTIZE (Requantize), the int16 ReLUs, and what is refused. Hand-built .tflite models
(tests/tflite_models.py), compared with the tflite-micro interpreter on the host and in QEMU."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import needs_qemu
from tflite_models import BO, OPT, Builder, options

from edgecomp.cli import main
from edgecomp.pipeline import BuildOptions, build
from edgecomp.quant import tflite_arith as A
from edgecomp.runner import run_samples
from edgecomp.targets import load_target
from edgecomp.verify import expected_outputs, tflm_outputs

Q15 = 2.0**-15


def _t16(b: Builder, shape, scale) -> int:
    return b.tensor(shape, np.int16, scale=scale, zp=0)


def _sigmoid_tanh(in_scales) -> bytes:
    """LOGISTIC and TANH of every int16 value, for each input scale."""
    b = Builder("sigmoid_tanh16")
    ins, outs = [], []
    for s in in_scales:
        x = _t16(b, [1, 256, 256], s)
        for code in (BO.LOGISTIC, BO.TANH):
            y = _t16(b, [1, 256, 256], Q15)
            b.op(code, [x], [y])
            outs.append(y)
        ins.append(x)
    return b.finish(ins, outs)


def _softmax_relu_quantize() -> bytes:
    b = Builder("softmax_relu_quantize16")
    x = _t16(b, [3, 40], 3e-4)
    sm = _t16(b, [3, 40], Q15)
    b.op(BO.SOFTMAX, [x], [sm], OPT.SoftmaxOptions, options("SoftmaxOptionsT", beta=1.0))
    x2 = _t16(b, [3, 40], 2.5e-2)  # a wide input scale: differences beyond exp's [-10, 0]
    sm2 = _t16(b, [3, 40], Q15)
    b.op(BO.SOFTMAX, [x2], [sm2], OPT.SoftmaxOptions, options("SoftmaxOptionsT", beta=0.5))
    outs = [sm, sm2]
    for code in (BO.RELU, BO.RELU6):  # (TFLite Micro has no RELU_N1_TO_1)
        y = _t16(b, [3, 40], 3e-4)
        b.op(code, [x], [y])
        outs.append(y)
    q16 = _t16(b, [3, 40], 7.3e-4)
    b.op(BO.QUANTIZE, [x], [q16])
    q8 = b.tensor([3, 40], np.int8, scale=0.05, zp=3)
    b.op(BO.QUANTIZE, [x], [q8])
    return b.finish([x, x2], [*outs, q16, q8])


def _all_int16(data: bytes, seed: int) -> list[np.ndarray]:
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as S

    m = S.ModelT.InitFromPackedBuf(bytearray(data), 0)
    sg = m.subgraphs[0]
    rng = np.random.default_rng(seed)
    out = []
    for i in sg.inputs:
        shape = tuple(int(v) for v in sg.tensors[i].shape)
        n = int(np.prod(shape))
        v = np.arange(-32768, 32768) if n == 65536 else rng.integers(-32768, 32768, n)
        out.append(v.astype(np.int16).reshape(shape))
    return out


MODELS = {
    # 2^-12: TFLM's power-of-two path (multiplier 3 << shift); the others its rescaling loop.
    "sigmoid_tanh_pot": lambda: _sigmoid_tanh([2.0**-12]),
    "sigmoid_tanh_small": lambda: _sigmoid_tanh([1.7e-4]),
    "sigmoid_tanh_wide": lambda: _sigmoid_tanh([2.9e-3]),
    "softmax_relu_quantize": _softmax_relu_quantize,
}


def _bit_exact(name: str, target: str, tmp_path) -> None:
    data = MODELS[name]()
    path = tmp_path / "m.tflite"
    path.write_bytes(data)
    result = build(path, load_target(target), tmp_path / "o",
                   BuildOptions(extra_cflags="-Werror", sanitize=target == "host"), log=lambda *_: None)  # fmt: skip
    samples = [_all_int16(data, s) for s in range(1 if name.startswith("sigmoid") else 2)]
    runs = run_samples(result, samples)
    for run, want, ref in zip(runs, tflm_outputs(result, samples), expected_outputs(result, samples), strict=True):
        for got, w, r in zip(run.outputs, want, ref, strict=True):
            np.testing.assert_array_equal(r, w)
            np.testing.assert_array_equal(got, w)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_int16_tflite_ops_bit_exact_with_tflm_on_host(name, tmp_path):
    _bit_exact(name, "host", tmp_path)


@needs_qemu
@pytest.mark.parametrize("name", sorted(MODELS))
def test_int16_tflite_ops_bit_exact_with_tflm_on_cortex_m7(name, tmp_path):
    _bit_exact(name, "cortex-m7", tmp_path)


def test_int16_multiplier_reduction_is_tflm_int64_mbqm():
    """MultiplyByQuantizedMultiplier(int64_t): 15-bit multiplier, one rounding; it saturates the
    multiplier at 0x7FFF from 0x7FFF0000 up (where (m + 2^15) >> 16 would give 0x8000)."""
    assert A.reduce_multiplier_int64(1 << 30) == 1 << 14
    assert A.reduce_multiplier_int64(0x7FFEFFFF) == 0x7FFF
    assert A.reduce_multiplier_int64(0x7FFF8000) == 0x7FFF


def test_int16_softmax_tables_are_tflm_gen_lut():
    exp_lut, recip_lut = A.softmax_int16_luts()
    # exp(0) and 1/(1+0) saturate at 32767; 1/(1+1) = 0.5 is 16384 (the tables map [-1, 1] to int16)
    assert exp_lut[512] == 32767 and recip_lut[0] == 32767 and recip_lut[512] == 16384
    assert np.all(np.diff(exp_lut) >= 0) and np.all(np.diff(recip_lut) <= 0)


def test_int16_with_zero_point_is_refused_by_name(tmp_path, capsys):
    b = Builder("int16_zp")
    x = b.tensor([1, 8], np.int16, scale=1e-3, zp=5)
    y = b.tensor([1, 8], np.int16, scale=Q15, zp=0)
    b.op(BO.LOGISTIC, [x], [y])
    (tmp_path / "m.tflite").write_bytes(b.finish([x], [y]))
    assert main(["build", str(tmp_path / "m.tflite"), "-t", "host", "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "LOGISTIC (operator #0)" in err and "zero point 5" in err and "Traceback" not in err


def test_int16_op_without_tflm_kernel_refused_by_name(tmp_path, capsys):
    b = Builder("int16_hard_swish")
    x = b.tensor([1, 8], np.int16, scale=1e-3, zp=0)
    y = b.tensor([1, 8], np.int16, scale=1e-3, zp=0)
    b.op(BO.HARD_SWISH, [x], [y])
    (tmp_path / "m.tflite").write_bytes(b.finish([x], [y]))
    assert main(["build", str(tmp_path / "m.tflite"), "-t", "host", "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "HARD_SWISH (operator #0)" in err and "int16" in err and "Traceback" not in err
