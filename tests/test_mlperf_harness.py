"""`edgecomp build --harness mlperf`: the MLPerf Tiny device-under-test protocol, driven by a client
that speaks it as the benchmark's runner does in direct-connection mode (edgecomp/harness/mlperf.py,
written from mlcommons/tiny benchmark/runner): on the host build (ASan/UBSan), and on a Cortex-M7
in QEMU through a pseudo-terminal (`-serial pty`), as the runner would open a board's port. With
../shared, the MLPerf Tiny KWS model: its sample loaded with `db`, `infer 1 0`, and `results`
equal to `edgecomp run`'s output.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import HAVE_ARM, make_model, weight
from onnx import helper

from edgecomp.cli import main as cli_main
from edgecomp.harness.link import PipeLink, SerialLink
from edgecomp.harness.mlperf import DB_BYTES_PER_COMMAND, MlperfDut, parse_results
from edgecomp.harness.qemu import QemuProcess
from edgecomp.options import BuildOptions
from edgecomp.passes import fold_constants
from edgecomp.pipeline import build
from edgecomp.quant import int_graph_for, run_int_graph
from edgecomp.runner import run_samples
from edgecomp.targets import load_target
from edgecomp.verify import Reference

SHARED = Path(os.environ.get("EDGECOMP_SHARED", Path(__file__).resolve().parents[2] / "shared"))
KWS = SHARED / "models" / "mlperf-tiny"
QUIET = {"log": lambda *_: None}

# The runner's expectations (device_under_test.py, script.py).
NAME = re.compile(r"^m-(name)-dut-\[([^]]+)]$")
PROFILE = re.compile(r"^m-(model|profile)-\[([^]]+)]$")
LAP = re.compile(r"^m-lap-us-([0-9]+)$")
RESULTS = re.compile(r"^m-results-\[([^]]+)\]$")


def _model() -> onnx.ModelProto:
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Flatten", ["r"], ["f"]),
        helper.make_node("Gemm", ["f", "w2", "b2"], ["y"], transB=1),
    ]
    inits = [weight("w1", [4, 1, 3, 3]), weight("b1", [4]), weight("w2", [5, 4 * 6 * 6]), weight("b2", [5])]
    return make_model(nodes, [("x", [1, 1, 6, 6])], [("y", [1, 5])], inits)


class FakeLink:
    """A device that answers from a script: what the client sends, and lines it gets back."""

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers, self.sent, self.pending = answers, [], b""

    def write(self, data: bytes) -> None:
        for cmd in data.decode().split("%")[:-1]:
            self.sent.append(cmd)
            key = max((k for k in self.answers if cmd.startswith(k)), key=len, default="")
            self.pending += (self.answers.get(key, "") + "m-ready\r\n").encode()

    def read(self, timeout: float) -> bytes:
        data, self.pending = self.pending, b""
        return data

    def close(self) -> None:
        pass


def test_client_speaks_the_runners_direct_mode():
    link = FakeLink({"name": "m-name-dut-[x]\r\n", "profile": "m-profile-[p]\r\nm-model-[kws01]\r\n",
                     "db load": "m-[Expecting 40 bytes]\r\n", "db ": "", "infer": "m-infer-start-1\r\nm-lap-us-10\r\n"
                     "m-lap-us-35\r\nm-infer-done\r\nm-results-[0.5,1e-05,-2]\r\n"})  # fmt: skip
    dut = MlperfDut(link, timeout=1.0)
    assert dut.name() == "x" and dut.profile() == {"profile": "p", "model": "kws01"}
    link.answers["db " + "07" * 9] = "m-load-done\r\n"
    dut.load(bytes([7]) * 40)
    assert link.sent[-3:] == ["db load 40", "db " + "07" * DB_BYTES_PER_COMMAND, "db " + "07" * 9]
    result = dut.infer(1, 0)
    assert link.sent[-1] == "infer 1 0" and result.elapsed_us == 25 and result.results == [0.5, 1e-05, -2.0]
    assert parse_results(["m-results-[1,2]", "m-ready"]) == [1.0, 2.0]


def _protocol_checks(dut: MlperfDut, x: np.ndarray, expected: np.ndarray, rtol: float = 0.0) -> list[float]:
    """The runner's session: identify, load, infer; every answer in its format; the results equal
    `expected` (to `rtol`: 0 for the device's own outputs, which %.9g prints exactly)."""
    dut.sync()
    assert NAME.match(dut.command("name")[0])
    lines = dut.command("profile")
    assert [PROFILE.match(ln).group(1) for ln in lines[:2]] == ["profile", "model"] and lines[-1] == "m-ready"
    t0 = dut.timestamp()
    assert LAP.match(dut.command("timestamp")[0]) and dut.timestamp() >= t0
    assert dut.command("bogus")[0] == "e-[Unknown command: bogus]"
    assert "e-[" in dut.command(f"db load {x.nbytes * 100}")[0]  # more than the model's input
    assert dut.command("infer 1 0")[0].startswith("e-[Loaded")  # nothing loaded yet
    dut.load(x.tobytes())
    printed = [ln for ln in dut.command("db print") if ln.startswith("m-buffer-")]
    assert bytes.fromhex("".join(ln[9:].replace("-", "") for ln in printed)) == x.tobytes()
    run = dut.infer(1, 0)
    assert [ln for ln in run.lines if not ln.startswith("m-lap-us-")][:4] == [
        "m-warmup-start-0", "m-warmup-done", "m-infer-start-1", "m-infer-done"]  # fmt: skip
    assert RESULTS.match(run.lines[-2]) and run.elapsed_us > 0
    assert dut.results() == run.results
    np.testing.assert_allclose(np.float32(run.results), expected.ravel(), rtol=rtol, atol=0)
    again = dut.infer(3, 2)  # inputs reloaded before every run: the same results
    assert again.results == run.results
    return run.results


def test_mlperf_harness_on_host(tmp_path):
    """Float and int8 (dequantized as the reference firmware prints them) under ASan/UBSan."""
    model = tmp_path / "m.onnx"
    onnx.save(_model(), model)
    x = np.random.default_rng(0).standard_normal((1, 1, 6, 6)).astype(np.float32)
    opts = BuildOptions(harness="mlperf", sanitize=True, extra_cflags="-Werror", mlperf_model="ic01")
    result = build(model, load_target("host"), tmp_path / "f", opts, **QUIET)
    plain = build(model, load_target("host"), tmp_path / "e", BuildOptions(), **QUIET)  # the edgecomp harness
    (device,) = run_samples(plain, [[x]])
    link = PipeLink([str(result.outdir / "harness")])
    try:
        dut = MlperfDut(link)
        _protocol_checks(dut, x, device.outputs[0])  # exactly what `edgecomp run` gives
        assert dut.profile()["model"] == "ic01"
    finally:
        link.close()

    np.save(tmp_path / "calib.npy", np.random.default_rng(1).standard_normal((16, 1, 1, 6, 6)).astype(np.float32))
    qopts = BuildOptions(harness="mlperf", sanitize=True, extra_cflags="-Werror", quantize="int8", io="int8",
                         name="kws", arena="caller")  # fmt: skip
    q = build(model, load_target("host"), tmp_path / "q", qopts, calib=tmp_path / "calib.npy", **QUIET)
    xq = np.clip(np.round(x / q.report["inputs"][0]["scale"]) + q.report["inputs"][0]["zero_point"], -128, 127)
    xq = xq.astype(np.int8)
    (yq,) = run_int_graph(int_graph_for(fold_constants(q.model).model, "int8"), [xq])
    out = q.report["outputs"][0]
    want = (yq.astype(np.int32) - out["zero_point"]).astype(np.float32) * np.float32(out["scale"])
    link = PipeLink([str(q.outdir / "harness")])
    try:
        _protocol_checks(MlperfDut(link), xq, want)
    finally:
        link.close()


def _on_qemu_pty(elf: Path, x: np.ndarray, expected: np.ndarray, rtol: float = 0.0):
    target = load_target("cortex-m7")
    with QemuProcess(target, elf, pty=True) as qemu:
        assert qemu.url.startswith("/dev/")
        link = SerialLink(qemu.url)
        try:
            dut = MlperfDut(link, timeout=30.0)
            results = _protocol_checks(dut, x, expected, rtol)
            return dut, results, dut.infer(1, 0)
        finally:
            link.close()


@pytest.mark.skipif(not HAVE_ARM, reason="needs arm-none-eabi-gcc and qemu-system-arm")
def test_mlperf_harness_in_qemu_on_a_pty(tmp_path):
    model = tmp_path / "m.onnx"
    onnx.save(_model(), model)
    x = np.random.default_rng(0).standard_normal((1, 1, 6, 6)).astype(np.float32)
    result = build(model, load_target("cortex-m7"), tmp_path / "b", BuildOptions(harness="mlperf"), **QUIET)
    _, _, run = _on_qemu_pty(result.outdir / "firmware.elf", x, Reference(result.model).run([x])[0], 1e-5)
    # QEMU -icount shift=0: a microsecond of virtual time is 1,000 instructions.
    assert 0 < run.elapsed_us * 1000 < 10 * result.report["macs"] + 100_000

    # `edgecomp qemu BUILD_DIR`, as a user starts it for the runner: it names the pty, the firmware
    # answers there, and Ctrl-C (SIGINT) stops QEMU with it.
    proc = subprocess.Popen([sys.executable, "-m", "edgecomp.cli", "qemu", str(result.outdir)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        first = proc.stdout.readline()
        m = re.search(r"UART is (/dev/\S+) ", first)
        assert m, first + proc.stderr.read() if proc.poll() is not None else first
        link = SerialLink(m.group(1))
        try:
            dut = MlperfDut(link, timeout=30.0)
            dut.sync()
            assert dut.name() == "edgecomp" and dut.profile()["model"] == "m"
        finally:
            link.close()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 130 and "interrupted" in proc.stderr.read()
        assert not os.path.exists(m.group(1))  # QEMU is gone: its pty with it
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.skipif(not HAVE_ARM, reason="needs arm-none-eabi-gcc and qemu-system-arm")
@pytest.mark.skipif(not KWS.is_dir(), reason="../shared/models/mlperf-tiny not present")
def test_kws_through_the_mlperf_protocol_matches_edgecomp_run(tmp_path, capsys):
    x = np.load(KWS / "kws_sample.npy").astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    assert cli_main(["run", str(KWS / "kws_dscnn.onnx"), "--target", "cortex-m7", "-o", str(tmp_path / "run"),
                     "--input", str(tmp_path / "x.npy"), "--output", str(tmp_path / "y.npy"), "-q"]) == 0  # fmt: skip
    y = np.load(tmp_path / "y.npy")
    assert cli_main(["build", str(KWS / "kws_dscnn.onnx"), "--target", "cortex-m7", "-o", str(tmp_path / "mlperf"),
                     "--harness", "mlperf", "--mlperf-model", "kws01", "-q"]) == 0  # fmt: skip
    dut, results, run = _on_qemu_pty(tmp_path / "mlperf" / "firmware.elf", x, y)
    assert np.array_equal(np.float32(results), y.ravel())
    assert cli_main(["profile", str(KWS / "kws_dscnn.onnx"), "--target", "cortex-m7", "-o", str(tmp_path / "run"),
                     "--input", str(tmp_path / "x.npy"), "--json", str(tmp_path / "p.json"), "-q"]) == 0  # fmt: skip
    import json

    instructions = json.loads((tmp_path / "p.json").read_text())["instructions"]
    # The runner's interval holds the run and the copy of the loaded input into the model's.
    assert abs(run.elapsed_us * 1000 - instructions) < 0.01 * instructions
    with capsys.disabled():
        print(f"\nKWS via the MLPerf protocol: m-results {results[:3]}... = edgecomp run; infer 1 0: "
              f"{run.elapsed_us} us (QEMU: x1000 instructions) vs edgecomp profile {instructions:,} instructions")
