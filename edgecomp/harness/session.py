"""The host side of the harness: requests with timeouts, retries and resync; fault reports."""

from __future__ import annotations

import contextlib
import shutil
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgecomp.errors import DeviceError, ToolError
from edgecomp.harness import protocol as P
from edgecomp.harness.link import Link, PipeLink, SerialLink
from edgecomp.harness.qemu import QemuProcess, QemuStopped
from edgecomp.targets import Target

TIMER_KINDS = {0: "none", 1: "systick", 2: "dwt"}
FAULT_NAMES = {3: "HardFault", 4: "MemManage", 5: "BusFault", 6: "UsageFault", 7: "SecureFault"}
FAULT_REGS = ("r0", "r1", "r2", "r3", "r12", "lr", "pc", "xpsr", "cfsr", "hfsr", "mmfar", "bfar")


@dataclass(frozen=True)
class DeviceInfo:
    version: int
    timer: str
    max_payload: int
    clock_hz: int
    arena_bytes: int
    stack_size: int
    steps: int
    per_layer: bool  # the firmware records each step's ticks
    input_bytes: tuple[int, ...]
    output_bytes: tuple[int, ...]
    integrity: bool = False  # the firmware checks its weights (at boot and on VERIFY)
    integrity_failed: bool = False  # ...and that check failed: it refuses to infer


@dataclass(frozen=True)
class IntegrityCheck:
    ok: bool
    ticks: int  # timer ticks the check took on the device
    expected: str  # SHA-256 of the weights as built (hex)
    computed: str  # as the device read them from flash
    reason: int = 0  # 1 weights changed, 2 no valid model region, 3 a model region built for other code

@dataclass(frozen=True)
class InferenceResult:
    outputs: list[np.ndarray]
    ticks: int
    stack_bytes: int | None
    timer: str
    clock_hz: int
    step_ticks: tuple[int, ...] = ()  # per call-sequence step, when built with --per-layer

    @property
    def instructions(self) -> int | None:
        """Guest instructions, valid under qemu -icount shift=0 (1 instruction per ns)."""
        return self.ticks_to_instructions(self.ticks)

    def ticks_to_instructions(self, ticks: int) -> int | None:
        if self.timer != "systick" or not self.clock_hz:
            return None
        return round(ticks * 1_000_000_000 / self.clock_hz)


class Session:
    """Requests over a Link. Every request has a timeout and bounded retries; nothing waits forever."""

    def __init__(self, link: Link, timeout: float = 5.0, retries: int = 3, on_idle=None) -> None:
        self.link = link
        self.timeout = timeout
        self.retries = retries
        self.decoder = P.FrameDecoder()
        self._seq = 0
        self._on_idle = on_idle or (lambda: None)
        self._info: DeviceInfo | None = None

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFF
        return self._seq

    def request(self, cmd: int, payload: bytes = b"", timeout: float | None = None) -> bytes:
        """Send a command and return the reply's payload after its status byte."""
        seq = self._next_seq()
        frame = P.encode(cmd, seq, payload)
        timeout = self.timeout if timeout is None else timeout
        for _attempt in range(self.retries + 1):
            self.link.write(frame)
            reply = self._await(seq, cmd, time.monotonic() + timeout)
            if reply is None:
                continue  # timeout or NAK: resend the same frame (same seq)
            status = reply[0] if reply else 2
            if status != 0:
                raise DeviceError(
                    f"device answered command 0x{cmd:02x} with '{P.STATUS_TEXT.get(status, status)}'"
                )
            return reply[1:]
        noise = f"; it sent {self.decoder.noise} unframed bytes" if self.decoder.noise else ""
        text = bytes(self.decoder.text).decode(errors="replace").strip()
        raise DeviceError(
            f"no valid reply to command 0x{cmd:02x} after {self.retries + 1} tries of {timeout:g} s{noise}"
            + (f" (last text: {text[-200:]!r})" if text else "")
        )

    def _await(self, seq: int, cmd: int, deadline: float) -> bytes | None:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            data = self.link.read(min(left, 0.2))
            if not data:
                self._on_idle()  # e.g. QEMU died: checked only once everything it sent is read
            for frame in self.decoder.feed(data):
                if frame.type == P.FAULT:
                    raise DeviceError(_describe_fault(frame.payload))
                if frame.seq != seq:
                    continue  # a stale or duplicated reply
                if frame.type == P.NAK:
                    return None
                if frame.type == cmd | P.RESP:
                    return frame.payload

    def info(self) -> DeviceInfo:
        if self._info is None:
            p = self.request(P.CMD_INFO)
            if len(p) < 23:
                raise DeviceError("device INFO reply is too short: is this an edgecomp harness?")
            version, n_in, n_out, timer, flags, max_payload, clock, arena, stack, steps = struct.unpack_from(
                "<BBBBBHIIII", p
            )
            sizes = struct.unpack_from(f"<{n_in + n_out}I", p, 23)
            self._info = DeviceInfo(
                version, TIMER_KINDS.get(timer, str(timer)), max_payload, clock, arena, stack, steps,
                bool(flags & 1), tuple(sizes[:n_in]), tuple(sizes[n_in:]), bool(flags & 2), bool(flags & 4),
            )  # fmt: skip
        return self._info

    def verify(self) -> IntegrityCheck:
        """Have the firmware check its weights again (SHA-256 over flash) and report."""
        p = self.request(P.CMD_VERIFY, timeout=max(self.timeout, 60.0))
        if len(p) < 73:
            raise DeviceError("device VERIFY reply is too short")
        ok, lo, hi = struct.unpack_from("<BII", p)
        return IntegrityCheck(bool(ok), lo | hi << 32, p[9:41].hex(), p[41:73].hex(), p[73] if len(p) > 73 else 1)

    def _refuse_corrupt_weights(self) -> None:
        if not self.info().integrity_failed:
            return
        check = self.verify()
        if check.reason == 2:
            raise DeviceError("the model region holds no valid model (bad magic or format): flash one "
                              "(edgecomp flash BUILD --model-only); no inference was run")  # fmt: skip
        if check.reason == 3:
            raise DeviceError("the model region was built for other code (its code id is not this firmware's): "
                              "flash the model built with this firmware; no inference was run")  # fmt: skip
        raise DeviceError(
            f"weights integrity check failed (expected {check.expected}, got {check.computed}): the "
            "weights in the device's flash are not the ones built; no inference was run"
        )

    def infer(self, inputs: list[np.ndarray], output_dtypes: list[np.dtype], output_shapes: list[tuple],
              invoke_timeout: float = 120.0) -> InferenceResult:  # fmt: skip
        """Send the inputs, run one inference, read back the outputs and the device's figures."""
        info = self.info()
        self.write_inputs(inputs)
        reply = self.request(P.CMD_INVOKE, timeout=invoke_timeout)
        rc, ticks, stack = struct.unpack_from("<iQI", reply)
        if rc != 0:
            raise DeviceError(f"model_run failed at kernel {-rc} (returned {rc})")
        outputs = []
        chunk = info.max_payload - 1
        for i, (dtype, shape) in enumerate(zip(output_dtypes, output_shapes, strict=True)):
            size = info.output_bytes[i]
            buf = bytearray()
            for off in range(0, size, chunk):
                n = min(chunk, size - off)
                part = self.request(P.CMD_READ_OUTPUT, struct.pack("<BIH", i, off, n))
                if len(part) != n:
                    raise DeviceError(f"device sent {len(part)} bytes of output {i}, expected {n}")
                buf += part
            outputs.append(np.frombuffer(bytes(buf), dtype=dtype).reshape(shape).copy())
        return InferenceResult(outputs, ticks, None if stack == 0xFFFFFFFF else stack, info.timer, info.clock_hz,
                               self.step_ticks() if info.per_layer else ())  # fmt: skip

    def write_inputs(self, inputs: list[np.ndarray]) -> None:
        """Write the inputs where the model reads them (refused while the weights check fails)."""
        info = self.info()
        self._refuse_corrupt_weights()
        if len(inputs) != len(info.input_bytes):
            raise DeviceError(f"device expects {len(info.input_bytes)} inputs, got {len(inputs)}")
        chunk = info.max_payload - 8
        for i, arr in enumerate(inputs):
            data = np.ascontiguousarray(arr).tobytes()
            if len(data) != info.input_bytes[i]:
                raise DeviceError(
                    f"input {i} is {len(data)} bytes; the firmware on the device expects {info.input_bytes[i]} "
                    "(is it running a different model?)"
                )
            for off in range(0, len(data), chunk):
                self.request(P.CMD_WRITE_INPUT, struct.pack("<BI", i, off) + data[off : off + chunk])

    def step(self, index: int, timeout: float = 120.0) -> int:
        """Run step `index` of the model alone (after the inputs and the steps before it); its ticks."""
        reply = self.request(P.CMD_STEP, struct.pack("<H", index), timeout=timeout)
        rc, ticks, _ = struct.unpack_from("<iQI", reply)
        if rc != 0:
            raise DeviceError(f"step {index} of the model failed (returned {rc})")
        return ticks

    def read_arena(self, offset: int, size: int) -> bytes:
        """`size` bytes of the model's arena from `offset` (where the memory plan put a tensor)."""
        chunk = self.info().max_payload - 1
        buf = bytearray()
        for off in range(offset, offset + size, chunk):
            n = min(chunk, offset + size - off)
            part = self.request(P.CMD_READ_ARENA, struct.pack("<IH", off, n))
            if len(part) != n:
                raise DeviceError(f"device sent {len(part)} bytes of its arena at {off}, expected {n}")
            buf += part
        return bytes(buf)

    def step_ticks(self) -> tuple[int, ...]:
        """Timer ticks of each step of the last inference (firmware built with --per-layer)."""
        info = self.info()
        ticks: list[int] = []
        while len(ticks) < info.steps:
            part = self.request(P.CMD_STEP_TICKS, struct.pack("<H", len(ticks)))
            if not part or len(part) % 4:
                raise DeviceError(f"device sent a malformed per-step tick list ({len(part)} bytes)")
            ticks += struct.unpack(f"<{len(part) // 4}I", part)
        return tuple(ticks[: info.steps])

    def exit(self, code: int = 0) -> None:
        with contextlib.suppress(DeviceError):
            self.request(P.CMD_EXIT, bytes([code]), timeout=1.0)


@contextlib.contextmanager
def open_session(target: Target, build_dir: Path, port: str | None = None, baud: int = 115200,
                 timeout: float = 5.0) -> Iterator[Session]:  # fmt: skip
    """A Session to the build in `build_dir`: the host executable, QEMU, or a board on `port`."""
    if target.is_process:
        command = target.process_command(build_dir / "harness")
        if shutil.which(command[0]) is None:  # the emulator of a cross-built target
            package = target.toolchain.get("package", command[0])
            raise ToolError(
                f"'{command[0]}' not found: install it (Debian/Ubuntu: apt-get install {package})"
            )
        link = PipeLink(command)
        try:
            yield Session(link, timeout=timeout)
        finally:
            link.close()
        return
    if port:
        link = SerialLink(port, baud)
        try:
            yield Session(link, timeout=timeout)
        finally:
            link.close()
        return
    with QemuProcess(target, build_dir / "firmware.elf") as qemu:
        try:
            link = SerialLink(qemu.url)
            try:
                session = Session(link, timeout=timeout, on_idle=qemu.check_alive)
                yield session
                session.exit(0)
            finally:
                link.close()
        except QemuStopped:
            raise
        except DeviceError:
            # A QEMU that exits (a missing ROM, a bad machine option) first shows as a refused or
            # reset connection; its own message says why.
            if qemu.exited():
                qemu.check_alive()  # raises QemuStopped with QEMU's stderr
            raise


def _describe_fault(payload: bytes) -> str:
    if len(payload) < 52:
        return "the firmware reported a fault (truncated report)"
    kind, *regs = struct.unpack_from("<13I", payload)
    values = dict(zip(FAULT_REGS, regs, strict=True))
    if kind & 0x100:  # AArch64 (firmware/aarch64): exception class, ESR/FAR in the CFSR/MMFAR/BFAR slots
        far = values["mmfar"] | values["bfar"] << 32
        return (
            f"firmware fault: AArch64 exception class 0x{kind & 0x3F:02x} at pc=0x{values['pc']:08x} "
            f"(esr=0x{values['cfsr']:08x}, far=0x{far:x}, lr=0x{values['lr']:08x})"
        )
    name = FAULT_NAMES.get(kind, f"exception {kind}")
    return (
        f"firmware fault: {name} at pc=0x{values['pc']:08x} (lr=0x{values['lr']:08x}, "
        f"cfsr=0x{values['cfsr']:08x}, hfsr=0x{values['hfsr']:08x}, bfar=0x{values['bfar']:08x}, "
        f"mmfar=0x{values['mmfar']:08x})"
    )
