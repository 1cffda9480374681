"""Frames of the harness protocol (docs/protocol.md; the C side is firmware/common/ec_proto.c).

Frame: 0xEC 0xA5 | type u8 | seq u8 | len u16 LE | payload | crc32 LE over type..payload.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

SYNC = b"\xec\xa5"
HEADER = struct.Struct("<BBH")

CMD_INFO = 0x01
CMD_WRITE_INPUT = 0x02
CMD_INVOKE = 0x03
CMD_READ_OUTPUT = 0x04
CMD_EXIT = 0x05
CMD_STEP_TICKS = 0x06
CMD_VERIFY = 0x07
CMD_STEP = 0x08
CMD_READ_ARENA = 0x09
RESP = 0x80
NAK = 0xFD
FAULT = 0xFE

STATUS_TEXT = {0: "ok", 1: "unknown command", 2: "bad arguments", 3: "model_run failed",
               4: "weights integrity check failed"}  # fmt: skip
MAX_FRAME_PAYLOAD = 4096  # anything longer is noise, whatever the target's own limit


@dataclass(frozen=True)
class Frame:
    type: int
    seq: int
    payload: bytes


def encode(type_: int, seq: int, payload: bytes = b"") -> bytes:
    head = HEADER.pack(type_, seq & 0xFF, len(payload))
    return SYNC + head + payload + struct.pack("<I", zlib.crc32(head + payload))


class FrameDecoder:
    """Incremental decoder: feed bytes, get good frames; noise and bad CRCs are skipped.

    `noise` counts bytes that were not part of a good frame (banners, garbage), `bad_crc` the
    frames dropped for a CRC mismatch.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self.noise = 0
        self.bad_crc = 0
        self.text = bytearray()  # printable noise, e.g. the boot banner, for diagnostics

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        frames: list[Frame] = []
        while True:
            start = self._buf.find(SYNC)
            if start < 0:
                keep = 1 if self._buf.endswith(SYNC[:1]) else 0
                self._drop(len(self._buf) - keep)
                return frames
            self._drop(start)
            if len(self._buf) < 2 + HEADER.size:
                return frames
            type_, seq, length = HEADER.unpack_from(self._buf, 2)
            if length > MAX_FRAME_PAYLOAD:
                self._drop(1)
                continue
            total = 2 + HEADER.size + length + 4
            if len(self._buf) < total:
                return frames
            body = bytes(self._buf[2 : 2 + HEADER.size + length])
            (crc,) = struct.unpack_from("<I", self._buf, total - 4)
            if zlib.crc32(body) != crc:
                self.bad_crc += 1
                self._drop(1)  # resynchronise from the next byte
                continue
            frames.append(Frame(type_, seq, body[HEADER.size :]))
            del self._buf[:total]

    def _drop(self, n: int) -> None:
        if n <= 0:
            return
        dropped = self._buf[:n]
        self.noise += n
        self.text += bytes(b for b in dropped if 32 <= b < 127 or b in (10, 13))
        del self.text[:-512]
        del self._buf[:n]
