"""Authenticity: firmware images signed in MCUboot's format with its own tool, imgtool (PyPI), so an
MCUboot bootloader verifies them before they run. `edgecomp keygen` makes a key pair; `build --sign
KEY` writes firmware.signed.bin beside firmware.elf.

The image is the linked firmware as a flat binary with MCUboot's header in front (`--pad-header`)
and its TLVs (SHA-256, signature) after. For MCUboot to boot it, the firmware must be linked for the
slot it runs from: a board file for an MCUboot layout sets memory.flash_origin to the slot's
address plus the header size, and [mcuboot] header_size / slot_size to the layout's values.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from edgecomp.errors import ToolError, UserError
from edgecomp.targets import Target

KEY_TYPES = ("ecdsa-p256", "ed25519", "rsa-2048", "rsa-3072")
HEADER_SIZE = 0x200  # MCUboot's usual image header reservation


def _imgtool(*args: str) -> subprocess.CompletedProcess:
    """Run imgtool (its click entry point, from this interpreter)."""
    code = "import sys; from imgtool.main import imgtool; sys.exit(imgtool())"
    try:
        import imgtool  # noqa: F401
    except ImportError as exc:
        raise ToolError("signing needs imgtool: pip install 'edgecomp[sign]'") from exc
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)


def keygen(key: Path, kind: str = "ecdsa-p256") -> Path:
    """A new private key at `key` (PEM) and its public key beside it (KEY.pub.pem); returns the latter."""
    if kind not in KEY_TYPES:
        raise UserError(f"--type must be one of {', '.join(KEY_TYPES)}, not '{kind}'")
    key.parent.mkdir(parents=True, exist_ok=True)
    proc = _imgtool("keygen", "-k", str(key), "-t", kind)
    if proc.returncode != 0:
        raise ToolError(f"imgtool keygen failed: {(proc.stderr or proc.stdout).strip()[-300:]}")
    pub = key.with_suffix(".pub.pem")
    proc = _imgtool("getpub", "-k", str(key), "--encoding", "pem")
    if proc.returncode != 0:
        raise ToolError(f"imgtool getpub failed: {(proc.stderr or proc.stdout).strip()[-300:]}")
    pub.write_text(proc.stdout)
    return pub


def sign_image(elf: Path, target: Target, key: Path, version: str = "0.0.0", out: Path | None = None) -> dict:
    """firmware.signed.bin from `elf`: objcopy to a flat binary, then imgtool sign. Returns what the
    report records (image, version, header and slot sizes)."""
    if not key.is_file():
        raise UserError(f"signing key not found: {key} (make one with: edgecomp keygen -o {key})")
    if target.is_process:
        raise UserError(f"--sign signs firmware images; {target.name} builds an executable")
    mcuboot = target.mcuboot
    header = int(mcuboot.get("header_size", HEADER_SIZE))
    slot = int(mcuboot.get("slot_size", target.flash_budget or target.memory.get("flash_length", 0)))
    objcopy = (target.toolchain.get("cc") or "arm-none-eabi-gcc").replace("gcc", "objcopy")
    raw = elf.with_suffix(".bin")
    proc = subprocess.run([objcopy, "-O", "binary", str(elf), str(raw)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise ToolError(f"{objcopy} failed: {proc.stderr.strip()[-300:]}")
    out = out or elf.with_name("firmware.signed.bin")
    proc = _imgtool("sign", "--key", str(key), "--header-size", hex(header), "--pad-header", "--align", "8",
                    "--version", version, "--slot-size", hex(slot), str(raw), str(out))  # fmt: skip
    if proc.returncode != 0:
        raise UserError(f"imgtool could not sign the image: {(proc.stderr or proc.stdout).strip()[-300:]}")
    return {"image": out.name, "version": version, "header_size": header, "slot_size": slot, "key": str(key)}


def verify_image(image: Path, key: Path) -> tuple[bool, str]:
    """imgtool verify: (passes, its message)."""
    proc = _imgtool("verify", "-k", str(key), str(image))
    return proc.returncode == 0, (proc.stdout + proc.stderr).strip()
