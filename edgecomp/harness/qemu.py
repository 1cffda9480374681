"""Launch a firmware in qemu-system-arm (or -aarch64) with its UART on a local TCP port; always clean up."""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

from edgecomp.errors import DeviceError, ToolError
from edgecomp.targets import Target


class QemuStopped(DeviceError):
    """QEMU itself exited (not the firmware failing inside it); the message carries QEMU's stderr."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def qemu_command(target: Target, elf: Path, port: int) -> list[str]:
    """The QEMU command line: deterministic instruction counting, UART 0 on a TCP socket.

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
        "-chardev", f"socket,id=s0,host=127.0.0.1,port={port},server=on,wait=on,nodelay=on",
        "-serial", "chardev:s0",
        "-semihosting-config", "enable=on,target=native",
        "-no-reboot",
        *target.qemu.get("args", []),
    ]  # fmt: skip


class QemuProcess:
    """A running QEMU; `url` is its UART. Use as a context manager so it is always killed."""

    def __init__(self, target: Target, elf: Path) -> None:
        system = target.qemu.get("system", "qemu-system-arm")
        if shutil.which(system) is None:
            package = "qemu-system-arm" if "arm" in system or "aarch64" in system else system
            raise ToolError(f"'{system}' not found: install it (Debian/Ubuntu: apt-get install {package})")
        if not target.has_qemu:
            raise ToolError(f"target {target.name} has no QEMU machine; run it on a board with --port")
        self.port = _free_port()
        self.command = qemu_command(target, elf, self.port)
        self.proc = subprocess.Popen(
            self.command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self.url = f"socket://127.0.0.1:{self.port}"
        self._stderr: str | None = None

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
