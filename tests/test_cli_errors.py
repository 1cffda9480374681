"""Every error path of the CLI: a one-line message, the documented exit code, no traceback,
and no half-written output folder."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import make_model, needs_qemu, weight
from onnx import TensorProto, helper

from edgecomp.cli import main

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "tiny_cnn.onnx"
EXAMPLE_INPUT = REPO / "examples" / "tiny_cnn_input.npy"


def edgecomp(*args, env=None, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edgecomp", *map(str, args)],
        capture_output=True, text=True, timeout=600, env=env, cwd=cwd,
    )  # fmt: skip


def assert_clean_error(proc: subprocess.CompletedProcess, code: int, *needles: str) -> None:
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    err = proc.stderr.lower()
    for needle in needles:
        assert needle.lower() in err, proc.stderr


def test_missing_model_file(tmp_path):
    assert_clean_error(edgecomp("build", tmp_path / "nope.onnx", "-t", "host"), 2, "not found")


def test_malformed_onnx(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage that is not protobuf" * 10)
    assert_clean_error(edgecomp("build", bad, "-t", "host", "-o", tmp_path / "out"), 2, "onnx")
    assert not (tmp_path / "out").exists()


def test_invalid_graph(tmp_path):
    # A node that reads a tensor nobody produces.
    graph = helper.make_graph(
        [helper.make_node("Relu", ["missing"], ["y"], "r")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    assert_clean_error(edgecomp("build", path, "-t", "host"), 2, "not a valid onnx model")


def test_unsupported_op_names_op_and_node(tmp_path):
    model = make_model(
        [helper.make_node("Relu", ["x"], ["r"], "relu"), helper.make_node("NonZero", ["r"], ["y"], "find_nonzero")],
        [("x", [1, 4])], [("y", [2, 4])],
    )  # fmt: skip
    model.graph.output[0].type.tensor_type.elem_type = TensorProto.INT64
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    assert_clean_error(edgecomp("build", path, "-t", "host"), 2, "NonZero", "find_nonzero")


def test_custom_domain_op(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("FancyOp", ["x"], ["y"], "fancy", domain="com.example")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )  # fmt: skip
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.example", 1)]
    )
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    proc = edgecomp("build", path, "-t", "host")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "fancy" in proc.stderr.lower()


def _dynamic_model(tmp_path) -> Path:
    model = make_model([helper.make_node("Relu", ["x"], ["y"], "relu")], [("x", ["N", 4])], [("y", ["N", 4])])
    path = tmp_path / "dyn.onnx"
    onnx.save(model, path)
    return path


def test_dynamic_shape_is_refused_with_hint(tmp_path):
    assert_clean_error(
        edgecomp("build", _dynamic_model(tmp_path), "-t", "host"), 2, "dynamic", "--input-shape x=1,4"
    )


def test_input_shape_pins_dynamic_dims(tmp_path):
    path = _dynamic_model(tmp_path)
    x = np.arange(12, dtype=np.float32).reshape(3, 4) - 6
    np.save(tmp_path / "x.npy", x)
    proc = edgecomp("run", path, "-t", "host", "--input-shape", "x=3,4", "-i", tmp_path / "x.npy",
                    "--output", tmp_path / "y.npy", "-o", tmp_path / "out")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), np.maximum(x, 0))


def test_bad_input_shape_argument(tmp_path):
    assert_clean_error(
        edgecomp("build", _dynamic_model(tmp_path), "-t", "host", "--input-shape", "x=a,b"),
        2,
        "--input-shape",
    )
    assert_clean_error(
        edgecomp("build", _dynamic_model(tmp_path), "-t", "host", "--input-shape", "q=1,4"),
        2,
        "unknown input",
    )


def test_unknown_target(tmp_path):
    assert_clean_error(
        edgecomp("build", EXAMPLE, "-t", "cortex-m99", "-o", tmp_path / "o"), 2, "unknown target", "cortex-m7"
    )


def test_bad_arguments_exit_2():
    proc = edgecomp("run", EXAMPLE)  # --input missing
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


@needs_qemu
def test_model_that_does_not_fit_is_refused_by_how_much(tmp_path):
    src = (REPO / "targets" / "cortex-m7.toml").read_text()
    tiny = src.replace("ram_bytes = 524_288", "ram_bytes = 20_000").replace(
        'name = "cortex-m7"', 'name = "tiny-m7"'
    )
    target = tmp_path / "tiny-m7.toml"
    target.write_text(tiny)
    out = tmp_path / "out"
    proc = edgecomp("build", EXAMPLE, "--target", target, "-o", out)
    assert_clean_error(proc, 2, "does not fit", "ram", "by ", "--no-fit-check")
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")], (
        "temporary build folder left behind"
    )
    ok = edgecomp("build", EXAMPLE, "--target", target, "-o", out, "--no-fit-check")
    assert ok.returncode == 0, ok.stderr
    assert (out / "firmware.elf").exists()


def test_missing_toolchain_is_a_tool_error(tmp_path):
    # A PATH with no arm-none-eabi-gcc (nor anything else). The interpreter is this test's own, by
    # its path: a symlink to it elsewhere would start the base interpreter, outside the venv.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    env = dict(os.environ, PATH=str(bindir))
    proc = subprocess.run([sys.executable, "-m", "edgecomp", "build", str(EXAMPLE), "-t", "cortex-m7",
                           "-o", str(tmp_path / "o")], capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert_clean_error(proc, 3, "arm-none-eabi-gcc", "apt-get install")
    assert not (tmp_path / "o").exists()


def test_input_with_wrong_shape(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 28, 28), np.float32))
    assert_clean_error(
        edgecomp("run", EXAMPLE, "-t", "host", "-i", tmp_path / "x.npy", "-o", tmp_path / "o"), 2, "shape"
    )


def test_input_file_not_numpy(tmp_path):
    (tmp_path / "x.npy").write_text("hello")
    assert_clean_error(
        edgecomp("run", EXAMPLE, "-t", "host", "-i", tmp_path / "x.npy", "-o", tmp_path / "o"), 2, "numpy"
    )


def test_mismatch_exit_code_1(tmp_path):
    # No compiled float model matches onnxruntime to a negative tolerance: the check must fail.
    proc = edgecomp(
        "run", EXAMPLE, "-t", "host", "-i", EXAMPLE_INPUT, "-o", tmp_path / "o", "--tolerance", "-1"
    )
    assert_clean_error(proc, 1, "differ from onnxruntime")


def test_several_samples_and_npz_output(tmp_path):
    x = np.random.default_rng(0).uniform(0, 1, (3, 1, 1, 28, 28)).astype(np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    proc = edgecomp("run", EXAMPLE, "-t", "host", "-i", tmp_path / "x.npz", "--output", tmp_path / "y.npz",
                    "-o", tmp_path / "o")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    y = np.load(tmp_path / "y.npz")["probs"]
    assert y.shape == (3, 1, 10)
    np.testing.assert_allclose(y.sum(axis=-1), 1.0, rtol=1e-5)
    # Batch-dimension form: (3, 1, 28, 28) for a 1x1x28x28 model is 3 samples too.
    np.save(tmp_path / "xb.npy", x[:, 0])
    proc = edgecomp("run", EXAMPLE, "-t", "host", "-i", tmp_path / "xb.npy", "--output", tmp_path / "yb.npy",
                    "-o", tmp_path / "o")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "yb.npy"), y)


@needs_qemu
def test_firmware_fault_is_reported(tmp_path):
    from edgecomp.errors import DeviceError
    from edgecomp.harness import open_session
    from edgecomp.pipeline import BuildOptions, build
    from edgecomp.targets import load_target

    target = load_target("cortex-m7")
    result = build(
        EXAMPLE, target, tmp_path / "o", BuildOptions(extra_cflags="-DEC_TEST_HOOKS"), log=lambda *_: None
    )
    with open_session(target, result.outdir, timeout=2.0) as session, pytest.raises(DeviceError) as err:
        session.request(0x7F)
    assert "UsageFault" in str(err.value) and "pc=0x" in str(err.value)


@needs_qemu
def test_profile_json_contract(tmp_path):
    import json

    proc = edgecomp(
        "profile", EXAMPLE, "-t", "cortex-m7", "-o", tmp_path / "o", "--json", tmp_path / "p.json"
    )
    assert proc.returncode == 0, proc.stderr
    rec = json.loads((tmp_path / "p.json").read_text())
    for key in (
        "instructions",
        "flash_bytes",
        "ram_bytes",
        "arena_bytes",
        "stack_bytes",
        "macs",
        "params",
        "layers",
    ):
        assert rec[key] is not None, key
    assert rec["instructions"] > rec["macs"] > 0
    assert 0 < rec["stack_bytes"] < 16384
    assert rec["ram_bytes"] >= rec["arena_bytes"]
    assert sum(layer["macs"] for layer in rec["layers"]) == rec["macs"]
    assert (tmp_path / "o" / "report.json").exists()
    # Provenance and the cold (first) inference; QEMU has no caches, so cold == warm there.
    assert rec["cold"]["instructions"] == rec["instructions"]
    assert (
        rec["toolchain"]["compiler"] == "arm-none-eabi-gcc"
        and "-mcpu=cortex-m7" in rec["toolchain"]["cflags"]
    )
    assert rec["toolchain"]["version"] and rec["core_clock_hz"] == 25_000_000 and rec["caches"] is False


def test_profile_per_layer_plot(tmp_path):
    import json

    png, js = tmp_path / "layers.png", tmp_path / "p.json"
    assert main(["profile", str(EXAMPLE), "-t", "host", "-o", str(tmp_path / "o"), "--per-layer", "--plot", str(png),
                 "--json", str(js)]) == 0  # fmt: skip
    rec = json.loads(js.read_text())
    assert all(layer["ticks"] >= 0 for layer in rec["layers"]) and png.read_bytes()[:4] == b"\x89PNG"


def test_weights_used_by_unknown_op_are_not_needed(tmp_path):
    # Sanity for the helper: a model with a Conv compiles on host (guards the error tests above).
    w = weight("w", [2, 1, 1, 1])
    model = make_model(
        [helper.make_node("Conv", ["x", "w"], ["y"], "c")], [("x", [1, 1, 2, 2])], [("y", [1, 2, 2, 2])], [w]
    )
    onnx.save(model, tmp_path / "m.onnx")
    assert edgecomp("build", tmp_path / "m.onnx", "-t", "host", "-o", tmp_path / "o").returncode == 0


@needs_qemu
def test_silent_device_times_out_and_qemu_is_cleaned_up(tmp_path):
    # A target file whose UART is not the one QEMU connects: the firmware never answers.
    src = (REPO / "targets" / "cortex-m7.toml").read_text()
    target = tmp_path / "mute-m7.toml"
    target.write_text(
        src.replace("base = 0x40004000", "base = 0x40005000").replace(
            'name = "cortex-m7"', 'name = "mute-m7"'
        )
    )
    out = tmp_path / "out"
    proc = edgecomp("run", EXAMPLE, "--target", target, "-o", out, "-i", EXAMPLE_INPUT, "--timeout", "0.5")
    assert_clean_error(proc, 3, "no valid reply")
    assert not _processes_with(str(out / "firmware.elf")), "QEMU was left running"


@needs_qemu
def test_qemu_ends_when_edgecomp_is_killed(tmp_path):
    """SIGKILL gives `edgecomp qemu` no chance to close QEMU: QEMU must end with it, not spin on."""
    import signal
    import time

    out = tmp_path / "out"
    assert edgecomp("build", EXAMPLE, "--target", "cortex-m7", "-o", out).returncode == 0
    proc = subprocess.Popen([sys.executable, "-m", "edgecomp.cli", "qemu", str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert "UART is" in proc.stdout.readline()
        assert _processes_with(str(out / "firmware.elf")), "QEMU did not start"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _processes_with(str(out / "firmware.elf")) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _processes_with(str(out / "firmware.elf")), "QEMU outlived the edgecomp that started it"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
        for pid in _processes_with(str(out / "firmware.elf")):  # a failed run leaves nothing behind
            os.kill(pid, signal.SIGKILL)


def _processes_with(text: str) -> list[int]:
    """PIDs whose command line contains `text` (from /proc: procps may not be installed)."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text.encode() in cmdline.read_bytes():
                pids.append(int(cmdline.parent.name))
        except OSError:  # the process ended meanwhile
            continue
    return pids


@pytest.mark.parametrize("target", ["cortex-m7", "cortex-a53-virt"])
def test_qemu_that_exits_at_start_is_reported_with_its_message(tmp_path, target):
    """QEMU that exits during start-up (as it does for a missing option ROM) is a tool error with
    QEMU's own message, not the lost connection that follows it."""
    from edgecomp.targets import load_target

    text = load_target(target).source.read_text()
    bogus = '"-device", "no-such-device-edgecomp"'
    if re.search(r"^args = \[", text, re.M):
        text = re.sub(r"^args = \[", f"args = [{bogus}, ", text, flags=re.M)
    else:
        assert text.rstrip().splitlines()[-1].startswith("cpu = "), "expected [qemu] last"
        text += f"args = [{bogus}]\n"
    toml = tmp_path / f"{target}-broken-qemu.toml"
    toml.write_text(text)
    proc = edgecomp("profile", EXAMPLE, "-t", toml, "-o", tmp_path / "o", "--timeout", "2")
    assert_clean_error(proc, 3, "QEMU stopped", "no-such-device-edgecomp")


def test_optimize_speed_and_size_builds_and_bad_values(tmp_path):
    """--optimize speed: int16 weight records (the dense layer's dense_w16_s8, no int8 convolution
    records); size: int8 records everywhere; a bad value, --kernels tvm, or a float build: exit 2."""
    calib = tmp_path / "calib.npy"
    np.save(calib, np.random.default_rng(0).standard_normal((8, 1, 28, 28)).astype(np.float32))
    common = ("build", EXAMPLE, "-t", "host", "--quantize", "int8", "--calib", calib)
    for optimize in ("speed", "size"):
        proc = edgecomp(*common, "--optimize", optimize, "-o", tmp_path / optimize)
        assert proc.returncode == 0, proc.stderr
        kernels_c = (tmp_path / optimize / "model_kernels.c").read_text()
        assert ("_dense_w16_s8: " in kernels_c) == (optimize == "speed")
        assert ("records w16," in kernels_c) == (optimize == "speed")
        assert ("_dense_s8: " in kernels_c) == (optimize == "size")
    assert_clean_error(edgecomp(*common, "--optimize", "fast"), 2, "--optimize", "invalid choice")
    proc = edgecomp(*common, "--optimize", "speed", "--kernels", "tvm", "-o", tmp_path / "tvm")
    assert_clean_error(proc, 2, "--optimize speed", "--kernels tvm")
    assert not (tmp_path / "tvm").exists()
    proc = edgecomp("build", EXAMPLE, "-t", "host", "--optimize", "size", "-o", tmp_path / "float")
    assert_clean_error(proc, 2, "--optimize size", "float build")
    proc = edgecomp(*common, "--max-flash", "64K", "-o", tmp_path / "noflash")  # a host program has no flash
    assert_clean_error(proc, 2, "--max-flash is a firmware budget")
    assert not (tmp_path / "noflash").exists()
    assert [line for line in proc.stderr.splitlines() if "error" in line.lower()] == proc.stderr.splitlines()[-1:]
