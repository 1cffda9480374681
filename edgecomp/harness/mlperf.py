"""A client of the MLPerf Tiny device-under-test protocol, as the benchmark's runner speaks it in
direct-connection mode (mlcommons/tiny benchmark/runner: device_under_test.DUT over
serial_device.SerialDevice); written from that code's behaviour, not copied from it.

The runner writes a command followed by '%' and collects every line the device sends (split on
'\\n', with '\\r' and NUL dropped) up to one that contains "m-ready". `db` data goes 31 bytes
(62 hex digits) a command; `infer N W` answers its warm-up and run markers, two `m-lap-us-`
timestamps around the N runs, and the results line `m-results-[...]`, which the runner parses as
comma-separated floats. The firmware side is firmware/common/ec_mlperf.c.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from edgecomp.errors import DeviceError
from edgecomp.harness.link import Link

END_OF_RESPONSE = "m-ready"
DELIMITER = "%"
DB_BYTES_PER_COMMAND = 31  # the runner's, connected directly (26 through its interface board)

_NAME = re.compile(r"^m-(name)-dut-\[([^]]+)]$")
_PROFILE = re.compile(r"^m-(model|profile)-\[([^]]+)]$")
_RESULTS = re.compile(r"^m-results-\[([^]]+)\]$")
_LAP = re.compile(r"^m-lap-us-([0-9]+)$")


@dataclass(frozen=True)
class InferResult:
    """What the runner takes from an `infer N W` answer (script.py _gather_infer_results)."""

    results: list[float]
    start_us: int
    end_us: int
    lines: list[str]

    @property
    def elapsed_us(self) -> int:
        return self.end_us - self.start_us


def parse_results(lines: list[str]) -> list[float]:
    """The numbers of the (last) m-results-[...] line, as the runner reads them."""
    found = None
    for line in lines:
        m = _RESULTS.match(line)
        if m:
            found = [float(x) for x in m.group(1).split(",") if x.strip()]
    if found is None:
        raise DeviceError(f"no m-results line in the device's answer: {lines[-5:]}")
    return found


class MlperfDut:
    """The runner's view of a device under test, over any Link (a board's serial port, QEMU's pty
    or socket, the host build's pipes)."""

    def __init__(self, link: Link, timeout: float = 10.0) -> None:
        self.link = link
        self.timeout = timeout
        self._buffer = ""

    def read_line(self, timeout: float) -> str | None:
        """One line without its '\\r' and NULs, or None after `timeout` seconds without one."""
        deadline = time.monotonic() + timeout
        while "\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self._buffer += self.link.read(min(left, 0.2)).decode("ascii", errors="replace")
        line, self._buffer = self._buffer.split("\n", 1)
        return line.replace("\r", "").replace("\0", "")

    def command(self, text: str, timeout: float | None = None) -> list[str]:
        """Send `text%` and return the non-empty lines of the answer, m-ready included."""
        self.link.write((text + DELIMITER).encode("ascii"))
        lines: list[str] = []
        while True:
            line = self.read_line(self.timeout if timeout is None else timeout)
            if line is None:
                raise DeviceError(f"no m-ready after command {text!r} (got {lines[-5:]})")
            if line:
                lines.append(line)
            if END_OF_RESPONSE in line:
                return lines

    def sync(self, timeout: float = 10.0, quiet: float = 0.3) -> list[str]:
        """Wait until the device listens, and drop what it said before: a lone '%' (an empty
        command, as the runner's reset_port sends) is answered with m-ready once the firmware
        runs; lines are read until one has come and then nothing for `quiet` seconds (the boot
        banner's m-ready may come first)."""
        deadline = time.monotonic() + timeout
        lines: list[str] = []
        self.link.write(DELIMITER.encode("ascii"))
        while True:
            line = self.read_line(quiet if any(END_OF_RESPONSE in ln for ln in lines) else 0.5)
            if line is None:
                if any(END_OF_RESPONSE in ln for ln in lines):
                    return lines + self._drain_stale(deadline)
                if time.monotonic() > deadline:
                    raise DeviceError(f"the device did not answer m-ready within {timeout:g} s (got {lines[-5:]})")
                self.link.write(DELIMITER.encode("ascii"))
            elif line:
                lines.append(line)

    def _drain_stale(self, deadline: float) -> list[str]:
        """Read past the answers still due to the '%'s sent while the firmware booted (a slow
        boot answers them after `quiet`): a `name` round trip, answered in order, ends them."""
        lines: list[str] = []
        self.link.write(("name" + DELIMITER).encode("ascii"))
        named = False
        while True:
            line = self.read_line(max(deadline - time.monotonic(), self.timeout))
            if line is None:
                raise DeviceError(f"the device did not answer `name` after m-ready (got {lines[-5:]})")
            if line:
                lines.append(line)
            named = named or _NAME.match(line) is not None
            if named and END_OF_RESPONSE in line:
                return lines

    def name(self) -> str:
        for line in self.command("name"):
            m = _NAME.match(line)
            if m:
                return m.group(2)
        raise DeviceError("the device did not answer `name` with m-name-dut-[...]")

    def profile(self) -> dict[str, str]:
        """{"profile": ..., "model": ...}: the runner chooses its test script by "model"."""
        found = {m.group(1): m.group(2) for line in self.command("profile") if (m := _PROFILE.match(line))}
        if "model" not in found:
            raise DeviceError("the device did not answer `profile` with m-model-[...]")
        return found

    def timestamp(self) -> int:
        for line in self.command("timestamp"):
            m = _LAP.match(line)
            if m:
                return int(m.group(1))
        raise DeviceError("the device did not answer `timestamp` with m-lap-us-N")

    def load(self, data: bytes) -> list[str]:
        """`db load N`, then the bytes in hex, 31 a command; the last answer (m-load-done)."""
        self._check(self.command(f"db load {len(data)}"))
        answer: list[str] = []
        for i in range(0, len(data), DB_BYTES_PER_COMMAND):
            answer = self._check(self.command("db " + data[i : i + DB_BYTES_PER_COMMAND].hex()))
        if not any("m-load-done" in line for line in answer):
            raise DeviceError(f"the device did not confirm the load: {answer}")
        return answer

    def infer(self, number: int, warmups: int, timeout: float = 600.0) -> InferResult:
        """`infer N W` (the runner always sends W): results and the two timestamps around the N runs."""
        lines = self._check(self.command(f"infer {number} {warmups}", timeout=timeout))
        laps = [int(m.group(1)) for line in lines if (m := _LAP.match(line))]
        if len(laps) != 2:
            raise DeviceError(f"`infer` answered {len(laps)} timestamps, not 2: {lines}")
        return InferResult(parse_results(lines), laps[0], laps[1], lines)

    def results(self) -> list[float]:
        return parse_results(self._check(self.command("results")))

    @staticmethod
    def _check(lines: list[str]) -> list[str]:
        errors = [line for line in lines if line.startswith("e-")]
        if errors:
            raise DeviceError(f"the device answered an error: {errors[0]}")
        return lines
