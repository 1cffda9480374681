"""Byte transports under the protocol: pyserial (a port or socket://) and a subprocess's pipes."""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import time
from typing import Protocol

import serial

from edgecomp.errors import DeviceError


class Link(Protocol):
    def write(self, data: bytes) -> None: ...
    def read(self, timeout: float) -> bytes: ...
    def close(self) -> None: ...


class SerialLink:
    """pyserial: a real port (/dev/ttyACM0) or QEMU's UART over TCP (socket://host:port)."""

    def __init__(self, url: str, baud: int = 115200, connect_timeout: float = 10.0) -> None:
        deadline = time.monotonic() + connect_timeout
        while True:
            try:
                self._port = serial.serial_for_url(url, baudrate=baud, timeout=0.05)
                break
            except (serial.SerialException, OSError) as exc:
                if time.monotonic() > deadline:
                    raise DeviceError(f"cannot open {url}: {exc}") from exc
                time.sleep(0.05)
        sock = getattr(self._port, "_socket", None)
        if sock is not None:  # pyserial's socket:// leaves Nagle on: ~40 ms per exchange
            import socket

            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def write(self, data: bytes) -> None:
        try:
            self._port.write(data)
            self._port.flush()
        except (serial.SerialException, OSError) as exc:
            raise DeviceError(f"serial write failed: {exc}") from exc

    def read(self, timeout: float) -> bytes:
        self._port.timeout = max(timeout, 0.001)
        try:
            return self._port.read(max(1, self._port.in_waiting))
        except (serial.SerialException, OSError) as exc:
            raise DeviceError(f"serial read failed: {exc}") from exc

    def close(self) -> None:
        self._port.close()


class PipeLink:
    """The host build's harness: the protocol on its stdin/stdout."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )

    def write(self, data: bytes) -> None:
        try:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise DeviceError(f"host harness closed its input: {self._stderr()}") from exc

    def read(self, timeout: float) -> bytes:
        fd = self.proc.stdout.fileno()
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            return b""
        data = os.read(fd, 65536)
        if not data:
            self.proc.wait(timeout=5)
            raise DeviceError(f"host harness exited with code {self.proc.returncode}: {self._stderr()}")
        return data

    def _stderr(self) -> str:
        try:
            if self.proc.poll() is None:
                return ""
            return self.proc.stderr.read().decode(errors="replace").strip()[-1500:]
        except (OSError, ValueError):
            return ""

    def close(self) -> None:
        for stream in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                stream.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stderr.close()
