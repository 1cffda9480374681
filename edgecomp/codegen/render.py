"""Render templates/ into a model (model.h, model.c, model_weights.c, model_kernels.c, named after
its --name) and, for a build, a firmware project around it (harness, port, Makefile, linker
script); `edgecomp export` takes the model alone (render_model). Python decides; the templates
only print."""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import numpy as np

from edgecomp import __version__
from edgecomp.codegen.cnames import c_comment, c_identifier, c_literals, c_string, c_type, dl_type
from edgecomp.codegen.memory import ArenaPlan, place_external, plan_model, workspace_name
from edgecomp.codegen.naming import RUNTIME_HEADERS, RUNTIME_SOURCES, Naming
from edgecomp.errors import DoesNotFitError, UserError
from edgecomp.lower.model import LoweredModel
from edgecomp.resources import data_dir
from edgecomp.targets import FEATURES, Target


@dataclass(frozen=True)
class CTensor:
    name: str  # name in the model
    ident: str  # C identifier
    ctype: str
    shape: tuple[int, ...]
    size: int
    nbytes: int
    dl_code: int
    dl_bits: int
    kind: str
    storage: str  # C expression of the data pointer
    desc_index: int  # index in ec_tensors, -1 if no TVM kernel takes it
    offset: int = -1  # arena offset (all but consts)
    qscale: str = ""  # integer model I/O: scale as an exact C float literal, and zero point
    qzero_point: int = 0
    bin_offset: int = -1  # consts: where their bytes start in the weights file (.incbin)
    rows: tuple[str, ...] = ()  # consts: literal rows, when the weights are C arrays (an export)


@dataclass(frozen=True)
class CStep:
    index: int
    kernel: str
    symbol: str
    args: tuple[str, ...]  # C expressions of DLTensor pointers
    arg_names: tuple[str, ...]
    macs: int
    workspace_offset: int
    workspace_bytes: int
    direct: bool = False  # a micro-kernel: plain C call with data pointers (ptrs), then scratch
    ptrs: tuple[str, ...] = ()


WEIGHTS_ALIGN = 16  # of each constant, in the file and in flash


@dataclass(frozen=True)
class GeneratedProject:
    files: dict[str, str]  # relative path -> content
    plan: ArenaPlan
    weights_sha256: str  # SHA-256 (hex) of the constants as model_verify checks them
    copied: dict[str, Path] = field(default_factory=dict)  # relative path -> source file
    # relative path -> arrays written one after the other, each from a WEIGHTS_ALIGN boundary
    binaries: dict[str, tuple[np.ndarray, ...]] = field(default_factory=dict)

    def write(self, outdir: Path) -> None:
        for rel, text in self.files.items():
            path = outdir / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        for rel, arrays in self.binaries.items():
            path = outdir / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("wb") as f:
                for a in arrays:
                    f.write(bytes(-f.tell() % WEIGHTS_ALIGN))
                    f.write(_little_endian(a))
        for rel, src in self.copied.items():
            path = outdir / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, path)


def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(data_dir("templates"))),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    # A model's own names reach the C only through these (and c_identifier).
    env.filters["c_string"] = c_string
    env.filters["c_comment"] = c_comment
    return env


def _little_endian(data: np.ndarray) -> np.ndarray:
    """`data` contiguous and little-endian, as on every target (a view when it already is)."""
    return np.ascontiguousarray(data, dtype=data.dtype.newbyteorder("<"))


def _c_tensors(model: LoweredModel, plan: ArenaPlan, ns: str = "ec_", literals: bool = False) -> dict[str, CTensor]:
    """The C view of every tensor the calls use; `ns` namespaces the globals (weights); with
    `literals`, the constants' values as C literal rows, else their places in the weights file."""
    used: set[str] = set()
    weights_end = 0
    result: dict[str, CTensor] = {}
    # TVM's kernels take DLTensor descriptors; micro-kernels take plain pointers.
    described: list[str] = []
    for call in model.calls:
        if call.micro is None:
            # dict.fromkeys: a call may take one tensor twice (equal constants are stored once)
            described += [n for n in dict.fromkeys(call.inputs + call.outputs) if n not in described]
    # Only tensors the calls use get a descriptor; order: I/O first, then call order.
    order = list(model.inputs) + list(model.outputs)
    for call in model.calls:  # a call may take one (deduplicated) constant twice
        order += [n for n in dict.fromkeys(call.inputs + call.outputs) if n not in order]
    for name in order:
        t = model.tensors[name]
        code, bits = dl_type(t.dtype)
        ident = c_identifier(name, used) if t.kind in ("input", "output") else ns + c_identifier(name, used)
        offset = plan.offsets.get(name, -1)
        storage = ident if t.kind == "const" else f"ec_arena + {offset}"
        bin_offset = -1
        if t.kind == "const":
            bin_offset = -(-weights_end // WEIGHTS_ALIGN) * WEIGHTS_ALIGN
            weights_end = bin_offset + t.nbytes
        result[name] = CTensor(
            name=name,
            ident=ident,
            ctype=c_type(t.dtype),
            shape=t.shape,
            size=t.size,
            nbytes=t.nbytes,
            dl_code=code,
            dl_bits=bits,
            kind=t.kind,
            storage=storage,
            desc_index=described.index(name) if name in described else -1,
            offset=offset,
            bin_offset=bin_offset,
            rows=tuple(c_literals(t.data)) if literals and t.kind == "const" else (),
            qscale=c_literals(np.array([model.qparams[name][0]], np.float32))[0]
            if name in model.qparams
            else "",
            qzero_point=model.qparams[name][1] if name in model.qparams else 0,
        )
    return result


def weights_digest(consts: list) -> bytes:
    """SHA-256 of the constants (lower.model.Tensor) one after the other, little-endian as on every
    target: what the firmware's model_verify recomputes from flash, block by block."""
    h = hashlib.sha256()
    for t in consts:
        h.update(_little_endian(t.data))
    return h.digest()


REGION_FORMAT = 1  # of the model region's header (model.h model_region_header)


def model_region_layout(target: Target, weights_bytes: int) -> dict:
    """Where the model region goes: the target's [model_region] origin/length, else the upper half
    of the chip's flash (its budget, or the memory map's flash), 4 KiB aligned."""
    if target.port != "cortex-m":
        raise UserError(f"--model-region is supported on Cortex-M targets; {target.name} is {target.port}")
    mem = target.memory
    region = target.model_region
    if region:
        origin, length = int(region["origin"]), int(region["length"])
    else:
        flash = target.flash_budget or mem["flash_length"]
        length = (flash // 2) // 4096 * 4096
        origin = mem["flash_origin"] + flash - length
    if weights_bytes + 128 > length:
        raise DoesNotFitError(
            f"the weights ({weights_bytes:,} B) do not fit {target.name}'s model region ({length:,} B at "
            f"0x{origin:08X}) by {weights_bytes + 128 - length:,} B: set [model_region] in the target file"
        )
    return {"origin": origin, "length": length, "format": REGION_FORMAT, "weights_bytes": weights_bytes}


HARNESSES = ("edgecomp", "mlperf")
# The harness main of each (firmware/common/); a build copies its own and leaves the other's out.
_HARNESS_MAIN = {"edgecomp": "ec_harness.c", "mlperf": "ec_mlperf.c"}


@dataclass(frozen=True)
class ModelSources:
    """One model's C, rendered: its own files and the runtime files it needs, by path relative to
    the folder that holds it; the template context the rest of a project renders with."""

    files: dict[str, str]
    copied: dict[str, Path]
    plan: ArenaPlan
    weights_sha256: str
    ctx: dict
    # relative path -> the constants' bytes (weights_binary): arrays written one after the other,
    # each from a WEIGHTS_ALIGN boundary
    binaries: dict[str, tuple[np.ndarray, ...]] = field(default_factory=dict)


def render_model(model: LoweredModel, target: Target, model_name: str, provenance: dict,
                 naming: Naming | None = None, per_layer: bool = False, integrity: bool = True,
                 model_region: bool = False, arena_caller: bool = False,
                 weights_binary: bool = False) -> ModelSources:  # fmt: skip
    """Plan the arena and render the model's C files (`naming`: its prefix, namespace and folders;
    with `integrity`, model_verify: the weights' SHA-256 recomputed on the device and compared with
    the build's; `arena_caller`: the arena is the caller's, handed to prefix_init). With
    `weights_binary` the constants' bytes go to a .bin file beside the weights' C file, which
    includes them (.incbin, relative to the folder the compiler runs in): compiling it then costs the
    same whatever the model's size; without, they are C array literals, for any build system."""
    naming = naming or Naming()
    env = _env()
    plan = plan_model(model)
    tensors = _c_tensors(model, plan, naming.ns, literals=not weights_binary)
    weights_file = naming.sources["weights"].removesuffix(".c") + ".bin" if weights_binary else None

    def symbol(c) -> str:  # TVM names its kernels in the namespace (lower_model); micro-kernels here
        return naming.symbol(c.micro.symbol) if c.micro is not None else c.symbol

    steps = [
        CStep(
            index=i,
            kernel=c.kernel,
            symbol=symbol(c),
            args=tuple(f"&ec_tensors[{tensors[n].desc_index}]" for n in c.inputs + c.outputs),
            arg_names=c.inputs + c.outputs,
            macs=c.macs,
            workspace_offset=plan.offsets.get(workspace_name(i), 0),
            workspace_bytes=c.workspace_bytes,
            direct=c.micro is not None,
            ptrs=tuple(tensors[n].storage for n in c.inputs + c.outputs),
        )
        for i, c in enumerate(model.calls)
    ]
    micro = {c.micro.symbol: c.micro for c in model.calls if c.micro is not None}  # calls may share one
    micro_c = [env.get_template(k.template).render(symbol=naming.symbol(k.symbol), p=dict(k.params))
               for k in micro.values()]  # fmt: skip
    weights = sum(t.nbytes for t in model.tensors.values() if t.kind == "const")
    weights_out, arena_out = place_external(target, weights, plan.arena_bytes)
    digest = weights_digest([model.tensors[t.name] for t in tensors.values() if t.kind == "const"])
    inputs, outputs = [tensors[n] for n in model.inputs], [tensors[n] for n in model.outputs]
    ctx = {
        "weights_section": ".ext_rodata" if weights_out else None,
        "arena_section": ".ext_bss" if arena_out else None,
        "version": __version__,
        "model_name": model_name,
        "provenance": provenance,
        "target": target,
        "n": naming,
        "p": naming.prefix,
        "P": naming.upper,
        "arena_caller": arena_caller,
        "inputs": inputs,
        "outputs": outputs,
        "described": sorted((t for t in tensors.values() if t.desc_index >= 0), key=lambda t: t.desc_index),
        "consts": [t for t in tensors.values() if t.kind == "const"],
        "steps": steps,
        "kernels": sorted({s.symbol for s in steps if not s.direct}),
        "micro_kernels": [s for s in steps if s.direct],
        "arena_bytes": plan.arena_bytes,
        "macs": model.macs,
        "params": model.params,
        "per_layer": per_layer,
        "integrity": integrity or model_region,
        "model_region": None,
        "weights_sha256": list(digest),
        "weights_file": weights_file,
    }
    kernels_c = env.get_template("model_kernels.c.j2").render(ctx, kernels_c=model.kernels_c, micro_c=micro_c)
    if model_region:
        region = model_region_layout(target, sum(t.nbytes for t in ctx["consts"]))
        # The code id: a hash of the code that reads the weights, rendered without what depends on the
        # weights' values (their digest; the model file's name and hash in the header comment), with a zero id.
        ctx["model_region"] = {**region, "code_id": [0] * 32}
        neutral = {**ctx, "weights_sha256": [0] * 32, "model_name": "", "provenance": {"model_sha256": "", "options": ""}}
        code = env.get_template("model.c.j2").render(neutral) + env.get_template("model_kernels.c.j2").render(
            neutral, kernels_c=model.kernels_c, micro_c=micro_c)  # fmt: skip
        ctx["model_region"]["code_id"] = list(hashlib.sha256(code.encode()).digest())
    src = naming.sources
    files = {
        naming.header: env.get_template("model.h.j2").render(ctx),
        src["model"]: env.get_template("model.c.j2").render(ctx),
        src["weights"]: env.get_template("model_weights.c.j2").render(ctx),
        src["kernels"]: kernels_c,
        f"{naming.ec_dir}/ec_features.h": env.get_template("kernels/ec_features.h.j2").render(
            target=target, feature_names=FEATURES
        ),
        f"{naming.ec_dir}/ec_names.h": env.get_template("ec_names.h.j2").render(
            ctx, aliases=naming.aliases(ctx["kernels"])
        ),
    }
    common, kernels_dir = data_dir("firmware") / "common", data_dir("templates") / "kernels"
    wanted = [h for h in RUNTIME_HEADERS if h != "ec_port.h" or per_layer]
    if not ctx["integrity"]:
        wanted = [h for h in wanted if h != "ec_sha256.h"]
    copied = {f"{naming.ec_dir}/{h}": (common / h if (common / h).is_file() else kernels_dir / h) for h in wanted}
    for name in RUNTIME_SOURCES:
        if name != "ec_sha256.c" or ctx["integrity"]:
            copied[f"{naming.ec_dir}/{naming.runtime_source(name)}"] = common / name
    binaries = {weights_file: tuple(model.tensors[t.name].data for t in ctx["consts"])} if weights_file else {}
    return ModelSources(files, copied, plan, digest.hex(), ctx, binaries)


def generate_project(model: LoweredModel, target: Target, model_name: str, provenance: dict,
                     per_layer: bool = False, boot2: bytes | None = None,
                     integrity: bool = True, model_region: bool = False, naming: Naming | None = None,
                     arena_caller: bool = False, harness: str = "edgecomp",
                     mlperf: dict | None = None) -> GeneratedProject:  # fmt: skip
    """The model (render_model) in a firmware project for `target` (with `boot2`, the second-stage
    boot loader image placed at the start of flash): the `harness` main that talks to the host
    (edgecomp's framed protocol, or the MLPerf Tiny runner's text protocol with `mlperf` settings),
    the target's port, Makefile and linker script."""
    if harness not in HARNESSES:
        raise UserError(f"--harness must be one of {', '.join(HARNESSES)}, not '{harness}'")
    naming = naming or Naming()
    env = _env()
    sources = render_model(model, target, model_name, provenance, naming, per_layer, integrity, model_region,
                           arena_caller, weights_binary=True)  # fmt: skip
    ctx, files = sources.ctx, dict(sources.files)
    fw = data_dir("firmware")
    skip = {main for h, main in _HARNESS_MAIN.items() if h != harness}
    copied = {f"ec/{p.name}": p for p in sorted((fw / "common").iterdir())
              if p.suffix in (".c", ".h") and p.name not in skip}  # fmt: skip
    # The micro-kernels' intrinsics headers live beside their templates.
    copied.update({f"ec/{p.name}": p for p in sorted((data_dir("templates") / "kernels").glob("*.h"))})
    quantized = ([bool(t.qscale) for t in ctx["inputs"]], [bool(t.qscale) for t in ctx["outputs"]])
    files["ec/ec_api.h"] = env.get_template("ec_api.h.j2").render(ctx, aliases=naming.api_aliases(*quantized))
    if harness == "mlperf":
        files["ec/ec_mlperf.h"] = env.get_template("ec_mlperf.h.j2").render(
            ctx, mlperf=mlperf or {}, db_bytes=max(1, sum(t.nbytes for t in ctx["inputs"]))
        )
    if target.is_process:
        copied.update(
            {f"ec/{p.name}": p for p in sorted((fw / "host").iterdir()) if p.suffix in (".c", ".h")}
        )
        files["Makefile"] = env.get_template("Makefile.host.j2").render(ctx)
    else:
        copied.update(
            {f"ec/{p.name}": p for p in sorted((fw / target.port).iterdir()) if p.suffix in (".c", ".h")}
        )
        if target.port == "aarch64":  # picolibc's start-up and linker script, the target's memory map
            files["Makefile"] = env.get_template("Makefile.a64.j2").render(ctx)
        else:
            files["Makefile"] = env.get_template("Makefile.mcu.j2").render(ctx)
            files["linker.ld"] = env.get_template("linker.ld.j2").render(ctx)
        files["ec/ec_target.h"] = env.get_template("ec_target.h.j2").render(ctx)
        if boot2:
            rows = [", ".join(f"0x{b:02X}" for b in boot2[i : i + 16]) for i in range(0, len(boot2), 16)]
            files["ec/ec_boot2.c"] = env.get_template("ec_boot2.c.j2").render(ctx, rows=rows, size=len(boot2))
    return GeneratedProject(files=files, plan=sources.plan, weights_sha256=sources.weights_sha256, copied=copied,
                            binaries=sources.binaries)


def port_files(target: Target) -> GeneratedProject:
    """The target's start-up code, port (UART, timer, exit, faults) and memory map without any
    model or harness: what a program of one's own needs to run on an MCU target as edgecomp's
    firmware does (ec/startup.c, ec/ec_port_<port>.c, ec/ec_target.h, linker.ld). The program
    provides main(); the tests link exported models into one this way."""
    if target.is_process or target.port != "cortex-m":
        raise UserError(f"port_files is for Cortex-M targets; {target.name} is {target.kind}/{target.port}")
    env = _env()
    ctx = {"version": __version__, "model_name": "", "provenance": {"model_sha256": "", "options": ""},
           "target": target, "model_region": None, "n": Naming()}  # fmt: skip
    fw = data_dir("firmware")
    copied = {f"ec/{p.name}": p for p in sorted((fw / target.port).iterdir()) if p.suffix in (".c", ".h")}
    copied.update({f"ec/{name}": fw / "common" / name for name in ("ec_port.h", "ec_proto.c", "ec_proto.h")})
    files = {"ec/ec_target.h": env.get_template("ec_target.h.j2").render(ctx),
             "linker.ld": env.get_template("linker.ld.j2").render(ctx)}  # fmt: skip
    return GeneratedProject(files=files, plan=ArenaPlan({}, (), 0, 0), weights_sha256="", copied=copied)
