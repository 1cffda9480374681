"""Real data: CNNs trained on scikit-learn's handwritten digits lose at most 1 point of top-1 in
int8, on 500 held-out images that calibration never saw; the device output is the reference's."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import HAVE_ARM

pytest.importorskip("sklearn")

from digits import load_split, to_onnx, train  # noqa: E402

from edgecomp.pipeline import BuildOptions, build  # noqa: E402
from edgecomp.runner import run_samples  # noqa: E402
from edgecomp.targets import load_target  # noqa: E402
from edgecomp.verify import expected_outputs  # noqa: E402


@pytest.fixture(scope="module", params=["cnn", "dscnn"])
def trained(request, tmp_path_factory):
    (xt, yt), (xv, yv) = load_split()
    folder = tmp_path_factory.mktemp(request.param)
    onnx.save(to_onnx(train(request.param, xt, yt)), folder / "model.onnx")
    np.save(folder / "calib.npy", xt[:100][:, None])  # 100 training images, shape (100, 1, 1, 8, 8)
    np.savez(folder / "eval.npz", x=xv[:, None], y=yv)  # 500 held-out images
    return request.param, folder, xv


def test_int8_top1_within_one_point(trained):
    kind, folder, _ = trained
    result = build(folder / "model.onnx", load_target("host"), folder / "host", BuildOptions(quantize="int8"),
                   log=lambda *_: None, calib=folder / "calib.npy", eval_data=folder / "eval.npz")  # fmt: skip
    acc = result.report["accuracy"]
    print(kind, {k: v for k, v in acc.items() if k != "per_layer_sqnr_db"})
    assert acc["samples"] == 500
    assert acc["float_top1"] >= 0.93
    assert acc["top1_delta_pp"] >= -1.0
    assert len(acc["per_layer_sqnr_db"]) >= 3 and all(e["sqnr_db"] > 20 for e in acc["per_layer_sqnr_db"])


@pytest.mark.skipif(not HAVE_ARM, reason="needs arm-none-eabi-gcc and qemu-system-arm")
def test_device_matches_reference_on_held_out_images(trained):
    _, folder, xv = trained
    result = build(folder / "model.onnx", load_target("cortex-m7"), folder / "m7", BuildOptions(quantize="int8"),
                   log=lambda *_: None, calib=folder / "calib.npy")  # fmt: skip
    samples = [[x[None]] for x in xv[:16]]
    for run, want in zip(run_samples(result, samples), expected_outputs(result, samples), strict=True):
        np.testing.assert_array_equal(run.outputs[0], want[0])
