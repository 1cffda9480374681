"""Arm application-processor targets: the Linux deliverable (static library + header + harness
runner, cross-built, run under QEMU user mode) for Cortex-A53/A72/A7, and the bare-metal AArch64
firmware on QEMU virt (instructions from the PMU under -icount). Float within 1e-4 of
onnxruntime, int8 bit-exact with the integer reference."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import compile_and_compare
from elftools.elf.elffile import ELFFile
from test_ops import MODELS

from edgecomp.cli import main
from edgecomp.pipeline import BuildOptions, build
from edgecomp.runner import run_samples
from edgecomp.targets import load_target
from edgecomp.verify import expected_outputs

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "tiny_cnn.onnx"
LINUX = {"cortex-a53": "aarch64-linux-gnu-gcc", "cortex-a72": "aarch64-linux-gnu-gcc",
         "cortex-a7": "arm-linux-gnueabihf-gcc"}  # fmt: skip
HAVE_A64_BAREMETAL = (
    shutil.which("qemu-system-aarch64") is not None
    and Path("/usr/lib/picolibc/aarch64-linux-gnu/picolibc.specs").exists()
)


def _needs(cc: str, emulator: str):
    return pytest.mark.skipif(
        shutil.which(cc) is None or shutil.which(emulator) is None, reason=f"needs {cc} and {emulator}"
    )


@pytest.mark.parametrize("target", sorted(LINUX))
@pytest.mark.parametrize("name", ["residual_block", "depthwise", "softmax"])
def test_linux_float_matches_onnxruntime(target, name, tmp_path):
    t = load_target(target)
    if shutil.which(t.cc) is None or shutil.which(t.toolchain["emulator"][0]) is None:
        pytest.skip(f"needs {t.cc} and {t.toolchain['emulator'][0]}")
    assert compile_and_compare(MODELS[name](), target, tmp_path, samples=2) <= 1e-4


def _calib(tmp_path: Path) -> Path:
    calib = tmp_path / "calib.npy"
    np.save(calib, np.random.default_rng(0).standard_normal((8, 1, 1, 28, 28)).astype(np.float32))
    return calib


def _int8_bit_exact(target: str, tmp_path: Path) -> None:
    options = BuildOptions(extra_cflags="-Werror", quantize="int8", io="int8")
    result = build(EXAMPLE, load_target(target), tmp_path / "q", options, log=lambda *_: None,
                   calib=_calib(tmp_path))  # fmt: skip
    rng = np.random.default_rng(1)
    samples = [[rng.integers(-128, 128, (1, 1, 28, 28)).astype(np.int8)] for _ in range(3)]
    for expected, run in zip(expected_outputs(result, samples), run_samples(result, samples), strict=True):
        assert all(np.array_equal(g, e) for g, e in zip(run.outputs, expected, strict=True))


@pytest.mark.parametrize("target", ["cortex-a53", "cortex-a7"])
def test_linux_int8_is_bit_exact(target, tmp_path):
    t = load_target(target)
    if shutil.which(t.cc) is None or shutil.which(t.toolchain["emulator"][0]) is None:
        pytest.skip(f"needs {t.cc} and {t.toolchain['emulator'][0]}")
    _int8_bit_exact(target, tmp_path)


@_needs("aarch64-linux-gnu-gcc", "qemu-aarch64")
def test_linux_deliverable_is_a_static_library_header_and_runner(tmp_path):
    """The library links into a user's program with nothing but model.h; the runner is a static
    AArch64 executable."""
    result = build(EXAMPLE, load_target("cortex-a53"), tmp_path / "o", log=lambda *_: None)
    out = result.outdir
    with open(out / "harness", "rb") as f:
        elf = ELFFile(f)
        assert elf.header.e_machine == "EM_AARCH64"
        assert elf.get_section_by_name(".interp") is None  # statically linked
    app = tmp_path / "app.c"
    app.write_text(
        '#include <stdio.h>\n#include "model.h"\n'
        "static float x[MODEL_INPUT_0_SIZE], y[MODEL_OUTPUT_0_SIZE];\n"
        "int main(void) { x[0] = 1.0f; int rc = model_run(x, y); printf(\"%d %.6f\\n\", rc, (double)y[0]); return rc; }\n"
    )  # fmt: skip
    exe = tmp_path / "app"
    subprocess.run(["aarch64-linux-gnu-gcc", "-static", "-I", str(out), str(app), str(out / "libmodel.a"),
                    "-lm", "-o", str(exe)], check=True)  # fmt: skip
    proc = subprocess.run(["qemu-aarch64", str(exe)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("0 "), proc.stdout + proc.stderr


@pytest.mark.skipif(not HAVE_A64_BAREMETAL, reason="needs qemu-system-aarch64 and picolibc-aarch64-linux-gnu")
@pytest.mark.parametrize("target", ["cortex-a53-virt", "cortex-a72-virt"])
def test_baremetal_float_and_instruction_counts(target, tmp_path):
    assert compile_and_compare(MODELS["residual_block"](), target, tmp_path, samples=2) <= 1e-4
    json_path = tmp_path / "p.json"
    rc = main(
        ["profile", str(EXAMPLE), "-t", target, "-o", str(tmp_path / "p"), "--json", str(json_path), "-q"]
    )
    assert rc == 0
    record = json.loads(json_path.read_text())
    # Deterministic under -icount: a second run counts the same instructions.
    rc = main(
        ["profile", str(EXAMPLE), "-t", target, "-o", str(tmp_path / "p"), "--json", str(json_path), "-q"]
    )
    again = json.loads(json_path.read_text())
    assert record["device"] == "qemu" and record["instructions"] == again["instructions"]
    assert record["instructions"] > record["macs"] > 0  # at least one instruction per MAC in fp32
    assert 0 < record["stack_bytes"] < 65_536


@pytest.mark.skipif(not HAVE_A64_BAREMETAL, reason="needs qemu-system-aarch64 and picolibc-aarch64-linux-gnu")
def test_baremetal_int8_is_bit_exact(tmp_path):
    _int8_bit_exact("cortex-a53-virt", tmp_path)


@pytest.mark.skipif(not HAVE_A64_BAREMETAL, reason="needs qemu-system-aarch64 and picolibc-aarch64-linux-gnu")
def test_baremetal_fault_is_reported(tmp_path):
    """A trap in the firmware (BRK: exception class 0x3c) comes back as a fault report with its PC."""
    from edgecomp.errors import DeviceError
    from edgecomp.harness import open_session

    target = load_target("cortex-a53-virt")
    result = build(EXAMPLE, target, tmp_path / "o", BuildOptions(extra_cflags="-DEC_TEST_HOOKS"),
                   log=lambda *_: None)  # fmt: skip
    with open_session(target, result.outdir, timeout=2.0) as session, pytest.raises(DeviceError) as err:
        session.request(0x7F)
    assert "AArch64 exception class 0x3c" in str(err.value) and "pc=0x4" in str(err.value)


@_needs("aarch64-linux-gnu-gcc", "qemu-aarch64")
def test_missing_emulator_names_its_package(tmp_path, capsys):
    from edgecomp.resources import data_dir

    text = (data_dir("targets") / "cortex-a53.toml").read_text()
    bad = tmp_path / "a53.toml"
    bad.write_text(
        text.replace('emulator = ["qemu-aarch64", "-cpu", "cortex-a53"]', 'emulator = ["qemu-nothere"]')
    )
    sample = tmp_path / "x.npy"
    np.save(sample, np.zeros((1, 1, 28, 28), np.float32))
    rc = main(["run", str(EXAMPLE), "-t", str(bad), "-o", str(tmp_path / "o"), "--input", str(sample), "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 3 and len(err) == 1 and "'qemu-nothere' not found" in err[0] and "qemu-user" in err[0]
