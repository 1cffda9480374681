"""Benchmark: instructions per inference (QEMU -icount), flash, RAM, arena, stack and compile time
for the MLPerf Tiny models, float and int8, as a table and JSON. Not a test: it reports numbers.

    python bench/run.py [--targets cortex-m7,cortex-m4] [--dtypes fp32,int8] [--json bench/results/x.json]
    python bench/run.py --targets cortex-a53-virt,cortex-a53 --large   # A-class rows, million-parameter models
    python bench/run.py --targets cortex-a53 --dtypes fp32 --huge --only mlp_wide   # 54 M parameters: compile cost

Models default to ../shared/models/mlperf-tiny (the float ONNX files and their *_sample.npy);
--large adds MobileNetV2 and MobileFaceNet (bench/models.py: published architectures, random
weights). A Linux target (cortex-a53: qemu-aarch64 user mode) checks correctness only: user mode
has no instruction counter; cortex-a53-virt (bare metal) gives the instructions. compile s and
compiler MB are the compiler's own wall time and peak resident memory (a fresh build in a child).

Every fp32 run is checked against onnxruntime (relative error); every int8 run bit for bit against
the integer reference, with its SQNR against the float model on the real sample inputs. int8 rows
show the ratio to TFLite Micro + CMSIS-NN from ../shared/baselines when that file is there.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import re
import resource
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from calib import augmented  # noqa: E402

from edgecomp.errors import EdgecompError
from edgecomp.frontend import load_model
from edgecomp.io import to_model_dtype
from edgecomp.options import CHOICES, parse_size
from edgecomp.pipeline import BuildOptions, BuildResult, build
from edgecomp.quant.accuracy import sqnr_db
from edgecomp.runner import integrity_cost, profile_record, run_samples
from edgecomp.targets import load_target
from edgecomp.verify import Reference, check_outputs

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODELS = REPO.parent / "shared" / "models" / "mlperf-tiny"
MODELS = {
    "ic_resnet8": "ic_samples4",
    "kws_dscnn": "kws_sample",
    "vww_mobilenet": "vww_samples2",
    "ad_autoencoder": "ad_sample",
}
BASELINE = REPO.parent / "shared" / "baselines" / "tflm-cmsis-nn-cortex-m7.md"
BASELINE_ROWS = {
    "IC ResNet-8": "ic_resnet8",
    "KWS DS-CNN": "kws_dscnn",
    "VWW MobileNet": "vww_mobilenet",
    "AD FC autoencoder": "ad_autoencoder",
}


def tflm_baseline() -> dict:
    """Instructions, flash and RAM (+stack) per model from the baseline table, if it is there."""
    if not BASELINE.exists():
        return {}
    rows = {}
    for line in BASELINE.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        key = next((v for k, v in BASELINE_ROWS.items() if cells and cells[0].startswith(k)), None)
        if key and len(cells) >= 7:
            num = [int(re.sub(r"[^0-9]", "", c.split()[0])) for c in cells[2:7]]
            rows[key] = {"instructions": num[0], "flash_bytes": num[2], "ram_bytes": num[3] + num[4]}
    return rows


def bench_one(model: Path, sample: Path, target_name: str, dtype: str, workdir: Path, prune: str | None = None,
              dead_channels: str = "none", integrity: bool = False, patch: str | None = None,
              max_flash: int | None = None, optimize: str = "balanced", max_ram: int | None = None) -> dict:  # fmt: skip
    """One row. Builds leave out the weights check (--no-integrity), as TFLite Micro has none; with
    `integrity` the row also gets what the check (edgecomp's default) adds: flash and boot time."""
    target = load_target(target_name)
    shape = None
    x_all = np.load(sample).astype(np.float32)
    calib = None
    options = BuildOptions(integrity=False)
    float_model = model
    if dtype == "tflite":  # the official int8 .tflite beside the float ONNX: the same model TFLM runs
        model = model.parent / "tflite-int8" / f"{model.stem}_int8.tflite"
        if not model.exists():
            raise EdgecompError(f"{model} not found")
    if dtype in ("int8", "w4a8", "mixed"):
        m = load_model(model)
        shape = tuple(d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim)
        calib = workdir / f"{model.stem}-calib.npy"
        calib.parent.mkdir(parents=True, exist_ok=True)
        np.save(calib, augmented(x_all.reshape((-1, *shape)), flip=len(shape) == 4 and shape[1] == 3))
        # Integer I/O, as TFLite Micro's int8 models take and give int8 tensors; by default the whole
        # network, as TFLite Micro runs it (`--dead-channels proven` is edgecomp build's default).
        options = BuildOptions(quantize="int8", io="int8", dead_channels=dead_channels, integrity=False)
        if dtype == "w4a8":
            options = replace(options, quantize="w4a8")
        if dtype == "mixed":  # the budget: the int8 build's code and 60 % of its constants (MIXED_RULE)
            options = replace(options, weight_bits=_mixed_choice(model, target, workdir, options, calib, prune))
            options = replace(options, quantize="mixed")
    if prune:
        options = replace(options, prune=prune)
    if patch:
        options = replace(options, patch=patch)
    if max_flash:
        options = replace(options, max_flash=max_flash)
    if max_ram:
        options = replace(options, max_ram=max_ram)
    if optimize != "balanced":
        options = replace(options, optimize=optimize)
    tag = (f"-{prune.replace('=', '')}" if prune else "") + (
        f"-dead{dead_channels}" if dead_channels != "none" else ""
    ) + (f"-patch{re.sub(r'[^A-Za-z0-9_.-]+', '_', patch.replace(':', ''))}" if patch else "") + (
        f"-flash{max_flash}" if max_flash else "") + (f"-ram{max_ram}" if max_ram else "") + (
        f"-{optimize}" if optimize != "balanced" else "")
    outdir = workdir / f"{model.stem}-{target_name}-{dtype}{tag}"
    # The compiler's own time and peak memory, measured in a child process that builds and exits.
    compile_s, peak_rss, result = _measured_build(model, target, outdir, options, calib)
    spec = result.report["inputs"][0]
    if dtype == "tflite":  # the samples are NCHW float (the ONNX models'); TFLite takes NHWC
        nchw = [s for s in x_all.reshape((-1, *_nchw(spec["shape"])))]
        float_samples = [[s] for s in nchw]
        samples = [[to_model_dtype(s.transpose(0, 2, 3, 1) if s.ndim == 4 else s, spec)] for s in nchw]
    else:
        float_samples = [[s] for s in x_all.reshape((-1, *spec["shape"]))]
        samples = [[to_model_dtype(s[0], spec)] for s in float_samples]
    runs = run_samples(result, samples[:1] if dtype == "fp32" else samples)
    rec = profile_record(result, runs[0], on_board=False)
    ref_model = result.float_model or result.model or load_model(float_model)
    floats = [Reference(ref_model).run(s) for s in float_samples[: len(runs)]]
    row = {
        "model": float_model.stem + (f" ({prune})" if prune else "") + (f" (patch {patch})" if patch else "")
        + (f" (max-flash {max_flash:,})" if max_flash else "") + (f" (max-ram {max_ram:,})" if max_ram else "")
        + (f" (optimize {optimize})" if optimize != "balanced" else "")
        + (f" (dead channels {dead_channels})" if dtype == "int8" and dead_channels != "none" else ""),
        "target": target_name, "dtype": dtype,
        "macs": rec["macs"],
        "instructions": rec["instructions"], "instructions_per_mac": rec.get("instructions_per_mac"),
        "flash_bytes": rec["flash_bytes"], "weights_bytes": rec["weights_bytes"], "ram_bytes": rec["ram_bytes"],
        "arena_bytes": rec["arena_bytes"], "stack_bytes": rec["stack_bytes"], "compile_time_s": round(compile_s, 2),
        "compiler_peak_rss_mb": round(peak_rss / 2**20, 1), "device": rec["device"],
    }  # fmt: skip
    if result.report.get("patches"):
        row["patches"] = result.report["patches"]
    if max_flash:
        row["narrow_records"] = list(result.report.get("options", {}).get("narrow_records", []))
    check = check_outputs(result, samples[: len(runs)], [r.outputs for r in runs], tolerance=1e-4)
    if dtype == "fp32":
        row["rel_error_vs_onnxruntime"] = check.figures["rel_error"]
    else:
        row["bit_exact_vs_reference"] = check.ok
        if dtype == "tflite":
            row["bit_exact_vs_tflm"] = check.figures.get("tflm_bit_exact")
        out = result.report["outputs"][0]
        deq = [(r.outputs[0].astype(np.float64) - out["zero_point"]) * out["scale"] for r in runs]
        row["sqnr_db_vs_float"] = round(sqnr_db(np.stack([f[0] for f in floats]), np.stack(deq)), 2)
        row["samples"] = len(runs)
    if integrity:  # the same build with the weights check: its flash and its instructions at boot
        checked = build(model, target, outdir.with_name(outdir.name + "-integrity"), replace(options, integrity=True),
                        reuse=True, log=lambda *_: None, calib=calib)  # fmt: skip
        cost = integrity_cost(checked)
        row["integrity"] = {"ok": cost["ok"], "boot_check_instructions": cost["instructions"],
                            "flash_bytes": checked.report["flash_bytes"],
                            "flash_added_bytes": checked.report["flash_bytes"] - row["flash_bytes"],
                            "ram_added_bytes": checked.report["ram_bytes"] - row["ram_bytes"]}  # fmt: skip
        if cost["instructions"] is not None:
            row["integrity"]["boot_check_per_weight_byte"] = round(cost["instructions"] / row["weights_bytes"], 1)
            if row["instructions"]:
                row["integrity"]["boot_check_in_inferences"] = round(cost["instructions"] / row["instructions"], 3)
    if prune:  # how far pruning moved the outputs from the unpruned float model
        original = Reference(load_model(model, {}))
        got = np.stack([f[0] for f in floats]) if dtype == "fp32" else np.stack(deq)
        want = np.stack([original.run(s)[0] for s in float_samples[: len(runs)]])
        row["sqnr_db_vs_unpruned_float"] = round(sqnr_db(want, got), 2)
    return row


MIXED_WEIGHTS_FRACTION = 0.6
MIXED_RULE = ("flash budget = the int8 build's flash less 40 % of its constants' bytes (its code and 60 % of its "
              "weights: 60 % of the whole flash is below all-int4 for models whose code outweighs their weights)")


def _mixed_choice(model: Path, target, workdir: Path, options: BuildOptions, calib: Path, prune: str | None
                  ) -> tuple[tuple[str, int], ...]:  # fmt: skip
    """The layers --quantize mixed puts at 4 bits for MIXED_RULE's budget (sensitivity measured on
    the calibration samples: output SQNR). The rows compare weight widths: activations stay int8
    (act16=False), as the rows' builds have them."""
    from edgecomp.mixed import mixed

    opts = replace(options, prune=prune) if prune else options
    int8 = build(model, target, workdir / f"{model.stem}-{target.name}-int8-formixed", replace(opts, quantize="int8"),
                 reuse=True, log=lambda *_: None, calib=calib)  # fmt: skip
    flash8 = int8.report.get("flash_bytes") or int8.report["weights_bytes"]
    budget = int(flash8 - (1 - MIXED_WEIGHTS_FRACTION) * int8.report["weights_bytes"])
    result = mixed(model, target, workdir / f"{model.stem}-{target.name}-mixed-search", replace(opts, fit_check=False),
                   calib, None, budget, None, log=lambda *_: None, act16=False)  # fmt: skip
    return tuple(sorted(dict.fromkeys(result.report["mixed"]["layers_4bit"], 4).items()))


def _measured_build(
    model: Path, target, outdir: Path, options: BuildOptions, calib: Path | None
) -> tuple[float, int, BuildResult]:
    """(seconds, peak resident bytes, the result) of a fresh build in a forked child: the Python
    process (TVM included) or the C compiler it ran, whichever peaked higher."""
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)

    def work() -> None:
        t0 = time.monotonic()
        try:
            result = build(model, target, outdir, options, log=lambda *_: None, calib=calib)
        except EdgecompError as exc:
            child.send(("error", str(exc)))
            return
        rss = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)  # fmt: skip
        child.send(("ok", (time.monotonic() - t0, rss * 1024, result)))

    proc = ctx.Process(target=work)
    proc.start()
    kind, value = parent.recv()
    proc.join()
    if kind == "error":
        raise EdgecompError(value)
    return value


def _nchw(shape: list[int]) -> tuple[int, ...]:
    """An NHWC input shape in the ONNX models' NCHW order (other ranks as they are)."""
    return (shape[0], shape[3], shape[1], shape[2]) if len(shape) == 4 else tuple(shape)


def _with_baseline(row: dict, name: str, baseline: dict) -> dict:
    """The row with its ratio to TFLite Micro + CMSIS-NN (int8, cortex-m7, unpruned; also a --max-flash or
    --optimize row)."""
    plain = row["model"] == name or row["model"].startswith((f"{name} (max-flash ", f"{name} (optimize "))
    if row["dtype"] in ("int8", "tflite") and row["target"] == "cortex-m7" and plain and name in baseline:
        b = baseline[name]
        ram = row["ram_bytes"] + (row["stack_bytes"] or 0)
        row["vs_tflm"] = {"instructions": round(row["instructions"] / b["instructions"], 3),
                          "flash": round(row["flash_bytes"] / b["flash_bytes"], 3),
                          "ram": round(ram / b["ram_bytes"], 3)}  # fmt: skip
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=Path, default=DEFAULT_MODELS)
    ap.add_argument("--targets", default="cortex-m7")
    ap.add_argument("--dtypes", default="fp32,int8",
                    help="fp32, int8 (quantized by edgecomp), w4a8 (int4 weights), mixed (4 or 8 bits per layer "
                         "for the budget of MIXED_RULE), tflite (the official int8 .tflite of "
                         "models/tflite-int8, TFLite's arithmetic, checked against TFLM's interpreter)")  # fmt: skip
    ap.add_argument("--only", help="comma-separated model names")
    ap.add_argument("--large", action="store_true",
                    help="also the million-parameter models of bench/models.py (MobileNetV2, MobileFaceNet)")  # fmt: skip
    ap.add_argument("--huge", action="store_true",
                    help="also the 54 M-parameter wide MLP of bench/models.py (compile time and compiler memory "
                         "of a model that is all weights)")  # fmt: skip
    ap.add_argument("--prune", help="also build every model with this --prune (e.g. channels=0.5)")
    ap.add_argument("--dead-channels", choices=["proven", "calib", "none"], default="none",
                    help="int8: remove dead channels as edgecomp build --dead-channels does [none: the whole "
                         "network, as TFLite Micro runs it]")  # fmt: skip
    ap.add_argument("--integrity", action="store_true",
                    help="also build each row with the weights check (edgecomp's default; the rows leave it "
                         "out, as TFLite Micro has none) and report its flash and its instructions at boot")  # fmt: skip
    ap.add_argument("--patch", help="int8/tflite: also build every model with this --patch (e.g. auto) and "
                                    "show its RAM and instructions beside the unpatched row")  # fmt: skip
    ap.add_argument("--max-ram", metavar="SIZE",
                    help="int8/tflite: also build every model with --max-ram SIZE (static RAM + the target's "
                         "reserved stack; met by patching, the fewest MACs that fit) beside the unbudgeted row")  # fmt: skip
    ap.add_argument("--max-flash-tflm", type=float, metavar="FRACTION",
                    help="int8/tflite: also build every model with --max-flash = FRACTION x its TFLM + CMSIS-NN "
                         "flash (the baseline table; e.g. 0.8) and show its instructions beside the unbudgeted row")  # fmt: skip
    ap.add_argument("--optimize", choices=CHOICES["optimize"], default="balanced",
                    help="int8/tflite: build every row with edgecomp's --optimize (the rows' names say it "
                         "when it is not the default) [balanced]")  # fmt: skip
    ap.add_argument("--json", type=Path, help="write the rows as JSON here")
    ap.add_argument("--workdir", type=Path, default=REPO / "build" / "bench")
    ap.add_argument(
        "--check",
        type=Path,
        metavar="EXPECTED.json",
        help="fail (exit 1) if a figure regressed beyond the tolerance or an output is not bit-exact",
    )
    ap.add_argument("--accept", type=Path, metavar="EXPECTED.json",
                    help="write these results as the new expected figures (a deliberate change; the rows "
                         "this run did not measure keep their figures)")  # fmt: skip
    args = ap.parse_args(argv)
    try:
        max_ram = parse_size(args.max_ram) if args.max_ram else None
    except EdgecompError as exc:
        print(f"bench: --max-ram: {exc}", file=sys.stderr)
        return 2
    if args.max_flash_tflm is not None and args.max_flash_tflm <= 0:
        print("bench: --max-flash-tflm is a positive fraction of TFLM's flash (e.g. 0.8)", file=sys.stderr)
        return 2
    if not args.models.is_dir() and not ((args.large or args.huge) and args.only):
        print(f"bench: model folder {args.models} not found (pass --models)", file=sys.stderr)
        return 2
    names = args.only.split(",") if args.only else list(MODELS)
    paths = {n: (args.models / f"{n}.onnx", args.models / f"{MODELS[n]}.npy") for n in MODELS}
    if args.large:
        from models import write_large_models

        large = write_large_models(args.workdir / "models")
        paths.update(large)
        names += [n for n in large if not args.only and n not in names]
    if args.huge:
        from models import HUGE_MODELS, write_large_models

        huge = write_large_models(args.workdir / "models", HUGE_MODELS)
        paths.update(huge)
        names += [n for n in huge if not args.only and n not in names]
    rows = []
    console = Console(width=160)
    baseline = tflm_baseline()
    for target in args.targets.split(","):
        for dtype in args.dtypes.split(","):
            for name in names:
                console.print(f"[dim]bench: {name} {dtype} on {target}[/dim]")
                variants = [(None, None, None, None)] + ([(args.prune, None, None, None)] if args.prune else []) + (
                    [(None, args.patch, None, None)] if args.patch and dtype in ("int8", "tflite") else [])
                if args.max_flash_tflm and dtype in ("int8", "tflite") and name in baseline:
                    variants.append((None, None, int(args.max_flash_tflm * baseline[name]["flash_bytes"]), None))
                if max_ram and dtype in ("int8", "tflite"):
                    variants.append((None, None, None, max_ram))
                for prune, patch, max_flash, max_ram in variants:
                    try:
                        row = bench_one(*paths[name], target, dtype, args.workdir, prune, args.dead_channels,
                                        args.integrity and patch is None and max_flash is None and max_ram is None,
                                        patch, max_flash, args.optimize if dtype != "fp32" else "balanced",
                                        max_ram)  # fmt: skip
                    except EdgecompError as exc:
                        console.print(f"[red]bench: {name} on {target}: {exc}[/red]")
                        rows.append({"model": name, "target": target, "dtype": dtype, "error": str(exc)})
                        continue
                    rows.append(_with_baseline(row, name, baseline))
    table = Table(title="edgecomp on QEMU -icount shift=0 (instructions exact)")
    for col in ("model", "target", "dtype", "MACs", "instructions", "instr/MAC", "flash B", "weights B", "RAM B",
                "arena B", "stack B", "compile s", "compiler MB", "check", "x TFLM instr/flash/RAM"):  # fmt: skip
        table.add_column(col, justify="left" if col in ("model", "target") else "right")
    for r in rows:
        if "error" in r:
            table.add_row(r["model"], r["target"], r["dtype"], "error: " + r["error"][:60])
            continue
        check = (f"rel err {r['rel_error_vs_onnxruntime']:.1e}" if r["dtype"] == "fp32" else
                 f"{'bit-exact' if r['bit_exact_vs_reference'] else 'MISMATCH'}"
                 f"{' (TFLM too)' if r.get('bit_exact_vs_tflm') else ''}, {r['sqnr_db_vs_float']:.1f} dB")  # fmt: skip
        vs = r.get("vs_tflm")

        def n(v, fmt="{:,}"):
            return "-" if v is None else fmt.format(v)

        table.add_row(r["model"], r["target"], r["dtype"], n(r["macs"]), n(r["instructions"]),
                      n(r["instructions_per_mac"], "{:.3f}"), n(r["flash_bytes"]), n(r["weights_bytes"]),
                      n(r["ram_bytes"]), n(r["arena_bytes"]), n(r["stack_bytes"]), f"{r['compile_time_s']:.1f}",
                      f"{r['compiler_peak_rss_mb']:.0f}", check,
                      f"{vs['instructions']:.2f} / {vs['flash']:.2f} / {vs['ram']:.2f}" if vs else "")  # fmt: skip
    console.print(table)
    checked = [r for r in rows if "integrity" in r]
    if checked:
        table = Table(title="the weights check (SHA-256 at boot, --no-integrity leaves it out): its cost")
        for col in ("model", "target", "dtype", "weights B", "flash added B", "RAM added B",
                    "boot check instructions", "per weight byte", "in inferences"):  # fmt: skip
            table.add_column(col, justify="left" if col in ("model", "target") else "right")
        for r in checked:
            c = r["integrity"]
            table.add_row(r["model"], r["target"], r["dtype"], f"{r['weights_bytes']:,}", f"{c['flash_added_bytes']:,}",
                          f"{c['ram_added_bytes']:,}", "-" if c["boot_check_instructions"] is None else
                          f"{c['boot_check_instructions']:,}", str(c.get("boot_check_per_weight_byte", "-")),
                          str(c.get("boot_check_in_inferences", "-")))  # fmt: skip
        console.print(table)
    if args.accept:
        kept = json.loads(args.accept.read_text()) if args.accept.exists() else {}
        figures = {**kept, **expected_figures(rows)}
        args.accept.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
        console.print(f"bench: wrote the expected figures to {args.accept}")
    status = 0
    if args.check:
        problems, notes = check_figures(rows, json.loads(args.check.read_text()))
        for line in notes:
            console.print(f"[green]bench: {line}[/green]")
        for line in problems:
            console.print(f"[red]bench: {line}[/red]")
        if problems:
            console.print(
                f"bench: to accept a deliberate change: python bench/run.py ... --accept {args.check}"
            )
            status = 1
    text = json.dumps(rows, indent=2)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    elif not args.check:
        print(text)
    return status


# QEMU -icount makes instruction counts exact, so the tolerance only absorbs deliberate noise-free
# drift such as a different compiler patch release; memory is in bytes.
TOLERANCE = {"instructions": 0.002, "flash_bytes": 0.01, "ram_bytes": 0.01, "stack_bytes": 0.25}


def _key(row: dict) -> str:
    return f"{row['model']}/{row['target']}/{row['dtype']}"


def expected_figures(rows: list[dict]) -> dict:
    return {_key(r): {k: r[k] for k in TOLERANCE} for r in rows if "error" not in r}


def check_figures(rows: list[dict], expected: dict) -> tuple[list[str], list[str]]:
    """(regressions and failures, improvements worth accepting) against `expected`."""
    problems, notes = [], []
    for r in rows:
        key = _key(r)
        if "error" in r:
            problems.append(f"{key}: {r['error']}")
            continue
        if r.get("bit_exact_vs_reference") is False:
            problems.append(f"{key}: output is not bit-exact with the integer reference")
        want = expected.get(key)
        if want is None:
            notes.append(f"{key}: no expected figures yet")
            continue
        for k, tol in TOLERANCE.items():
            got, ref = r[k], want[k]
            if got is None or ref is None:
                continue
            if got > ref * (1 + tol) + (16 if k == "stack_bytes" else 0):
                problems.append(f"{key}: {k} {got:,} > expected {ref:,} (+{100 * (got / ref - 1):.2f}%)")
            elif got < ref * (1 - tol):
                notes.append(f"{key}: {k} {got:,} < expected {ref:,} ({100 * (got / ref - 1):.2f}%)")
    return problems, notes


if __name__ == "__main__":
    raise SystemExit(main())
