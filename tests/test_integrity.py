"""Model protection: the firmware checks its weights' SHA-256 at boot; a single altered byte of
the weights anywhere in the ELF makes run/profile fail with exit code 3 and the integrity message,
and no output is returned; --no-integrity builds without the check."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import HAVE_ARM, weight_bytes
from elftools.elf.elffile import ELFFile

from edgecomp.errors import DeviceError
from edgecomp.pipeline import BuildOptions, build
from edgecomp.runner import run_samples
from edgecomp.targets import load_target

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "tiny_cnn.onnx"
X = np.random.default_rng(0).uniform(0, 1, (1, 1, 28, 28)).astype(np.float32)
TARGETS = ["host"] + (["cortex-m7"] if HAVE_ARM else []) + (
    ["cortex-a53-virt"] if shutil.which("qemu-system-aarch64") else []
)


def _binary(result) -> Path:
    return result.outdir / ("harness" if result.target.is_process else "firmware.elf")


@pytest.mark.parametrize("target", TARGETS)
def test_any_altered_weight_byte_stops_inference(target, tmp_path):
    result = build(EXAMPLE, load_target(target), tmp_path / "o", BuildOptions(), log=lambda *_: None)
    good = run_samples(result, [[X]])[0].outputs  # unaltered: runs as before
    assert good[0].shape == (1, 10)
    binary = _binary(result)
    original = binary.read_bytes()
    blocks = weight_bytes(binary)
    assert blocks, "no weights found in the ELF"
    first, last = blocks[0], blocks[-1]
    middle = blocks[len(blocks) // 2]
    for where in (first[1], last[1] + last[2] - 1, middle[1] + middle[2] // 2):
        data = bytearray(original)
        data[where] ^= 0x10
        binary.write_bytes(bytes(data))
        with pytest.raises(DeviceError, match="weights integrity check failed"):
            run_samples(result, [[X]])
    binary.write_bytes(original)
    np.testing.assert_array_equal(run_samples(result, [[X]])[0].outputs[0], good[0])


@pytest.mark.skipif(not HAVE_ARM, reason="needs arm-none-eabi-gcc and qemu-system-arm")
def test_cli_exit_code_3_and_no_output(tmp_path):
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "edgecomp", "run", str(EXAMPLE), "-t", "cortex-m7", "-o", str(out), "-i",
           str(Path(__file__).resolve().parents[1] / "examples" / "tiny_cnn_input.npy")]  # fmt: skip
    assert subprocess.run(cmd, capture_output=True, text=True, timeout=600).returncode == 0
    elf = out / "firmware.elf"
    name, offset, size = weight_bytes(elf)[0]
    data = bytearray(elf.read_bytes())
    data[offset] ^= 0xFF
    elf.write_bytes(bytes(data))
    proc = subprocess.run([*cmd, "--output", str(tmp_path / "y.npy")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 3, proc.stderr
    assert "weights integrity check failed (expected" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "y.npy").exists()


def test_no_integrity_builds_without_the_check(tmp_path):
    result = build(EXAMPLE, load_target("host"), tmp_path / "o", BuildOptions(integrity=False), log=lambda *_: None)
    assert result.report["integrity"]["enabled"] is False
    assert "#define MODEL_INTEGRITY 0" in (result.outdir / "model.h").read_text()
    binary = _binary(result)
    name, offset, size = weight_bytes(binary)[0]
    data = bytearray(binary.read_bytes())
    data[offset] ^= 0x10
    binary.write_bytes(bytes(data))
    run_samples(result, [[X]])  # runs (with a wrong answer): nothing checks


@pytest.mark.skipif(not HAVE_ARM, reason="needs arm-none-eabi-gcc and qemu-system-arm")
def test_signed_image_verifies_with_its_key_only(tmp_path):
    from edgecomp.cli import main
    from edgecomp.sign import verify_image

    for name in ("key", "other"):
        assert main(["keygen", "-o", str(tmp_path / f"{name}.pem")]) == 0
    out = tmp_path / "o"
    assert main(["build", str(EXAMPLE), "-t", "cortex-m7", "-o", str(out), "--sign", str(tmp_path / "key.pem"),
                 "--sign-version", "1.2.3", "-q"]) == 0  # fmt: skip
    image = out / "firmware.signed.bin"
    ok, _ = verify_image(image, tmp_path / "key.pub.pem")
    assert ok
    ok, message = verify_image(image, tmp_path / "other.pub.pem")
    assert not ok, message
    import json

    assert json.loads((out / "report.json").read_text())["signed"]["version"] == "1.2.3"


def _with_region(elf: Path, region: bytes) -> None:
    """Write `region` into the .ec_model section of `elf` (what flashing a model region does)."""
    with elf.open("rb") as f:
        sec = ELFFile(f).get_section_by_name(".ec_model")
        offset, size = sec["sh_offset"], sec["sh_size"]
    data = bytearray(elf.read_bytes())
    data[offset : offset + size] = (region + bytes(size))[:size]
    elf.write_bytes(bytes(data))


@pytest.mark.skipif(not HAVE_ARM, reason="needs arm-none-eabi-gcc and qemu-system-arm")
def test_model_region_updates_apart_and_refuses_other_code(tmp_path):
    import onnx
    from onnx import numpy_helper

    from edgecomp.verify import Reference

    m7 = load_target("cortex-m7")
    a = build(EXAMPLE, m7, tmp_path / "a", BuildOptions(model_region=True), log=lambda *_: None)
    assert (a.outdir / "model_region.bin").exists() and a.report["model_region"]["origin"] > 0
    # The same network with other weights: the same code, so its region is a valid update.
    model = onnx.load(EXAMPLE)
    for init in model.graph.initializer:
        init.CopyFrom(numpy_helper.from_array((numpy_helper.to_array(init) * 0.5).astype(np.float32), init.name))
    onnx.save(model, tmp_path / "b.onnx")
    b = build(tmp_path / "b.onnx", m7, tmp_path / "b", BuildOptions(model_region=True), log=lambda *_: None)
    assert b.report["model_region"]["code_id"] == a.report["model_region"]["code_id"]
    _with_region(a.outdir / "firmware.elf", (b.outdir / "model_region.bin").read_bytes())
    got = run_samples(a, [[X]])[0].outputs[0]
    np.testing.assert_allclose(got, Reference(b.model).run([X])[0], rtol=1e-5, atol=1e-6)
    # A region built for other code (another network) is refused.
    other = build(Path(__file__).resolve().parents[1] / "examples" / "tiny_cnn.onnx", m7, tmp_path / "c",
                  BuildOptions(model_region=True, extra_cflags="-DEC_OTHER_BUILD"), log=lambda *_: None)  # fmt: skip
    assert other.report["model_region"]["code_id"] == a.report["model_region"]["code_id"]  # flags are not code
    dense = onnx.helper.make_graph(
        [onnx.helper.make_node("Flatten", ["x"], ["f"]), onnx.helper.make_node("Gemm", ["f", "w"], ["y"], transB=1)],
        "g", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 1, 28, 28])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 10])],
        [numpy_helper.from_array(np.ones((10, 784), np.float32) * 0.01, "w")])  # fmt: skip
    dm = onnx.helper.make_model(dense, opset_imports=[onnx.helper.make_opsetid("", 13)])
    dm.ir_version = 8
    onnx.save(dm, tmp_path / "d.onnx")
    d = build(tmp_path / "d.onnx", m7, tmp_path / "d", BuildOptions(model_region=True), log=lambda *_: None)
    _with_region(a.outdir / "firmware.elf", (d.outdir / "model_region.bin").read_bytes())
    with pytest.raises(DeviceError, match="built for other code"):
        run_samples(a, [[X]])
    _with_region(a.outdir / "firmware.elf", b"\xff" * 64)  # an erased region
    with pytest.raises(DeviceError, match="no valid model"):
        run_samples(a, [[X]])
