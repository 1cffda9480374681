"""Launch a firmware in qemu-system-arm (or -aarch64) with its UART on a local TCP port (or a
pseudo-terminal, for tools that want a serial device); always clean up."""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from edgecomp.errors import DeviceError, ToolError
from edgecomp.targets import Target


class QemuStopped(DeviceError):
    """QEMU itself exited (not the firmware failing inside it); the message carries QEMU's stderr."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """In QEMU's process before it starts: end it when edgecomp's process ends, however that ends
    (SIGKILL and SIGTERM leave edgecomp no chance to close it; an idle firmware would spin on)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


def qemu_command(target: Target, elf: Path, port: int | None) -> list[str]:
    """The QEMU command line: deterministic instruction counting, UART 0 on a TCP socket (or, with
    `port` None, on a pseudo-terminal QEMU creates and names on its standard output).

    `-nodefaults` keeps QEMU from adding the machine's default devices: on `virt` those include a
    virtio network card whose option ROM (efi-virtio.rom) only an apt "recommends" installs, and
    none of them is used. The board's own devices (its UARTs, timers) stay."""
    return [
        target.qemu.get("system", "qemu-system-arm"),
        "-M", target.qemu["machine"],
        "-cpu", target.qemu.get("cpu", target.core),
        "-kernel", str(elf),
        "-icount", "shift=0",  # 1 instruction = 1 ns of virtual time: exact counts via SysTick
        "-nodefaults",
        "-display", "none",
        "-monitor", "none",
        *(["-chardev", f"socket,id=s0,host=127.0.0.1,port={port},server=on,wait=on,nodelay=on",
           "-serial", "chardev:s0"] if port is not None else ["-serial", "pty"]),
        "-semihosting-config", "enable=on,target=native",
        "-no-reboot",
        *target.qemu.get("args", []),
    ]  # fmt: skip


_PTY = re.compile(rb"char device redirected to (\S+) \(label serial0\)")


class QemuProcess:
    """A running QEMU; `url` is its UART. Use as a context manager so it is always killed.

    With `pty`, the UART is a pseudo-terminal (`url` its /dev/pts path) that any serial tool can
    open, as it would a board's port; the firmware starts at once (no waiting for a client), so
    what it prints before one opens the terminal is lost."""

    def __init__(self, target: Target, elf: Path, pty: bool = False) -> None:
        system = target.qemu.get("system", "qemu-system-arm")
        if shutil.which(system) is None:
            package = "qemu-system-arm" if "arm" in system or "aarch64" in system else system
            raise ToolError(f"'{system}' not found: install it (Debian/Ubuntu: apt-get install {package})")
        if not target.has_qemu:
            raise ToolError(f"target {target.name} has no QEMU machine; run it on a board with --port")
        self.port = None if pty else _free_port()
        self.command = qemu_command(target, elf, self.port)
        self.proc = subprocess.Popen(
            self.command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            preexec_fn=_die_with_parent,
        )
        self._stderr: str | None = None
        self.url = f"socket://127.0.0.1:{self.port}" if not pty else self._pty_path()

    def _pty_path(self, timeout: float = 10.0) -> str:
        """The pseudo-terminal QEMU names on its standard output when it starts."""
        out, deadline = b"", time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while (m := _PTY.search(out)) is None:
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                if self.proc.poll() is None:
                    self.proc.kill()
                    self.proc.wait()
                status = self.exit_status()
                self.close()
                raise QemuStopped(f"QEMU did not name its pseudo-terminal ({status}); "
                                  f"command: {' '.join(self.command)}")  # fmt: skip
            if select.select([fd], [], [], min(left, 0.2))[0]:
                out += os.read(fd, 4096)
        return m.group(1).decode()

    def exit_status(self) -> str:
        code = self.proc.poll()
        if code is None:
            return "still running"
        if self._stderr is None:  # read once: it is read to its end
            text = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
            # One line; QEMU's note that it waits for our connection is not news.
            lines = [ln.strip() for ln in text.splitlines() if ln.strip() and "waiting for connection" not in ln]
            self._stderr = " | ".join(lines)
        return f"exit code {code}" + (f": {self._stderr[-800:]}" if self._stderr else "")

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise QemuStopped(f"QEMU stopped ({self.exit_status()}); command: {' '.join(self.command)}")

    def exited(self, wait: float = 1.0) -> bool:
        """Whether QEMU has exited, waiting up to `wait` s for it (a lost link often comes first)."""
        try:
            self.proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            return False
        return True

    def close(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream:
                stream.close()
        return self.proc.returncode

    def __enter__(self) -> QemuProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
