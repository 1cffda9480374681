"""The harness protocol: framing, resync, timeouts, retries; a corrupted link never yields a wrong result."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from edgecomp.errors import DeviceError
from edgecomp.harness import protocol as P
from edgecomp.harness.link import PipeLink
from edgecomp.harness.session import Session
from edgecomp.pipeline import build
from edgecomp.targets import load_target

HAVE_ARM = shutil.which("arm-none-eabi-gcc") is not None and shutil.which("qemu-system-arm") is not None

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "tiny_cnn.onnx"


def test_frame_roundtrip_and_resync_after_garbage():
    frames = [P.encode(0x81, 7, b"\x00hello"), P.encode(0x83, 8, bytes(range(200)))]
    stream = b"boot banner\r\n\xec\xec\xa5garbage" + frames[0] + b"\xec\xa5\x01" + frames[1]
    dec = P.FrameDecoder()
    got = []
    for i in range(0, len(stream), 3):  # arrives in small pieces
        got += dec.feed(stream[i : i + 3])
    assert [(f.type, f.seq, f.payload) for f in got] == [
        (0x81, 7, b"\x00hello"),
        (0x83, 8, bytes(range(200))),
    ]
    assert dec.noise > 0 and "boot banner" in dec.text.decode()


def test_corrupted_frame_is_dropped():
    frame = bytearray(P.encode(0x81, 1, b"\x00abc"))
    frame[9] ^= 0x40
    dec = P.FrameDecoder()
    assert dec.feed(bytes(frame)) == [] and dec.bad_crc == 1


class SilentLink:
    def __init__(self, reply: bytes = b""):
        self.reply = reply
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1

    def read(self, timeout: float) -> bytes:
        time.sleep(min(timeout, 0.01))
        out, self.reply = self.reply, b""
        return out

    def close(self) -> None:
        pass


def test_silent_link_times_out_after_bounded_retries():
    link = SilentLink()
    session = Session(link, timeout=0.05, retries=2)
    t0 = time.monotonic()
    with pytest.raises(DeviceError, match="no valid reply"):
        session.info()
    assert link.writes == 3 and time.monotonic() - t0 < 2


def test_garbage_only_link_times_out_and_reports_text():
    link = SilentLink(reply=b"random noise \x00\xff" * 20)
    session = Session(link, timeout=0.05, retries=0)
    with pytest.raises(DeviceError, match="unframed bytes"):
        session.info()


class ChaosLink:
    """Wraps a link and damages bytes in both directions: drop, flip, duplicate, delay."""

    def __init__(self, inner, seed: int, rate: float):
        self.inner = inner
        self.rng = np.random.default_rng(seed)
        self.rate = rate

    def _damage(self, data: bytes) -> bytes:
        out = bytearray()
        for b in data:
            r = self.rng.random()
            if r < self.rate / 3:
                continue  # dropped
            if r < 2 * self.rate / 3:
                b ^= 1 << int(self.rng.integers(8))  # corrupted
            out.append(b)
            if self.rng.random() < self.rate / 3:
                out.append(b)  # duplicated
        return bytes(out)

    def write(self, data: bytes) -> None:
        self.inner.write(self._damage(data))

    def read(self, timeout: float) -> bytes:
        if self.rng.random() < self.rate:
            time.sleep(0.01)  # delayed
        return self._damage(self.inner.read(timeout))

    def close(self) -> None:
        self.inner.close()


@pytest.fixture(scope="module")
def host_build(tmp_path_factory):
    return build(EXAMPLE, load_target("host"), tmp_path_factory.mktemp("h") / "o", log=lambda *_: None)


def _infer(link, result, x):
    session = Session(link, timeout=0.3, retries=8)
    out = result.report["outputs"][0]
    return session.infer([x], [np.dtype(out["dtype"])], [tuple(out["shape"])], invoke_timeout=2.0)


def test_damaged_link_never_yields_a_wrong_result(host_build):
    x = np.random.default_rng(0).uniform(0, 1, (1, 1, 28, 28)).astype(np.float32)
    clean_link = PipeLink([str(host_build.outdir / "harness")])
    try:
        expected = _infer(clean_link, host_build, x).outputs[0]
    finally:
        clean_link.close()
    outcomes = {"ok": 0, "error": 0}
    for seed in range(6):
        link = ChaosLink(PipeLink([str(host_build.outdir / "harness")]), seed, rate=0.002)
        try:
            got = _infer(link, host_build, x).outputs[0]
            np.testing.assert_array_equal(got, expected)  # accepted results are exact
            outcomes["ok"] += 1
        except DeviceError as exc:
            assert str(exc)  # a clear error, never a wrong answer
            outcomes["error"] += 1
        finally:
            link.close()
    assert outcomes["ok"] >= 1, outcomes


class FaultProxy:
    """A TCP proxy between the host and QEMU's UART that damages the byte stream both ways:
    drops, bit flips, duplicates and delays, each with probability `rate` per byte; counts them."""

    def __init__(self, upstream_port: int, rate: float, seed: int = 0):
        import socket
        import threading

        self.rate, self.faults = rate, 0
        self.rng = np.random.default_rng(seed)
        self.lock = threading.Lock()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.upstream = socket.create_connection(("127.0.0.1", upstream_port), timeout=10)
        self.alive = True
        self.client = None
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        import threading

        self.client, _ = self.server.accept()
        threading.Thread(target=self._pump, args=(self.client, self.upstream), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.upstream, self.client), daemon=True).start()

    def _damage(self, data: bytes) -> bytes:
        out = bytearray()
        with self.lock:
            for b in data:
                r = self.rng.random()
                if r < self.rate:
                    self.faults += 1
                    kind = int(self.rng.integers(4))
                    if kind == 0:
                        continue  # dropped
                    if kind == 1:
                        b ^= 1 << int(self.rng.integers(8))  # corrupted
                    elif kind == 2:
                        out.append(b)  # duplicated
                    else:
                        time.sleep(0.02)  # delayed
                out.append(b)
        return bytes(out)

    def _pump(self, src, dst):
        try:
            while self.alive:
                data = src.recv(4096)
                if not data:
                    break
                dst.sendall(self._damage(data))
        except OSError:
            pass

    def close(self):
        self.alive = False
        for s in (self.client, self.upstream, self.server):
            if s is not None:
                s.close()


@pytest.mark.skipif(not HAVE_ARM, reason="needs arm-none-eabi-gcc and qemu-system-arm")
def test_firmware_in_qemu_through_a_fault_injecting_proxy(tmp_path):
    """The real firmware in QEMU behind a proxy that damages >= 1000 bytes: every accepted output
    is exactly the clean one, every failure is a DeviceError, and nothing waits past its bound."""
    from edgecomp.harness.link import SerialLink
    from edgecomp.harness.qemu import QemuProcess

    result = build(EXAMPLE, load_target("cortex-m7"), tmp_path / "o", log=lambda *_: None)
    out = result.report["outputs"][0]
    rng = np.random.default_rng(0)
    xs = [rng.uniform(0, 1, (1, 1, 28, 28)).astype(np.float32) for _ in range(4)]
    outcomes = {"ok": 0, "error": 0}
    with QemuProcess(result.target, result.outdir / "firmware.elf") as qemu:
        clean_link = SerialLink(qemu.url)
        clean = Session(clean_link, timeout=2.0, on_idle=qemu.check_alive)
        expected = [clean.infer([x], [np.dtype(out["dtype"])], [tuple(out["shape"])]).outputs[0] for x in xs]
        clean_link.close()
        proxy = FaultProxy(qemu.port, rate=0.004)
        link = SerialLink(f"socket://127.0.0.1:{proxy.port}")
        try:
            i = 0
            while proxy.faults < 1000:
                assert i < 400, f"too few faults injected: {proxy.faults}"
                session = Session(link, timeout=0.06, retries=10, on_idle=qemu.check_alive)
                t0 = time.monotonic()
                try:
                    got = session.infer([xs[i % 4]], [np.dtype(out["dtype"])], [tuple(out["shape"])],
                                        invoke_timeout=0.3)  # fmt: skip
                    np.testing.assert_array_equal(got.outputs[0], expected[i % 4])  # never a wrong answer
                    outcomes["ok"] += 1
                except DeviceError as exc:
                    assert str(exc)
                    outcomes["error"] += 1
                assert time.monotonic() - t0 < 120  # bounded: per-request timeouts x retries
                i += 1
        finally:
            link.close()
            proxy.close()
    # Most runs get through despite ~30 damaged bytes each; the rest fail cleanly (timing decides which).
    assert outcomes["ok"] >= 5, (outcomes, proxy.faults)
