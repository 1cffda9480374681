"""Flash a built firmware onto a board through a debug probe: pyOCD (PyPI, the default) or
OpenOCD. Which chip and which OpenOCD scripts come from the target file's [flash] table."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from edgecomp.errors import DeviceError, ToolError, UserError
from edgecomp.targets import Target

PROBES = ("pyocd", "openocd")
FLASH_TIMEOUT_S = 300


def firmware_path(path: Path) -> Path:
    """The ELF to flash: `path` itself, or `firmware.elf` in a build folder."""
    elf = path / "firmware.elf" if path.is_dir() else path
    if not elf.is_file():
        raise UserError(
            f"no firmware at {elf}: build for the board first (edgecomp build MODEL --target BOARD)"
        )
    if elf.read_bytes()[:4] != b"\x7fELF":
        raise UserError(f"{elf} is not an ELF file")
    return elf


def model_region_image(path: Path) -> tuple[Path, int]:
    """(the model region's .bin, its flash address) of a build folder made with --model-region."""
    import json

    report = path / "report.json" if path.is_dir() else path.with_name("report.json")
    try:
        region = json.loads(report.read_text())["model_region"]
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"{path} is not a build made with --model-region (no model region in its report)") from exc
    return report.with_name(region["file"]), int(region["origin"])


def flash(path: Path, target: Target, probe: str = "pyocd", unique_id: str | None = None, log=print,
          model_only: bool = False) -> None:  # fmt: skip
    """Program `path` (ELF or build folder) into `target`'s flash and reset it; with `model_only`,
    just its model region (a model update for firmware already on the board)."""
    if target.is_host or not target.flash:
        raise UserError(
            f"target {target.name} is not a board with a flash programmer ([flash] in its target file)"
        )
    if probe not in PROBES:
        raise UserError(f"--probe must be one of {', '.join(PROBES)}, not '{probe}'")
    if model_only:
        image, base = model_region_image(path)
        log(f"writing the model region only ({image.stat().st_size:,} B at 0x{base:08X})")
    else:
        image, base = firmware_path(path), None
    if probe == "pyocd":
        _flash_pyocd(image, target, unique_id, log, base)
    else:
        _flash_openocd(image, target, log, base)


def _flash_pyocd(elf: Path, target: Target, unique_id: str | None, log, base: int | None = None) -> None:
    try:
        from pyocd.core.exceptions import Error as PyOCDError
        from pyocd.core.helpers import ConnectHelper
        from pyocd.flash.file_programmer import FileProgrammer
    except ImportError as exc:
        raise ToolError("flashing with pyOCD needs it installed: pip install 'edgecomp[board]'") from exc
    chip = target.flash.get("pyocd_target")
    if not chip:
        raise UserError(f"target file {target.source} has no flash.pyocd_target: use --probe openocd")
    probes = ConnectHelper.get_all_connected_probes(blocking=False, unique_id=unique_id)
    if not probes:
        which = f" with id {unique_id}" if unique_id else ""
        raise DeviceError(f"no debug probe{which} found: connect the board's ST-LINK/CMSIS-DAP USB port "
                          "(and check udev permissions: pyocd list)")  # fmt: skip
    if len(probes) > 1 and unique_id is None:
        ids = ", ".join(p.unique_id for p in probes)
        raise UserError(f"{len(probes)} debug probes found ({ids}): choose one with --probe-id")
    log(f"flashing {elf} to {target.part or target.name} with pyOCD ({probes[0].description})")
    try:
        with ConnectHelper.session_with_chosen_probe(unique_id=probes[0].unique_id, target_override=chip,
                                                     options={"frequency": 4_000_000}) as session:  # fmt: skip
            if base is None:
                FileProgrammer(session).program(str(elf), file_format="elf")
            else:  # a raw region at its address
                FileProgrammer(session).program(str(elf), file_format="bin", base_address=base)
            session.target.reset()
    except PyOCDError as exc:
        raise DeviceError(f"pyOCD could not flash the board: {exc}") from exc


def _flash_openocd(elf: Path, target: Target, log, base: int | None = None) -> None:
    exe = shutil.which("openocd")
    if exe is None:
        raise ToolError("openocd is not installed (apt install openocd), or use --probe pyocd")
    scripts = target.flash.get("openocd_scripts")
    if not scripts:
        raise UserError(f"target file {target.source} has no flash.openocd_scripts: use --probe pyocd")
    where = "" if base is None else f" 0x{base:08X}"
    cmd = [exe, *(a for s in scripts for a in ("-f", s)), "-c", f"program {elf.as_posix()}{where} verify reset exit"]
    log(f"flashing {elf} to {target.part or target.name} with OpenOCD")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=FLASH_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise DeviceError(f"openocd did not finish within {FLASH_TIMEOUT_S} s") from exc
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if "Error" in ln] or proc.stderr.splitlines()[-3:]
        hint = (
            " (is the board connected?)" if "open failed" in proc.stderr or "No device" in proc.stderr else ""
        )
        raise DeviceError(f"openocd failed{hint}: {' | '.join(lines)[:400]}")
