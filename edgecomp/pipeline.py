"""The whole pipeline in order: ONNX -> front end -> TVM lowering -> C -> firmware -> report.

`build` is what `edgecomp build` does; `run` and `profile` call it (reusing a cached build) and
then talk to the device through the harness.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx

from edgecomp import __version__
from edgecomp.build import (
    ElfSizes,
    boot2_image,
    code_digest,
    compiler_for,
    compiler_version,
    elf_sizes,
    run_make,
    section_bytes,
)
from edgecomp.codegen import generate_project
from edgecomp.codegen.naming import Naming, check_prefix
from edgecomp.errors import DoesNotFitError, UnsupportedModelError, UserError
from edgecomp.frontend import load_model
from edgecomp.frontend.load import load_model_proto
from edgecomp.frontend.tflite import TflModel, is_tflite
from edgecomp.io import load_calibration, load_eval
from edgecomp.lower import LoweredModel
from edgecomp.lower.kernels.dense import TILE_ROWS
from edgecomp.options import CHOICES, BuildOptions, parse_prune
from edgecomp.passes import (
    count_params,
    dead_channel_masks,
    fold_constants,
    interval_upper_bounds,
    magnitude_prune,
    observed_upper_bounds,
    prune_channels,
    simplify,
    zero_dead_channels,
)
from edgecomp.passes.quantize import quantize
from edgecomp.quant import IntGraph, int_graph_for, is_quantized
from edgecomp.quant.accuracy import evaluate, precision
from edgecomp.quant.from_tflite import tflite_int_graph
from edgecomp.resources import data_dir
from edgecomp.targets import Target


@dataclass(frozen=True)
class BuildResult:
    outdir: Path
    report: dict
    target: Target
    model: onnx.ModelProto | None  # as compiled: front-end normalised, passes applied, quantized if asked
    cached: bool  # (None for an integer TFLite model: `tflite` and `int_graph` hold it)
    float_model: onnx.ModelProto | None = None  # the float original of a model quantized here
    int_graph: IntGraph | None = None  # quantized builds: the integer graph compiled (with its I/O)
    tflite: TflModel | None = None  # an integer TFLite model, as read

    @property
    def quantized(self) -> bool:
        return self.int_graph is not None


@contextlib.contextmanager
def staged_dir(outdir: Path) -> Iterator[Path]:
    """A temporary sibling of `outdir` to write into; it replaces `outdir` only when the block ends
    without an error, so a failure never leaves a half-written folder behind."""
    outdir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{outdir.name}.", dir=outdir.parent))
    try:
        yield tmp
        if outdir.exists():
            shutil.rmtree(outdir)
        tmp.rename(outdir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def default_outdir(model_path: Path, target: Target) -> Path:
    return Path("build") / f"{model_path.stem}-{target.name}"


def build_key(model_bytes: bytes, target: Target, options: BuildOptions, data_files: list[Path]) -> str:
    """Hash of every input of a build: model, options, data, target file, edgecomp and its C sources."""
    h = hashlib.sha256()
    h.update(__version__.encode())
    h.update(model_bytes)
    hash_files(h, data_files)
    h.update(json.dumps(options.as_dict(), sort_keys=True).encode())
    h.update(target.source.read_bytes())
    h.update(source_digest().encode())
    return h.hexdigest()


def build_inputs_key(model_path: Path, target: Target, options: BuildOptions, calib: Path | None = None,
                     eval_data: Path | None = None) -> str:  # fmt: skip
    """The key `build` gives these inputs, known before building (a folder name for a cache keyed
    by content, as the sweep's)."""
    return build_key(Path(model_path).read_bytes(), target, options, _data_files(options, calib, eval_data))


def _data_files(options: BuildOptions, calib: Path | None, eval_data: Path | None) -> list[Path]:
    """The files besides the model that a build's key hashes: calibration, evaluation, per-layer
    ratios, signing key."""
    prune_spec = parse_prune(options.prune) if options.prune else None
    ratios_file = (
        Path(prune_spec["channels"]) if prune_spec and isinstance(prune_spec.get("channels"), str) else None
    )
    sign_key = Path(options.sign) if options.sign else None
    return [p for p in (calib, eval_data, ratios_file, sign_key) if p is not None]


def hash_files(h, paths: list[Path]) -> None:
    """Feed the bytes of each file (a folder: its files, in name order) to the hash `h`."""
    for path in paths:
        for p in sorted(Path(path).rglob("*")) if Path(path).is_dir() else [Path(path)]:
            if p.is_file():
                h.update(p.read_bytes())


@functools.lru_cache(maxsize=1)
def source_digest() -> str:
    """Hash of edgecomp itself: its version, Python sources, templates and firmware. A result made
    by other code is not reused."""
    h = hashlib.sha256(__version__.encode())
    package = Path(__file__).resolve().parent
    for folder in (data_dir("templates"), data_dir("firmware"), package):
        for p in sorted(folder.rglob("*")):
            if p.is_file() and p.suffix in (".py", ".j2", ".c", ".h", ".S"):
                h.update(p.relative_to(folder).as_posix().encode())
                h.update(p.read_bytes())
    return h.hexdigest()


LOW_BIT_SCHEMES = ("w4a8", "mixed")  # builds whose report lists each layer's precision
PRECISION_SAMPLES = 8  # calibration samples the per-layer SQNR of report["precision"] is measured on without --eval
MODEL_REGION_BIN = "model_region.bin"  # --model-region: the region's bytes, at report["model_region"]["origin"]
COMPILED_MODEL = "model.onnx"  # in the build folder: the model as compiled (QDQ when quantized)
FLOAT_MODEL = "model_float.onnx"  # quantized builds: the float model it was quantized from


@dataclass(frozen=True)
class Prepared:
    """A model read and checked, with what keys its build: the front end's result and the files
    besides the model that the key hashes."""

    model: onnx.ModelProto | None  # None for an integer TFLite model (tfl holds it)
    tfl: TflModel | None
    model_bytes: bytes
    prune_spec: dict | None
    data_files: list[Path]  # calibration, evaluation, per-layer ratios, signing key


@dataclass(frozen=True)
class Compiled:
    """A model through the graph passes, quantization and TVM: what the C is rendered from."""

    model: onnx.ModelProto | None  # as compiled (QDQ when quantized; None for an integer TFLite model)
    float_model: onnx.ModelProto | None  # the float model it was quantized from (quantized here)
    int_graph: IntGraph | None
    lowered: LoweredModel
    graph_report: dict
    provenance: dict  # the model file's hash and the options, for the generated files' header
    patching: dict | None = None  # patch-based execution of the first stage (--patch, --max-ram), as report.json records it
    calib_samples: list | None = None  # the calibration inputs (report.json precision measures int4 layers on them)


def prepare(model_path: Path, options: BuildOptions, calib: Path | None = None, eval_data: Path | None = None,
            save_quantized: Path | None = None) -> Prepared:  # fmt: skip
    """Read the model and check the options against it (every error a user can fix, before any
    compiling)."""
    model, tfl = _front_end(Path(model_path), options)
    if tfl is not None:
        for flag, given in (("--quantize", options.quantize), ("--prune", options.prune), ("--calib", calib),
                            ("--eval", eval_data), ("--save-quantized", save_quantized)):  # fmt: skip
            if given:
                raise UserError(f"{model_path} is an integer TFLite model: {flag} does not apply to it")
    elif options.quantize and is_quantized(model):
        raise UserError(f"{model_path} is already quantized (QDQ): build it without --quantize")
    if options.quantize and calib is None:
        raise UserError("--quantize needs calibration data: --calib DATA (.npy, .npz or a folder of .npy)")
    if options.prune and is_quantized(model):
        raise UserError(f"{model_path} is quantized (QDQ): prune the float model, then quantize (--quantize)")
    if eval_data is not None and not options.quantize:
        raise UserError("--eval compares a quantized model with its float original: use it with --quantize")
    if options.io == "int8" and tfl is None and not options.quantize and not is_quantized(model):
        raise UserError("--io int8 needs a quantized model (--quantize, or a QDQ model)")
    if options.arena not in ("static", "caller"):
        raise UserError(f"--arena must be static or caller, not '{options.arena}'")
    check_prefix(options.name)
    prune_spec = parse_prune(options.prune) if options.prune else None
    sign_key = Path(options.sign) if options.sign else None
    if sign_key is not None and not sign_key.is_file():
        raise UserError(f"signing key not found: {sign_key} (make one with: edgecomp keygen -o {sign_key})")
    return Prepared(model, tfl, Path(model_path).read_bytes(), prune_spec, _data_files(options, calib, eval_data))


def compile_model(prepared: Prepared, model_path: Path, target: Target, options: BuildOptions, naming: Naming,
                  calib: Path | None = None, save_quantized: Path | None = None, save_pruned: Path | None = None,
                  log=print) -> Compiled:  # fmt: skip
    """The graph passes, quantization (on `calib`) and TVM's lowering, kernels named in `naming`'s
    namespace; `save_quantized` / `save_pruned` get the QDQ / pruned float model."""
    model, tfl = prepared.model, prepared.tfl
    float_model, graph_report, calib_samples = None, {}, None
    if tfl is not None:  # an integer TFLite model: its own integer graph, TFLite's arithmetic
        int_graph = tflite_int_graph(tfl, options.io)
    else:
        calib_samples = load_calibration(calib, io_specs(model)) if calib is not None else None
        model, graph_report = graph_passes(model, options, prepared.prune_spec, calib_samples)
        float_model = model  # what quantization starts from and is compared with
        if options.quantize:
            log(f"quantizing to {options.quantize} ({options.calib_method} calibration)")
            model = onnx.shape_inference.infer_shapes(
                quantize(model, calib_samples, options.quantize, options.calib_method,
                         dict(options.weight_bits) or None, dict(options.act_bits) or None).model
            )  # fmt: skip
            if not is_quantized(model):  # asked for integers: a float build would be a silent surprise
                ops = sorted({n.op_type for n in model.graph.node})
                raise UnsupportedModelError(
                    f"--quantize {options.quantize}: onnxruntime's quantizer quantized none of this model's "
                    f"operators ({', '.join(ops[:8])}{', …' if len(ops) > 8 else ''}); build it as float"
                )
        _save_models(model, float_model if options.quantize else None, save_quantized, save_pruned)
        int_graph = int_graph_for(fold_constants(model).model, options.io or "float") if is_quantized(model) else None

    log(f"lowering {Path(model_path).name} through TVM for {target.name}")
    int_graph, lowered, patching = _patch_and_lower(model, int_graph, options, target, naming, log)
    provenance = {
        "model_sha256": hashlib.sha256(prepared.model_bytes).hexdigest(),
        "options": json.dumps(options.as_dict(), sort_keys=True),
    }
    return Compiled(model, float_model if options.quantize else None, int_graph, lowered, graph_report, provenance,
                    patching, calib_samples)  # fmt: skip


def build(model_path: Path, target: Target, outdir: Path | None = None, options: BuildOptions | None = None,
          reuse: bool = False, log=print, calib: Path | None = None, eval_data: Path | None = None,
          save_quantized: Path | None = None, save_pruned: Path | None = None) -> BuildResult:  # fmt: skip
    """Compile `model_path` for `target` into `outdir`; with `reuse`, keep a build with the same key.

    With options.quantize, the model is quantized on the samples in `calib` first (and saved as QDQ
    ONNX to `save_quantized`); `eval_data` (.npz with x, optional y) adds an accuracy report.

    The output folder is written in a temporary sibling and moved into place only when the whole
    build succeeded, so a failed build never leaves a half-written folder behind. It keeps the
    model as compiled (model.onnx, and model_float.onnx for a model quantized here), so a reused
    build needs neither the graph passes nor calibration again.
    """
    options = options or BuildOptions()
    if options.optimize not in CHOICES["optimize"]:
        raise UserError(f"--optimize takes {', '.join(CHOICES['optimize'])}, not '{options.optimize}'")
    if options.optimize != "balanced" and options.kernels == "tvm":
        raise UserError(f"--optimize {options.optimize} chooses the micro-kernels' weight records: not with "
                        "--kernels tvm")  # fmt: skip
    if options.max_flash is not None:
        return _build_within_flash(model_path, target, outdir, options, reuse, log, calib, eval_data,
                                   save_quantized, save_pruned)  # fmt: skip
    outdir = Path(outdir or default_outdir(model_path, target))
    prepared = prepare(model_path, options, calib, eval_data, save_quantized)
    tfl = prepared.tfl
    sign_key = Path(options.sign) if options.sign else None
    key = build_key(prepared.model_bytes, target, options, prepared.data_files)
    if reuse:
        cached = _cached(outdir, key, target, options, tfl)
        if cached is not None:
            _save_models(cached.model, cached.float_model, save_quantized, save_pruned)
            return cached

    t0 = time.monotonic()
    naming = Naming.for_build(options.name)
    compiled = compile_model(prepared, model_path, target, options, naming, calib, save_quantized, save_pruned, log)
    model, float_model, int_graph, lowered = compiled.model, compiled.float_model, compiled.int_graph, compiled.lowered
    graph_report, patching, calib_samples = compiled.graph_report, compiled.patching, compiled.calib_samples
    mlperf = {"model": options.mlperf_model or Path(model_path).stem}
    project = generate_project(
        lowered, target, model_path.name, compiled.provenance, options.per_layer, boot2_image(target),
        options.integrity, options.model_region, naming, options.arena == "caller", options.harness, mlperf,
    )
    t_gen = time.monotonic() - t0

    with staged_dir(outdir) as tmp:
        project.write(tmp)
        log(
            f"compiling {'the harness executable' if target.is_process else 'firmware'} ({len(project.files)} generated files)"
        )
        binary = run_make(tmp, target, options.extra_cflags, ("SANITIZE=1",) if options.sanitize else ())
        sizes = None if target.is_process else elf_sizes(binary)
        report = _report(model_path, model, int_graph, target, options, key, lowered, project.plan, sizes, t_gen,
                         time.monotonic() - t0)  # fmt: skip
        report.update(graph_report)
        if patching is not None:
            report["patches"] = patching
        report["integrity"] = {"enabled": options.integrity, "weights_sha256": project.weights_sha256,
                               "code_sha256": code_digest(binary)}  # fmt: skip
        low_bit = options.quantize in LOW_BIT_SCHEMES or bool(options.weight_bits) or bool(options.act_bits)
        # The float-I/O integer graph, for accuracy against the float model (extracted once).
        float_io_graph = int_graph_for(fold_constants(model).model) if eval_data is not None or low_bit else None
        if eval_data is not None:
            log(f"evaluating float vs {options.quantize} on {eval_data}")
            samples, labels = load_eval(eval_data, io_specs(float_model))
            report["accuracy"] = evaluate(float_model, float_io_graph, samples, labels)
        if low_bit:
            # Each layer's widths, bytes and SQNR (on --eval, else on a few calibration samples).
            per_layer = report.get("accuracy", {}).get("per_layer_sqnr_db")
            if per_layer is None and calib_samples:
                per_layer = evaluate(float_model, float_io_graph, calib_samples[:PRECISION_SAMPLES])["per_layer_sqnr_db"]
            report["precision"] = precision(float_io_graph, per_layer)
        if sizes is not None and options.fit_check:
            _check_fit(target, sizes)
        if sizes is not None and options.max_ram is not None and sizes.ram_bytes + sizes.stack > options.max_ram:
            raise DoesNotFitError(
                f"RAM {sizes.ram_bytes + sizes.stack:,} B (static {sizes.ram_bytes:,} + stack {sizes.stack:,}) is over "
                f"--max-ram {options.max_ram:,} B by {sizes.ram_bytes + sizes.stack - options.max_ram:,} B"
                + (f" with the first stage in {'x'.join(map(str, patching['grid']))} patches" if patching else "")
            )
        if options.model_region:  # the region on its own, for `edgecomp flash --model-only`
            addr, data = section_bytes(binary, ".ec_model")
            (tmp / MODEL_REGION_BIN).write_bytes(data)
            report["model_region"] = {"file": MODEL_REGION_BIN, "origin": addr, "bytes": len(data),
                                      "code_id": data[44:76].hex()}  # the header's (model.h model_region_header)
        if sign_key is not None:
            from edgecomp.sign import sign_image

            log(f"signing the image with {sign_key} (MCUboot format, imgtool)")
            report["signed"] = sign_image(binary, target, sign_key, options.sign_version)
        if model is not None:
            onnx.save(model, str(tmp / COMPILED_MODEL))
        if options.quantize:
            onnx.save(float_model, str(tmp / FLOAT_MODEL))
        (tmp / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return BuildResult(outdir, report, target, model, False, float_model if options.quantize else None,
                       int_graph, tfl)  # fmt: skip


def _as_built(graph: IntGraph | None, report: dict) -> IntGraph | None:
    """The integer graph as a build compiled it: with the patching its report records."""
    patching = report.get("patches")
    if graph is None or not patching:
        return graph
    from edgecomp.quant.patches import patch_graph

    return patch_graph(graph, patching["cut"], tuple(patching["grid"]))


PATCH_TRIES = 6  # --max-ram: patched builds lowered and planned at most
NON_ARENA_RAM = 768  # static RAM besides the arena (harness buffers, runtime: 536 B on cortex-m7): for --max-ram


# Builds at most this many times to meet --max-flash (the code of a narrowed kernel differs a little).
FLASH_FIT_ROUNDS = 3


def _build_within_flash(model_path: Path, target: Target, outdir: Path | None, options: BuildOptions, reuse: bool,
                        log, calib, eval_data, save_quantized, save_pruned) -> BuildResult:  # fmt: skip
    """--max-flash for an integer build: built as usual, then, while its flash is over the budget, again
    with int8 weight records for the layers kernels.narrow_plan picks (the ones that cost the
    fewest instructions per byte saved). A budget that cannot be met is an error saying by how much."""
    from edgecomp.lower.kernels import narrow_plan

    if target.is_process:
        raise UserError(f"--max-flash is a firmware budget: {target.name} builds a program, which has no flash")
    budget = options.max_flash
    base = replace(options, max_flash=None)
    outdir = Path(outdir or default_outdir(model_path, target))
    with staged_dir(outdir) as tmp:  # a build over the budget is not left in outdir
        result = build(model_path, target, tmp, base, reuse, log, calib, eval_data, save_quantized, save_pruned)
        if result.int_graph is None:
            raise UserError("--max-flash without --fit or --quantize mixed applies to integer builds: add --quantize int8")
        narrow: tuple[str, ...] = ()
        for _ in range(FLASH_FIT_ROUNDS):
            excess = result.report["flash_bytes"] - budget
            if excess <= 0:
                break
            more, saved = narrow_plan(result.int_graph, target.features, excess, narrow, options.optimize)
            if not more:
                break
            narrow = tuple(dict.fromkeys(narrow + more))
            log(f"edgecomp: flash {result.report['flash_bytes']:,} B > --max-flash {budget:,} B: int8 weight records "
                f"for {len(more)} more layer(s) (~{saved:,} B)")
            result = build(model_path, target, tmp, replace(base, narrow_records=narrow), reuse, log, calib,
                           eval_data, save_quantized, save_pruned)  # fmt: skip
        excess = result.report["flash_bytes"] - budget
        if excess > 0:
            raise DoesNotFitError(f"flash {result.report['flash_bytes']:,} B exceeds --max-flash {budget:,} B by "
                                  f"{excess:,} B with no layer left that reads int16 weight records")
    return replace(result, outdir=outdir)


def _patch_and_lower(model, int_graph: IntGraph | None, options: BuildOptions, target: Target, naming: Naming,
                     log):  # fmt: skip
    """(integer graph, lowered model, the patching report or None). Quantized builds may run their
    first stage patch by patch (--patch, or to meet --max-ram: quant/patches.py)."""
    from edgecomp.codegen.memory import plan_model
    from edgecomp.lower import lower_model  # TVM: loaded only by builds that compile
    from edgecomp.options import parse_patch
    from edgecomp.quant import patches

    def lower(graph):
        return lower_model(model if graph is not None else fold_constants(model).model, graph,
                           options.kernels, target.features, naming.ns, frozenset(options.narrow_records),
                           options.optimize)  # fmt: skip

    if int_graph is None:
        if options.patch != "none" or options.max_ram is not None:
            raise UserError("--patch and --max-ram (without --fit) apply to quantized models: add --quantize")
        if options.optimize != "balanced":
            raise UserError(f"--optimize {options.optimize} chooses integer kernels' weight records: a float build "
                            "has none (add --quantize int8)")  # fmt: skip
        return None, lower(None), None
    mode, arg, grid = parse_patch(options.patch)
    if mode == "none" and options.max_ram is None:
        return int_graph, lower(int_graph), None
    if mode == "cut":
        try:
            patched = patches.patch_graph(int_graph, arg, grid)
        except ValueError as exc:
            raise UserError(f"--patch {options.patch}: {exc}; the stages that can be cut end at: "
                            f"{', '.join(patches.candidates(int_graph)[:8])}") from exc  # fmt: skip
        plan = patches.PatchPlan(arg, grid, patches.live_peak(patched), patches.live_peak(int_graph),
                                 patches.macs(patched), patches.macs(int_graph))  # fmt: skip
        return patched, lower(patched), _patch_report(plan, None)
    plans = patches.all_plans(int_graph)
    if options.max_ram is None:  # --patch auto: the smallest peak within the MAC cap
        plan = patches.smallest_peak(plans, arg)
        if plan is None:
            log("--patch auto: no patching lowers the peak within the MAC cap; building unpatched")
            return int_graph, lower(int_graph), None
        patched = patches.patch_graph(int_graph, plan.cut, plan.grid)
        return patched, lower(patched), _patch_report(plan, None)
    # --max-ram: the fewest MACs whose planned arena fits (the planner's real arena checked, up to 4 tries)
    arena_budget = options.max_ram - target.memory.get("stack_bytes", 0) - NON_ARENA_RAM
    lowered = lower(int_graph)
    if plan_model(lowered).arena_bytes <= arena_budget:
        return int_graph, lowered, None
    smallest = None
    # The estimate leaves out kernel scratch and the planner's packing, which differ from plan to plan
    # (IC ResNet-8: 1.2 to 2.3 KB): try the plans whose estimate fits, fewest MACs first, after a few
    # misses only those that fit with the smallest excess of an arena over its estimate seen, and
    # keep the first whose planned arena fits (up to PATCH_TRIES).
    excess: list[int] = []
    tried: list = []
    for attempt in range(PATCH_TRIES):
        margin = min(excess) if attempt >= PATCH_TRIES // 2 else 0
        plan = next((p for p in patches.within_budget(plans, arena_budget - margin) if p not in tried), None)
        if plan is None:  # none fits by its estimate: the smallest peak, once, to say how far off
            plan = patches.smallest_peak(plans, float("inf"))
            if plan is None or plan in tried:
                break
        tried.append(plan)
        patched = patches.patch_graph(int_graph, plan.cut, plan.grid)
        lowered = lower(patched)
        arena = plan_model(lowered).arena_bytes
        smallest = min(smallest or arena, arena)
        excess.append(arena - plan.peak_bytes)
        if arena <= arena_budget:
            log(f"--max-ram: first stage in {plan.grid[0]}x{plan.grid[1]} patches up to '{plan.cut}' "
                f"({plan.macs / plan.macs_before:.2f}x the MACs)")  # fmt: skip
            return patched, lowered, _patch_report(plan, options.max_ram)
    best = patches.smallest_peak(plans, float("inf"))
    raise DoesNotFitError(
        f"--max-ram {options.max_ram:,} B leaves {arena_budget:,} B for the arena (less the {target.name} stack "
        f"reserve and {NON_ARENA_RAM} B of other RAM); patch-based execution gets the live tensors down to "
        f"{(best.peak_bytes if best else patches.live_peak(int_graph)):,} B at best"
        + (f" and the arena to {smallest:,} B in the plans tried" if smallest else "")
        + ": raise the budget, prune or quantize further"
    )


def _patch_report(plan, budget: int | None) -> dict:
    return {**plan.as_dict(), "mac_ratio": round(plan.macs / plan.macs_before, 3), "max_ram": budget}


def _front_end(path: Path, options: BuildOptions):
    """(ONNX model, None), or for an integer TFLite model (None, its TflModel); a float TFLite
    model comes back as the equivalent ONNX model."""
    if is_tflite(path):
        from edgecomp.frontend.tflite import read_tflite

        tfl = read_tflite(path)
        if tfl.is_integer:
            for flag, given in (("--input-shape", options.input_shapes), ("--freeze", options.freeze),
                                ("--keep-input", options.keep_inputs)):  # fmt: skip
                if given:
                    raise UserError(f"{path}: {flag} does not apply to an integer TFLite model (its inputs are static)")
            return None, tfl
        from edgecomp.frontend.tflite_float import tflite_to_onnx

        return load_model_proto(tflite_to_onnx(tfl), path, options.input_shapes, options.freeze,
                                options.keep_inputs), None  # fmt: skip
    return load_model(path, options.input_shapes, options.freeze, options.keep_inputs), None


def _save_models(model: onnx.ModelProto | None, float_model: onnx.ModelProto | None, save_quantized: Path | None,
                 save_pruned: Path | None) -> None:  # fmt: skip
    """--save-quantized (the QDQ model) and --save-pruned (the float model after the graph passes)."""
    for path, m in ((save_quantized, model if float_model is not None else None),
                    (save_pruned, float_model if float_model is not None else model)):  # fmt: skip
        if path is not None and m is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            onnx.save(m, str(path))


def graph_passes(model: onnx.ModelProto, options: BuildOptions, prune_spec: dict | None,
                  calib: list[list[np.ndarray]] | None) -> tuple[onnx.ModelProto, dict]:  # fmt: skip
    """Lossless simplification (always), then structured pruning if asked; what each did.
    `calib`: the calibration samples, for dead channels and activation importance."""
    model, stats = simplify(model)
    model = fold_constants(onnx.shape_inference.infer_shapes(model)).model
    if calib is not None and options.quantize and options.dead_channels != "none":
        if options.dead_channels == "calib":
            upper, key = observed_upper_bounds(model, calib), "channels_dead_on_calibration"
        else:
            # The quantized model clamps its input to the calibrated range (within one step).
            xs = np.concatenate([s[0].reshape(-1) for s in calib])
            lo, hi = min(float(xs.min()), 0.0), max(float(xs.max()), 0.0)
            step = (hi - lo) / 255
            upper, key = interval_upper_bounds(model, lo - step, hi + step), "channels_dead_proven"
        model, zeroed = zero_dead_channels(model, upper)
        stats[key] = zeroed["zeroed"]
    masks = dead_channel_masks(model)
    if masks:
        model, dead = prune_channels(model, keep_masks=masks)
        stats["dead_channels_removed"] = sum(layer["channels"] - layer["kept"] for layer in dead["layers"])
    report: dict = {"simplify": stats}
    if prune_spec is not None and "channels" in prune_spec:
        ratio, per_layer = prune_spec["channels"], None
        if isinstance(ratio, str):
            per_layer, ratio = _load_ratios(Path(ratio)), 0.0
        if options.prune_importance == "activation" and calib is None:
            raise UserError("--prune-importance activation needs calibration data: --calib DATA")
        params_before = count_params(model)
        model, pruned = prune_channels(model, ratio, per_layer, options.prune_importance, calib)
        report["pruning"] = {
            **pruned,
            "params_before": params_before,
            "params_after": count_params(model),
        }
    if prune_spec is not None and "sparsity" in prune_spec:
        model, sparse = magnitude_prune(model, prune_spec["sparsity"], TILE_ROWS)
        report.setdefault("pruning", {})["magnitude"] = sparse
    return model, report


def float_model_of(model_path: Path, input_shapes: dict | None = None) -> onnx.ModelProto:
    """The float model as every build starts from it: front end, then the lossless graph passes
    (what `analyze` and `finetune` work on)."""
    model, _ = graph_passes(load_model(model_path, input_shapes or {}), BuildOptions(), None, None)
    return model


def _load_ratios(path: Path) -> dict[str, float]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read per-layer pruning ratios from {path}: {exc}") from exc
    if not isinstance(data, dict) or not all(
        isinstance(v, int | float) and 0 <= v < 1 for v in data.values()
    ):
        raise UserError(f"{path}: expected a JSON object of layer name -> ratio in [0, 1)")
    return {str(k): float(v) for k, v in data.items()}


def io_specs(model: onnx.ModelProto) -> list[dict]:
    """Name, shape and dtype of each model input (what .npy/.npz data files are checked against)."""
    from edgecomp.frontend.load import SUPPORTED_IO_DTYPES, graph_inputs

    return [
        {
            "name": i.name,
            "shape": [d.dim_value for d in i.type.tensor_type.shape.dim],
            "dtype": SUPPORTED_IO_DTYPES[i.type.tensor_type.elem_type],
        }
        for i in graph_inputs(model)
    ]


def _cached(outdir: Path, key: str, target: Target, options: BuildOptions, tfl=None) -> BuildResult | None:
    """The build in `outdir` if it was made from the same inputs (its key) and is complete."""
    try:
        report = json.loads((outdir / "report.json").read_text())
    except (OSError, ValueError):
        return None
    binary = outdir / ("harness" if target.is_process else "firmware.elf")
    if report.get("build_key") != key or not binary.exists():
        return None
    if tfl is not None:  # an integer TFLite model: its graph again from the same file
        return BuildResult(outdir, report, target, None, True, None,
                           _as_built(tflite_int_graph(tfl, options.io), report), tfl)  # fmt: skip
    if not (outdir / COMPILED_MODEL).exists():
        return None
    try:
        model = onnx.load(str(outdir / COMPILED_MODEL))
        float_model = onnx.load(str(outdir / FLOAT_MODEL)) if options.quantize else None
    except Exception:  # an unreadable leftover: rebuild
        return None
    int_graph = int_graph_for(fold_constants(model).model, options.io or "float") if is_quantized(model) else None
    return BuildResult(outdir, report, target, model, True, float_model, _as_built(int_graph, report))


def _check_fit(target: Target, sizes: ElfSizes) -> None:
    problems = []
    if target.flash_budget and sizes.flash_bytes > target.flash_budget:
        over = sizes.flash_bytes - target.flash_budget
        problems.append(f"flash {sizes.flash_bytes:,} B > {target.flash_budget:,} B by {over:,} B")
    ram = sizes.ram_bytes + sizes.stack
    if target.ram_budget and ram > target.ram_budget:
        over = ram - target.ram_budget
        problems.append(
            f"RAM {ram:,} B (static {sizes.ram_bytes:,} + stack {sizes.stack:,}) > {target.ram_budget:,} B by {over:,} B"
        )
    ext = target.external
    if ext and sizes.external_flash > ext["flash_length"]:
        over = sizes.external_flash - ext["flash_length"]
        problems.append(
            f"external flash {sizes.external_flash:,} B > {ext['flash_length']:,} B by {over:,} B"
        )
    if ext and sizes.external_ram > ext["ram_length"]:
        over = sizes.external_ram - ext["ram_length"]
        problems.append(f"external RAM {sizes.external_ram:,} B > {ext['ram_length']:,} B by {over:,} B")
    if problems:
        raise DoesNotFitError(
            f"the model does not fit {target.name} ({target.part}): {'; '.join(problems)}. "
            "Quantize or prune it, pick a bigger target, or pass --no-fit-check to build anyway"
        )


def _report(
    model_path, model, int_graph, target, options, key, lowered: LoweredModel, plan, sizes, t_gen, t_total
) -> dict:
    layers = [
        {
            "index": i,
            "kernel": c.kernel,
            "variant": c.micro.variant if c.micro is not None and c.micro.variant else "tvm",
            "inputs": list(c.inputs),
            "outputs": list(c.outputs),
            # each output's type, and the model tensor (ONNX; the integer graph's when quantized) whose
            # value it holds, if any: what `edgecomp validate` compares it with
            "produces": [{"tensor": o, "shape": list(lowered.tensors[o].shape), "dtype": lowered.tensors[o].dtype,
                          "computes": lowered.sources.get(o)} for o in c.outputs],  # fmt: skip
            "macs": c.macs,
            "workspace_bytes": c.workspace_bytes,
        }
        for i, c in enumerate(lowered.calls)
    ]
    rounding = "half_away" if model is None else "half_even"  # how float data for an integer input is quantized
    report = {
        "edgecomp_version": __version__,
        "model": str(model_path),
        "target": target.as_dict(),
        "options": options.as_dict(),
        "build_key": key,
        "quantized": any(
            t.dtype in ("int8", "int16") for t in lowered.tensors.values() if t.kind == "intermediate"
        ),
        "macs": lowered.macs,
        "params": count_params(model) if model is not None else int_graph.params,
        "weights_bytes": sum(t.nbytes for t in lowered.tensors.values() if t.kind == "const"),
        "arena_bytes": plan.arena_bytes,
        "arena_unshared_bytes": plan.unshared_bytes,
        "inputs": [_tensor_entry(lowered.tensors[n], lowered.qparams, rounding) for n in lowered.inputs],
        "outputs": [_tensor_entry(lowered.tensors[n], lowered.qparams) for n in lowered.outputs],
        "layers": layers,
        "memory_plan": plan.as_dict()["buffers"],
        "compile_time_s": round(t_total, 3),
        "codegen_time_s": round(t_gen, 3),
        "toolchain": {  # what produced the figures, recorded with them
            "compiler": compiler_for(target),
            "version": compiler_version(compiler_for(target)),
            "cflags": " ".join(
                [*target.arch_flags, "-std=c99", *target.opt_flags, *options.extra_cflags.split()]
            ),
        },
        "core_clock_hz": target.clock_hz,
        "caches": target.caches,
    }
    if sizes is not None:
        if target.external:
            report["external"] = {
                "flash_bytes": sizes.external_flash, "flash_budget": target.external["flash_length"],
                "ram_bytes": sizes.external_ram, "ram_budget": target.external["ram_length"],
            }  # fmt: skip
        report.update(
            {
                "flash_bytes": sizes.flash_bytes,
                "ram_bytes": sizes.ram_bytes,
                "stack_reserved_bytes": sizes.stack,
                "sections": {"text": sizes.text, "data": sizes.data, "bss": sizes.bss},
                "fits": {
                    "flash_budget": target.flash_budget,
                    "ram_budget": target.ram_budget,
                    "flash_ok": sizes.flash_bytes <= target.flash_budget if target.flash_budget else None,
                    "ram_ok": sizes.ram_bytes + sizes.stack <= target.ram_budget
                    if target.ram_budget
                    else None,
                },
            }
        )
    return report


def _tensor_entry(t, qparams: dict, rounding: str | None = None) -> dict:
    entry = {"name": t.name, "shape": list(t.shape), "dtype": t.dtype}
    if t.name in qparams:
        entry["scale"], entry["zero_point"] = float(qparams[t.name][0]), int(qparams[t.name][1])
        if rounding == "half_away":  # TFLite's QUANTIZE; ONNX QuantizeLinear rounds half to even
            entry["rounding"] = rounding
    return entry
