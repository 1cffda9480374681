"""Compile a generated project with make and the target's compiler; read sizes from the ELF."""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from elftools.elf.constants import SH_FLAGS
from elftools.elf.elffile import ELFFile

from edgecomp.errors import DoesNotFitError, ToolError
from edgecomp.targets import Target

MAKE_TIMEOUT_S = 900


@dataclass(frozen=True)
class ElfSizes:
    """Section sizes of a firmware ELF, grouped the way embedded tools report them."""

    text: int  # code + read-only data (.text incl. .rodata and vectors) + .ARM.exidx
    data: int  # initialised RAM data (also stored in flash)
    bss: int  # zero-initialised RAM, incl. the arena
    stack: int  # reserved stack
    symbols: dict[str, int]
    external_flash: int = 0  # .ext_rodata: weights in the board's external (QSPI) flash
    external_ram: int = 0  # .ext_bss: the arena in the board's external RAM (SDRAM)

    @property
    def flash_bytes(self) -> int:
        return self.text + self.data

    @property
    def ram_bytes(self) -> int:
        """Static RAM: .data + .bss (the stack reservation is reported apart)."""
        return self.data + self.bss


def compiler_for(target: Target) -> str:
    return target.cc


@functools.lru_cache(maxsize=4)
def compiler_version(compiler: str) -> str:
    """First line of `compiler --version` (recorded with every result), or "" if it will not say."""
    try:
        proc = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return proc.stdout.splitlines()[0].strip() if proc.stdout else ""


def check_toolchain(target: Target) -> None:
    """Raise ToolError naming the package to install if the compiler or make is missing."""
    default = "gcc make" if target.is_host else "gcc-arm-none-eabi libnewlib-arm-none-eabi"
    for tool, package in (
        (compiler_for(target), target.toolchain.get("package", default)),
        ("make", "make"),
    ):
        if shutil.which(tool) is None:
            raise ToolError(f"'{tool}' not found: install it (Debian/Ubuntu: apt-get install {package})")


def run_make(project: Path, target: Target, extra_cflags: str = "", make_args: tuple[str, ...] = ()) -> Path:
    """Build the project in `project`; return the executable (host) or firmware.elf (MCU)."""
    check_toolchain(target)
    cmd = ["make", "-C", str(project), "-j2", f"EXTRA_CFLAGS={extra_cflags}", *make_args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=MAKE_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise ToolError(f"compiling {project} took longer than {MAKE_TIMEOUT_S} s") from exc
    if proc.returncode != 0:
        # The linker refuses what overflows a memory region of the target's map: say so, by how much.
        overflows = re.findall(r"region [`'](\w+)' overflowed by (\d+) bytes", proc.stderr)
        if overflows:
            what = "; ".join(f"{region} by {int(n):,} B" for region, n in overflows)
            raise DoesNotFitError(
                f"the model does not fit {target.name} ({target.part or target.description}): its memory map "
                f"overflows: {what}. Quantize or prune it, pick a bigger target, or one with external memory"
            )
        errors = [
            ln
            for ln in proc.stderr.splitlines()
            if "error:" in ln or "warning:" in ln or "undefined reference" in ln
        ]
        detail = "\n".join(errors[:10]) or proc.stderr[-2000:]
        raise ToolError(f"compiling the generated code failed ({compiler_for(target)}):\n{detail}")
    return project / ("harness" if target.is_process else "firmware.elf")


def compiler_warnings(project: Path, target: Target) -> list[str]:
    """Rebuild from scratch and return the compiler's warning lines (tests want none)."""
    subprocess.run(["make", "-C", str(project), "clean"], capture_output=True, check=False)
    check_toolchain(target)
    proc = subprocess.run(["make", "-C", str(project), "-j2"], capture_output=True, text=True, check=False)
    return [ln for ln in proc.stderr.splitlines() if "warning" in ln]


def section_bytes(elf_path: Path, name: str) -> tuple[int, bytes] | None:
    """(address, contents) of section `name` of an ELF, or None if it has none."""
    with elf_path.open("rb") as f:
        sec = ELFFile(f).get_section_by_name(name)
        return None if sec is None else (sec["sh_addr"], sec.data())


def code_digest(path: Path) -> str:
    """SHA-256 (hex) of a linked program's executable sections, in address order: what identifies
    the code the weights were compiled for."""
    import hashlib

    h = hashlib.sha256()
    with path.open("rb") as f:
        elf = ELFFile(f)
        sections = [s for s in elf.iter_sections() if s["sh_flags"] & SH_FLAGS.SHF_EXECINSTR and s["sh_size"]]
        for sec in sorted(sections, key=lambda s: s["sh_addr"]):
            h.update(sec.data())
    return h.hexdigest()


def elf_sizes(path: Path) -> ElfSizes:
    """Flash/RAM figures of an ELF from its allocated sections (pyelftools)."""
    text = data = bss = stack = ext_flash = ext_ram = 0
    symbols: dict[str, int] = {}
    with path.open("rb") as f:
        elf = ELFFile(f)
        for sec in elf.iter_sections():
            flags = sec["sh_flags"]
            if not flags & SH_FLAGS.SHF_ALLOC or sec["sh_size"] == 0:
                continue
            size = sec["sh_size"]
            if sec.name == ".ext_rodata":
                ext_flash += size
            elif sec.name == ".ext_bss":
                ext_ram += size
            elif sec.name == ".stack":
                stack += size
            elif sec["sh_type"] == "SHT_NOBITS":
                bss += size
            elif flags & SH_FLAGS.SHF_WRITE:
                data += size
            else:
                text += size
        symtab = elf.get_section_by_name(".symtab")
        if symtab is not None:
            for sym in symtab.iter_symbols():
                if sym.name.startswith("ec_") and sym["st_info"]["type"] == "STT_OBJECT":
                    symbols[sym.name] = sym["st_size"]
    return ElfSizes(text=text, data=data, bss=bss, stack=stack, symbols=symbols, external_flash=ext_flash,
                    external_ram=ext_ram)  # fmt: skip


BOOT2_BYTES = 256  # RP2040: the boot ROM loads 256 bytes, the last four a CRC32 of the rest


def crc32_mpeg2(data: bytes) -> int:
    """CRC-32/MPEG-2 (polynomial 0x04C11DB7, init 0xFFFFFFFF, not reflected, no final XOR): the
    checksum the RP2040 boot ROM expects after its second-stage loader."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) & 0xFFFFFFFF if crc & 0x80000000 else (crc << 1) & 0xFFFFFFFF
    return crc


def boot2_image(target: Target) -> bytes | None:
    """The target's second-stage boot loader ([boot2] source, assembled with its compiler), padded
    to 252 bytes with its CRC32 appended; None for targets without one."""
    source = target.boot2.get("source")
    if not source:
        return None
    from edgecomp.resources import data_dir

    src = data_dir("firmware") / source
    with tempfile.TemporaryDirectory() as work:
        obj, binary = Path(work) / "boot2.o", Path(work) / "boot2.bin"
        for cmd in ([compiler_for(target), *target.arch_flags, "-c", "-o", str(obj), str(src)],
                    ["arm-none-eabi-objcopy", "-O", "binary", str(obj), str(binary)]):  # fmt: skip
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
            if proc.returncode != 0:
                raise ToolError(
                    f"assembling the boot loader {src.name} failed:\n{proc.stderr.strip()[-2000:]}"
                )
        code = binary.read_bytes()
    if len(code) > BOOT2_BYTES - 4:
        raise ToolError(f"boot loader {src.name} is {len(code)} bytes, more than {BOOT2_BYTES - 4}")
    code = code.ljust(BOOT2_BYTES - 4, b"\0")
    return code + crc32_mpeg2(code).to_bytes(4, "little")
