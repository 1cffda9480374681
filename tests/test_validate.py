"""edgecomp validate: the model runs on the device one step at a time and every step's output is
read back and compared with the reference. On an unaltered build every layer matches; with one weight
altered in the binary (and --no-integrity, so the firmware still runs), the first layer to diverge
is the one that reads that weight."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import HAVE_ARM, weight_bytes

from edgecomp.pipeline import BuildOptions, build
from edgecomp.targets import load_target
from edgecomp.validate import validate

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "tiny_cnn.onnx"
INPUT = Path(__file__).resolve().parents[1] / "examples" / "tiny_cnn_input.npy"
X = np.load(INPUT).astype(np.float32)
TARGETS = ["host"] + (["cortex-m7"] if HAVE_ARM else []) + (
    ["cortex-a53-virt"] if shutil.which("qemu-system-aarch64") else []
)


def _binary(result) -> Path:
    return result.outdir / ("harness" if result.target.is_process else "firmware.elf")


def _calib(tmp_path: Path) -> Path:
    path = tmp_path / "calib.npy"
    np.save(path, np.random.default_rng(1).uniform(0, 1, (8, 1, 1, 28, 28)).astype(np.float32))
    return path


def _altered(result, layer_pos: float) -> tuple[int, bytes]:
    """Alter one weight of the layer at `layer_pos` (0..1 through the layers with weights: those
    doing MACs); returns that layer's index and the binary's original bytes."""
    binary = _binary(result)
    original = binary.read_bytes()
    symbols = {name[3:]: (offset, size) for name, offset, size in weight_bytes(binary)}  # ec_cN -> cN
    owners = [(layer["index"], max((i for i in layer["inputs"] if i in symbols), key=lambda i: symbols[i][1]))
              for layer in result.report["layers"] if layer["macs"] and any(i in symbols for i in layer["inputs"])]  # fmt: skip
    index, const = owners[min(int(layer_pos * len(owners)), len(owners) - 1)]
    offset, size = symbols[const]
    data = bytearray(original)
    # The weight's top byte: a float's sign and exponent, an int8 weight's sign: a large change.
    data[offset + 3 if size % 4 == 0 and result.int_graph is None else offset] ^= 0x40 if result.int_graph is None else 0x80
    binary.write_bytes(bytes(data))
    return index, original


# Float everywhere; int8 where its kernels differ (the host's TVM kernels, the M7's DSP kernels).
CASES = [(t, None) for t in TARGETS] + [(t, "int8") for t in TARGETS if t in ("host", "cortex-m7")]


@pytest.mark.parametrize(("target", "quantize"), CASES)
def test_every_layer_matches_and_an_altered_weight_is_found(target, quantize, tmp_path):
    result = build(EXAMPLE, load_target(target), tmp_path / "o", BuildOptions(quantize=quantize, integrity=False),
                   calib=_calib(tmp_path) if quantize else None, log=lambda *_: None)  # fmt: skip
    v = validate(result, [X])
    assert v.ok, [c for c in v.layers if c.status != "match"]
    # Every step's output names the model tensor it computes, and all were compared.
    assert [c.status for c in v.layers] == ["match"] * len(result.report["layers"])
    assert v.reference.startswith("integer" if quantize else "onnxruntime")
    if quantize:
        assert all(c.max_abs_error == 0 for c in v.layers)
    for pos in (0.0, 0.5, 1.0):
        owner, original = _altered(result, pos)
        try:
            v = validate(result, [X])
        finally:
            _binary(result).write_bytes(original)
        assert v.first_divergence is not None, f"a weight of layer {owner} altered, nothing diverged"
        assert v.first_divergence.index == owner
        assert all(c.status == "match" for c in v.layers if c.index < owner)


@pytest.mark.skipif(not HAVE_ARM, reason="needs arm-none-eabi-gcc and qemu-system-arm")
def test_cli_names_the_first_diverging_layer(tmp_path):
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "edgecomp", "validate", str(EXAMPLE), "-t", "cortex-m7", "-o", str(out),
           "-i", str(INPUT), "--no-integrity", "--json", str(tmp_path / "v.json")]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    good = json.loads((tmp_path / "v.json").read_text())
    assert good["ok"] and good["compared"] == len(good["layers"]) > 0
    result = build(EXAMPLE, load_target("cortex-m7"), out, BuildOptions(integrity=False), reuse=True,
                   log=lambda *_: None)  # fmt: skip
    owner, _ = _altered(result, 0.5)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr
    assert f"layer {owner} (" in proc.stderr and "first to diverge" in proc.stderr and "Traceback" not in proc.stderr
    bad = json.loads((tmp_path / "v.json").read_text())
    assert not bad["ok"] and bad["first_divergence"]["index"] == owner


def test_validate_refuses_while_the_weights_check_fails(tmp_path):
    from edgecomp.errors import DeviceError

    result = build(EXAMPLE, load_target("host"), tmp_path / "o", BuildOptions(), log=lambda *_: None)
    _altered(result, 0.0)
    with pytest.raises(DeviceError, match="weights integrity check failed"):
        validate(result, [X])
