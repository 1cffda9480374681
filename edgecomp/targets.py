"""Targets are data: one TOML file per target in targets/ (or any path given to --target)."""

from __future__ import annotations

import platform
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from edgecomp.errors import UserError
from edgecomp.resources import data_dir

KINDS = ("mcu", "host", "linux")
UART_DRIVERS = ("cmsdk", "stm32", "stm32v2", "pl011")
TIMERS = ("systick", "dwt")
PORTS = ("cortex-m", "aarch64")
# ISA capabilities a target may declare (cpu.features); kernel variants ask for them
# (lower/kernels/). dsp: the Armv7E-M/Armv7-A DSP instructions (SMLAD, SXTB16...); neon: AArch64
# Advanced SIMD; mve: Armv8.1-M Helium; dotprod: Armv8.2 SDOT/UDOT; fpu: a hardware single-precision
# FPU, for the float micro-kernels (Cortex-M4F/M7/M33/M55, Cortex-A7; the host).
FEATURES = ("dsp", "neon", "mve", "dotprod", "fpu")


@dataclass(frozen=True)
class Target:
    """One compilation target: CPU flags, memory map and budget, UART, timer, QEMU machine."""

    name: str
    kind: str
    description: str
    core: str
    arch_flags: tuple[str, ...]
    fpu: str
    features: frozenset[str]  # ISA capabilities (FEATURES) the generated code may use
    clock_hz: int
    source: Path
    caches: bool = False  # I/D caches enabled at start-up (Cortex-M7 boards)
    init: tuple = ()  # board start-up register operations (InitOp), run before the UART is set up
    flash: dict = field(default_factory=dict)  # how to program a board: pyocd_target, openocd_scripts
    part: str = ""
    # budget.clock_hz: the core clock of the part the target stands for, when it is not the
    # emulated machine's (clock_hz: 25 MHz on QEMU's mps2 boards); 0: the same as clock_hz.
    part_clock_hz: int = 0
    flash_budget: int = 0
    ram_budget: int = 0
    memory: dict = field(default_factory=dict)
    uart: dict = field(default_factory=dict)
    timer: dict = field(default_factory=dict)
    qemu: dict = field(default_factory=dict)
    boot2: dict = field(default_factory=dict)  # second-stage boot loader (RP2040): source, origin
    # Process targets (host, linux): cc, the apt package that has it, the machine it runs on
    # natively (uname -m) and the emulator that runs it elsewhere (qemu-aarch64 user mode...).
    toolchain: dict = field(default_factory=dict)
    # Memory outside the chip the board maps (QSPI flash, SDRAM): flash_origin/length, ram_origin/length.
    # Weights that do not fit the internal flash, and an arena that does not fit the internal RAM,
    # are placed there (codegen/memory.py place_external).
    external: dict = field(default_factory=dict)
    mcuboot: dict = field(default_factory=dict)  # signed images (edgecomp/sign.py): header_size, slot_size
    model_region: dict = field(default_factory=dict)  # --model-region: origin, length (codegen/render.py)
    opt_flags: tuple[str, ...] = ("-O2",)  # cpu.opt_flags: optimisation flags for the generated C
    port: str = "cortex-m"  # firmware/<port>: the start-up and harness port of an mcu target

    @property
    def is_host(self) -> bool:
        return self.kind == "host"

    @property
    def is_process(self) -> bool:
        """Built as an executable that speaks the harness protocol on stdin/stdout (no firmware)."""
        return self.kind in ("host", "linux")

    @property
    def cc(self) -> str:
        return self.toolchain.get("cc") or ("gcc" if self.is_process else "arm-none-eabi-gcc")

    def process_command(self, binary: Path) -> list[str]:
        """How to start a process target's executable here: directly on its own machine, else
        under its emulator."""
        machine = self.toolchain.get("machine")
        if machine is None or machine == platform.machine():
            return [str(binary)]
        return [*self.toolchain.get("emulator", []), str(binary)]

    @property
    def latency_clock_hz(self) -> int:
        """The clock a latency estimate uses: the part's (budget.clock_hz), else the core's."""
        return self.part_clock_hz or self.clock_hz

    @property
    def has_qemu(self) -> bool:
        return bool(self.qemu.get("machine"))

    def as_dict(self) -> dict:
        """The fields a report records about the target."""
        return {
            "name": self.name,
            "kind": self.kind,
            "core": self.core,
            "fpu": self.fpu,
            "features": sorted(self.features),
            "clock_hz": self.clock_hz,
            "part": self.part,
            "part_clock_hz": self.part_clock_hz or None,
            "flash_budget": self.flash_budget,
            "ram_budget": self.ram_budget,
            "qemu_machine": self.qemu.get("machine"),
        }


@dataclass(frozen=True)
class InitOp:
    """One start-up register operation: code 0 write, 1 read-modify-write, 2 bounded wait, 3 delay."""

    code: int
    addr: int
    mask: int
    value: int
    comment: str


def _init_op(op: dict, index: int, path: Path) -> InitOp:
    """[[init]] entry -> InitOp. op: write (value), set / clear (bits), modify (mask, value), wait
    (mask, value: until the masked register equals value), delay (loops: a busy loop, for settling
    times such as a clock switch's)."""
    kind = op.get("op")
    if kind == "delay":
        loops = op.get("loops")
        if not isinstance(loops, int) or not 0 < loops < 1 << 24:
            raise UserError(f"target file {path}: init[{index}] (delay) needs loops, an integer in [1, 2^24)")
        return InitOp(3, 0, 0, loops, str(op.get("comment", "")).replace("*/", ""))
    try:
        addr, value, mask = int(op["addr"]), int(op.get("value", 0)), int(op.get("mask", 0))
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"target file {path}: init[{index}] needs an integer addr (and value/mask)") from exc
    comment = str(op.get("comment", "")).replace("*/", "")
    if kind == "write":
        return InitOp(0, addr, 0, value, comment)
    if kind == "set":
        return InitOp(1, addr, value, value, comment)
    if kind == "clear":
        return InitOp(1, addr, value, 0, comment)
    if kind == "modify":
        return InitOp(1, addr, mask, value & mask, comment)
    if kind == "wait":
        return InitOp(2, addr, mask, value & mask, comment)
    raise UserError(
        f"target file {path}: init[{index}].op must be write, set, clear, modify, wait or delay, not {kind!r}"
    )


def available_targets() -> list[str]:
    """Names of the targets shipped in targets/."""
    return sorted(p.stem for p in data_dir("targets").glob("*.toml"))


def load_target(name_or_path: str) -> Target:
    """Load a shipped target by name, or a target TOML file by path."""
    path = Path(name_or_path)
    if not (path.suffix == ".toml" and path.exists()):
        path = data_dir("targets") / f"{name_or_path}.toml"
        if not path.exists():
            raise UserError(
                f"unknown target '{name_or_path}': use one of {', '.join(available_targets())} "
                "or a path to a target .toml file"
            )
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UserError(f"cannot read target file {path}: {exc}") from exc
    try:
        return _parse(raw, path)
    except (TypeError, ValueError, AttributeError, KeyError) as exc:  # a section or value of the wrong kind
        raise UserError(f"target file {path}: a section or value has the wrong type ({exc})") from exc


def _require(table: dict, key: str, where: str, path: Path, kind: type = object):
    if key not in table:
        raise UserError(f"target file {path}: missing '{where}{key}'")
    value = table[key]
    if kind is not object and not isinstance(value, kind):
        raise UserError(f"target file {path}: '{where}{key}' must be a {kind.__name__}")
    return value


def _features(cpu: dict, path: Path) -> frozenset[str]:
    """cpu.features, plus what the older keys say: dsp = true, simd = "neon"."""
    features = cpu.get("features", [])
    if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
        raise UserError(f"target file {path}: cpu.features must be a list of strings")
    unknown = sorted(set(features) - set(FEATURES))
    if unknown:
        raise UserError(f"target file {path}: unknown cpu.features {unknown}; known: {', '.join(FEATURES)}")
    if cpu.get("simd", "none") not in ("none", "neon"):
        raise UserError(f"target file {path}: cpu.simd must be 'none' or 'neon'")
    legacy = {"dsp"} if cpu.get("dsp", False) else set()
    legacy |= {"neon"} if cpu.get("simd") == "neon" else set()
    return frozenset(features) | legacy


def _parse(raw: dict, path: Path) -> Target:
    kind = _require(raw, "kind", "", path, str)
    if kind not in KINDS:
        raise UserError(f"target file {path}: kind must be one of {KINDS}, not '{kind}'")
    cpu = _require(raw, "cpu", "", path, dict)
    target = Target(
        name=_require(raw, "name", "", path, str),
        kind=kind,
        description=raw.get("description", ""),
        core=_require(cpu, "core", "cpu.", path, str),
        arch_flags=tuple(_require(cpu, "arch_flags", "cpu.", path, list)),
        fpu=cpu.get("fpu", "none"),
        features=_features(cpu, path),
        clock_hz=int(cpu.get("clock_hz", 0)),
        source=path,
        caches=bool(cpu.get("caches", False)),
        init=tuple(_init_op(op, i, path) for i, op in enumerate(raw.get("init", []))),
        flash=raw.get("flash", {}),
        part=raw.get("budget", {}).get("part", ""),
        part_clock_hz=int(raw.get("budget", {}).get("clock_hz", 0)),
        flash_budget=int(raw.get("budget", {}).get("flash_bytes", 0)),
        ram_budget=int(raw.get("budget", {}).get("ram_bytes", 0)),
        memory=raw.get("memory", {}),
        uart=raw.get("uart", {}),
        timer=raw.get("timer", {}),
        qemu=raw.get("qemu", {}),
        boot2=raw.get("boot2", {}),
        toolchain=raw.get("toolchain", {}),
        port=raw.get("firmware", {}).get("port", "cortex-m"),
        opt_flags=tuple(cpu.get("opt_flags", ["-O2"])),
        external=raw.get("external", {}),
        mcuboot=raw.get("mcuboot", {}),
        model_region=raw.get("model_region", {}),
    )
    for key in ("flash_origin", "flash_length", "ram_origin", "ram_length") if target.external else ():
        _require(target.external, key, "external.", path, int)
    if target.part_clock_hz < 0:
        raise UserError(f"target file {path}: budget.clock_hz must not be negative")
    if target.port not in PORTS:
        raise UserError(f"target file {path}: firmware.port must be one of {PORTS}")
    if target.kind == "linux":
        _require(target.toolchain, "cc", "toolchain.", path, str)
        _require(target.toolchain, "machine", "toolchain.", path, str)
        _require(target.toolchain, "emulator", "toolchain.", path, list)
    if target.kind == "mcu":
        for key in ("flash_origin", "flash_length", "ram_origin", "ram_length", "stack_bytes"):
            _require(target.memory, key, "memory.", path, int)
        for key, kind in (("driver", str), ("base", int), ("baud", int)):
            _require(target.uart, key, "uart.", path, kind)
        if target.uart["driver"] not in UART_DRIVERS:
            raise UserError(f"target file {path}: uart.driver must be one of {UART_DRIVERS}")
        if target.timer.get("kind", "systick") not in TIMERS:
            raise UserError(f"target file {path}: timer.kind must be one of {TIMERS}")
        if target.clock_hz <= 0:
            raise UserError(f"target file {path}: cpu.clock_hz must be positive")
    return target
