"""`edgecomp export`: the compiled model as a library for someone else's firmware.

`build` makes a complete firmware, right for measuring; a product team has its own project
(CMake, Zephyr, Arduino, PlatformIO, a Makefile) and often more than one model. An export is the
model's C alone — no start-up code, no harness, no global outside its `--name` prefix — in the
layout and with the build file of that ecosystem, its arena the caller's by default (as TFLite
Micro's interpreter takes the application's arena, and X-CUBE-AI lets the caller own activations).

Every build option applies (quantization, pruning, --io, --kernels, --per-layer, integrity...).
The sources are compiled once with the target's compiler and flags before the folder is written,
which checks them and gives the library's own flash and RAM in report.json.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from elftools.elf.constants import SH_FLAGS
from elftools.elf.elffile import ELFFile

from edgecomp import __version__
from edgecomp.build import check_toolchain, compiler_for, compiler_version
from edgecomp.codegen.naming import Naming
from edgecomp.codegen.render import _env, render_model
from edgecomp.errors import ToolError, UserError
from edgecomp.options import BuildOptions
from edgecomp.pipeline import _tensor_entry, build_key, compile_model, prepare, staged_dir
from edgecomp.targets import Target

FORMATS = ("cmake", "zephyr", "arduino", "platformio", "plain")
COMPILE_TIMEOUT_S = 900
# What a library's objects may leave to the C library without needing libm.
_LIBC = frozenset({"memcpy", "memset", "memcmp", "memmove"})


@dataclass(frozen=True)
class Library:
    """What the ecosystem templates print about the library: its C files (relative to the export
    folder), the target's flags, and its figures."""

    sources: tuple[str, ...]
    arch_flags: tuple[str, ...]
    opt_flags: tuple[str, ...]
    libm: bool  # its code calls the C math library (expf, ...)
    version: str
    flash_bytes: int
    ram_bytes: int


@dataclass(frozen=True)
class ExportResult:
    outdir: Path
    report: dict


def parse_formats(spec: str) -> tuple[str, ...]:
    """'cmake' / 'cmake,platformio' / 'all' -> the formats. Their files never collide, so one folder
    can be a CMake project, a Zephyr module, an Arduino and a PlatformIO library at once."""
    formats = FORMATS if spec == "all" else tuple(dict.fromkeys(f.strip() for f in spec.split(",")))
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise UserError(f"--format takes {', '.join(FORMATS)} (comma-separated) or all, not '{spec}'")
    return formats


def default_export_dir(model_path: Path, name: str, target: Target) -> Path:
    return Path("build") / f"{Path(model_path).stem}-{name}-{target.name}-export"


def export(model_path: Path, target: Target, outdir: Path | None, options: BuildOptions, fmt: str = "cmake",
           log=print, calib: Path | None = None, save_quantized: Path | None = None,
           save_pruned: Path | None = None) -> ExportResult:  # fmt: skip
    """Compile `model_path` for `target` and write it to `outdir` as a library with the build files
    of `fmt` (one format, several comma-separated, or all).

    Like `build`, the folder is written aside and moved into place only when everything succeeded."""
    formats = parse_formats(fmt)
    for flag, given in (("--sign", options.sign), ("--sanitize", options.sanitize),
                        ("--harness", options.harness != "edgecomp")):  # fmt: skip
        if given:
            raise UserError(f"{flag} applies to a firmware (edgecomp build), not to an export")
    outdir = Path(outdir or default_export_dir(model_path, options.name, target))
    prepared = prepare(model_path, options, calib, None, save_quantized)
    t0 = time.monotonic()
    naming = Naming.for_export(options.name)
    compiled = compile_model(prepared, model_path, target, options, naming, calib, save_quantized, save_pruned, log)
    sources = render_model(compiled.lowered, target, Path(model_path).name, compiled.provenance, naming,
                           options.per_layer, options.integrity, options.model_region,
                           options.arena == "caller")  # fmt: skip
    files = {f"src/{rel}": text for rel, text in sources.files.items()}
    copied = {f"src/{rel}": src for rel, src in sources.copied.items()}
    c_files = tuple(sorted(p for p in [*files, *copied] if p.endswith(".c")))

    with staged_dir(outdir) as tmp:
        for rel, text in files.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_text(text)
        for rel, src in copied.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, tmp / rel)
        log(f"compiling the library's {len(c_files)} C files for {target.name} (a check, and its size)")
        sizes = compile_library(tmp, c_files, target, options.extra_cflags)
        lib = Library(c_files, tuple(target.arch_flags), tuple(target.opt_flags), sizes["libm"], __version__,
                      sizes["flash_bytes"], sizes["ram_bytes"])  # fmt: skip
        ctx = {**sources.ctx, "lib": lib, "formats": formats, "folder": outdir.name}
        for rel, text in ecosystem_files(formats, ctx).items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_text(text)
        report = _report(model_path, target, options, formats, naming, compiled, sources, lib, sizes,
                         build_key(prepared.model_bytes, target, options, prepared.data_files),
                         time.monotonic() - t0)  # fmt: skip
        report["files"] = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
        (tmp / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return ExportResult(outdir, report)


def ecosystem_files(formats: tuple[str, ...], ctx: dict) -> dict[str, str]:
    """The build files of each of `formats` (and a README saying how to use the library there)."""
    env = _env()
    p = ctx["p"]
    by_format = {
        "cmake": {"CMakeLists.txt": "CMakeLists.txt.j2"},
        "zephyr": {"zephyr/module.yml": "module.yml.j2", "zephyr/CMakeLists.txt": "zephyr_CMakeLists.txt.j2",
                   "zephyr/Kconfig": "Kconfig.j2"},  # fmt: skip
        "arduino": {"library.properties": "library.properties.j2",
                    f"examples/{p}_example/{p}_example.ino": "example.ino.j2"},  # fmt: skip
        "platformio": {"library.json": "library.json.j2"},
        "plain": {f"{p}.mk": "model.mk.j2"},
    }
    templates = {rel: name for fmt in formats for rel, name in by_format[fmt].items()}
    files = {rel: env.get_template(f"export/{name}").render(ctx) for rel, name in templates.items()}
    files["README.md"] = env.get_template("export/README.md.j2").render(ctx)
    return files


def library_cflags(target: Target, extra_cflags: str = "") -> list[str]:
    """The flags the library is checked with: the target's, C99, every warning edgecomp's own builds use."""
    return [*target.arch_flags, "-std=c99", *target.opt_flags, "-Wall", "-Wextra", "-ffunction-sections",
            "-fdata-sections", "-Isrc", *extra_cflags.split()]  # fmt: skip


def compile_library(folder: Path, c_files: tuple[str, ...], target: Target, extra_cflags: str = "") -> dict:
    """Compile each of `c_files` (relative to `folder`) to an object in a scratch folder; the
    library's code + constants (flash), data + bss (RAM), and whether it needs libm."""
    check_toolchain(target)
    cc = compiler_for(target)
    flags = library_cflags(target, extra_cflags)
    with tempfile.TemporaryDirectory() as work:
        objects = [Path(work) / (rel.replace("/", "_") + ".o") for rel in c_files]

        def one(rel: str, obj: Path) -> subprocess.CompletedProcess:
            return subprocess.run([cc, *flags, "-c", "-o", str(obj), rel], cwd=folder, capture_output=True,
                                  text=True, timeout=COMPILE_TIMEOUT_S)  # fmt: skip

        try:
            with ThreadPoolExecutor(max_workers=2) as pool:
                procs = list(pool.map(one, c_files, objects))
        except subprocess.TimeoutExpired as exc:
            raise ToolError(f"compiling the exported library took longer than {COMPILE_TIMEOUT_S} s") from exc
        failed = [p for p in procs if p.returncode != 0]
        if failed:
            lines = [ln for p in failed for ln in p.stderr.splitlines() if "error" in ln]
            raise ToolError(f"compiling the exported library failed ({cc}):\n" + "\n".join(lines[:10]))
        return {**object_sizes(objects), "compiler": cc, "compiler_version": compiler_version(cc),
                "cflags": " ".join(flags)}  # fmt: skip


def object_sizes(objects: list[Path]) -> dict:
    """Section sizes summed over relocatable objects (pyelftools): text = code and constants,
    data = initialised RAM (also stored in flash), bss; and whether they call into libm."""
    text = data = bss = 0
    defined: set[str] = set()
    undefined: set[str] = set()
    for path in objects:
        with path.open("rb") as f:
            elf = ELFFile(f)
            for sec in elf.iter_sections():
                if not sec["sh_flags"] & SH_FLAGS.SHF_ALLOC or not sec["sh_size"]:
                    continue
                if sec["sh_type"] == "SHT_NOBITS":
                    bss += sec["sh_size"]
                elif sec["sh_flags"] & SH_FLAGS.SHF_WRITE:
                    data += sec["sh_size"]
                else:
                    text += sec["sh_size"]
            symtab = elf.get_section_by_name(".symtab")
            for sym in symtab.iter_symbols() if symtab is not None else ():
                if sym["st_info"]["bind"] != "STB_GLOBAL" or not sym.name:
                    continue
                (undefined if sym["st_shndx"] == "SHN_UNDEF" else defined).add(sym.name)
    external = undefined - defined
    return {"text": text, "data": data, "bss": bss, "flash_bytes": text + data, "ram_bytes": data + bss,
            "libm": bool(external - _LIBC), "defined_symbols": sorted(defined),
            "external_symbols": sorted(external)}  # fmt: skip


def _report(model_path, target, options, formats, naming, compiled, sources, lib: Library, sizes, key,
            seconds) -> dict:  # fmt: skip
    lowered = compiled.lowered
    rounding = "half_away" if compiled.model is None else "half_even"
    return {
        "edgecomp_version": __version__,
        "model": str(model_path),
        "target": target.as_dict(),
        "options": options.as_dict(),
        "build_key": key,
        "formats": list(formats),
        "name": naming.prefix,
        "header": f"src/{naming.header}",
        "arena": options.arena,
        "arena_bytes": sources.plan.arena_bytes,
        "macs": lowered.macs,
        "weights_bytes": sum(t.nbytes for t in lowered.tensors.values() if t.kind == "const"),
        "inputs": [_tensor_entry(lowered.tensors[n], lowered.qparams, rounding) for n in lowered.inputs],
        "outputs": [_tensor_entry(lowered.tensors[n], lowered.qparams) for n in lowered.outputs],
        "library": {
            "sources": list(lib.sources),
            "flash_bytes": lib.flash_bytes,
            "ram_bytes": lib.ram_bytes,
            "sections": {k: sizes[k] for k in ("text", "data", "bss")},
            "global_symbols": sizes["defined_symbols"],
            "needs": sizes["external_symbols"],
            "compiler": sizes["compiler"],
            "compiler_version": sizes["compiler_version"],
            "cflags": sizes["cflags"],
            "arch_flags": list(lib.arch_flags),
        },
        "integrity": {"enabled": options.integrity, "weights_sha256": sources.weights_sha256},
        **({"patches": compiled.patching} if compiled.patching is not None else {}),
        "export_time_s": round(seconds, 3),
    }
