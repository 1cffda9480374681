"""Mixed precision under a budget (`--quantize mixed --max-flash SIZE [--max-ram SIZE]`): int8
activations everywhere, each Conv/Gemm/MatMul layer's weights int4 or int8, chosen so the build
fits the budget with the least measured loss.

1. The int8 build, for real: its flash (the linker's figure; on the host, which has no flash, the
   weights' bytes) is where the search starts. If it fits, nothing goes to 4 bits.
2. Sensitivity: for each layer alone at 4 bits (the rest int8), the output SQNR against the float
   model on the evaluation data (--eval, else calibration samples) with the integer reference
   (bit-identical to the device), and top-1 when there are labels. The loss of a layer is the
   noise power it adds (10^(-SQNR/10) over the all-int8 model's) plus, with labels, the top-1 it
   loses.
3. Bytes: what the layer's constants shrink by in the build (each kernel variant's layout, e.g.
   dwconv_s8's int16 weights, with the variant the target would choose).
4. Greedy: layers by loss per byte saved, until the estimated flash (int8's less the bytes saved)
   is under the budget; then a real build. If the linker's figure is still over (kernel code
   differs), more layers follow until the overshoot is covered, and the build is repeated.

int16 activations ("a16", passes/act16.py) where a layer needs them: before the weights are
chosen, each layer's output alone made int16 (its readers read int16), measured as above (only
when all of them int16 together gain A16_MIN_GAIN_DB: otherwise none can); a layer
whose a16 output raises the model's output SQNR by at least A16_MIN_GAIN_DB (and costs no top-1)
keeps it, most gain per extra RAM byte first, while the estimated RAM (int8's plus one byte per
widened element) stays within the RAM budget. Its flash cost (the int64 biases and kernels of the
int16-input layers) is counted like a saving in reverse; the 4-bit sensitivities are then measured
with the a16 layers in place. If the model cannot fit with them, it is fitted again without.

The report gets "precision" (each layer's bits, bytes, SQNR; pipeline.py) and "mixed" (the
search: budget, every layer's sensitivity and saving, the builds tried).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx

from edgecomp.errors import DoesNotFitError, UserError
from edgecomp.pipeline import BuildOptions, BuildResult, build, io_specs
from edgecomp.quant.accuracy import sqnr_db
from edgecomp.targets import Target

MAX_BUILDS = 6  # real builds tried after the estimate before giving up
BIG_MODEL_MACS = 20_000_000  # above this, sensitivity is measured on SMALL_SAMPLES samples only
SMALL_SAMPLES = 4
MAX_SAMPLES = 500
A16_MIN_GAIN_DB = 1.0  # output SQNR an int16 output must add to be worth its RAM and int16 kernels


def _flash(result: BuildResult) -> int:
    """The build's flash, or (a host build, which has none) its weights' bytes."""
    return int(result.report.get("flash_bytes") or result.report["weights_bytes"])


def _ram(result: BuildResult) -> int:
    r = result.report
    return (r.get("ram_bytes") or 0) + (r.get("stack_reserved_bytes") or 0)


def _noise(sqnr: float) -> float:
    return 0.0 if sqnr == float("inf") else 10 ** (-sqnr / 10)


def const_bytes(op, graph, features: frozenset[str], kernels: str) -> int:
    """Bytes of the constants a layer emits: those of the micro-kernel variant the target would
    choose, or TVM's (the weights, int4 packed two per byte, and the per-channel constants)."""
    from edgecomp.lower.kernels import select

    if kernels != "tvm":
        made = select(op, graph, 0, features)
        if made is not None:
            return int(sum(c.nbytes for c in made[2]))
    weights = -(-op.weight.size // 2) if op.weight_bits == 4 else op.weight.size
    return int(weights + op.bias.nbytes + 5 * op.weight.shape[0])


def mixed(model_path: Path, target: Target, outdir: Path, options: BuildOptions, calib: Path,
          eval_data: Path | None, max_flash: int | None, max_ram: int | None, log=print,
          save_quantized: Path | None = None, save_pruned: Path | None = None, act16: bool = True
          ) -> BuildResult:  # fmt: skip
    """Choose each layer's weight width (and, with `act16`, output activation width) to fit the
    budget, build the choice into `outdir`."""
    from edgecomp.io import load_calibration, load_eval
    from edgecomp.passes import fold_constants
    from edgecomp.passes.act16 import set_act_bits
    from edgecomp.passes.int4 import INT4_OPSET, bias_corrections, int4_weights, name_layers, set_weight_bits
    from edgecomp.passes.quantize import CORRECTION_SAMPLES, GPTQ_SAMPLES, quantize_base
    from edgecomp.quant import int_graph_for, run_int_graph
    from edgecomp.quant.ir import LinearOp
    from edgecomp.verify import Reference

    flash_budget = max_flash or target.flash_budget
    ram_budget = max_ram or target.ram_budget
    if max_ram is not None:  # every build meets it, patching its first stage if it must (pipeline.py)
        options = replace(options, max_ram=max_ram)
    if not flash_budget:
        raise UserError(f"target {target.name} has no flash budget: give --max-flash")
    quiet = lambda *_: None  # noqa: E731
    work = outdir.with_name(outdir.name + "-mixed")
    log("mixed: building int8 first")
    int8 = build(model_path, target, work / "int8",
                 replace(options, quantize="int8", weight_bits=(), act_bits=(), fit_check=False), reuse=True, log=quiet,
                 calib=calib)  # fmt: skip
    flash8 = _flash(int8)
    summary: dict = {"flash_budget": flash_budget, "ram_budget": ram_budget, "int8_flash_bytes": flash8,
                     "int8_ram_bytes": _ram(int8), "builds": []}  # fmt: skip
    float_model = int8.float_model
    calib_samples = load_calibration(calib, io_specs(float_model))
    if eval_data is not None:
        samples, labels = load_eval(eval_data, io_specs(float_model))
    else:
        samples, labels = calib_samples[:16], None
    cap = SMALL_SAMPLES if int8.report["macs"] > BIG_MODEL_MACS else MAX_SAMPLES
    samples = samples[:cap]
    labels = None if labels is None else np.asarray(labels).reshape(-1)[:cap]
    summary["metric"] = "top1 + noise" if labels is not None else "noise (output SQNR)"
    summary["samples"] = len(samples)

    named = name_layers(float_model)
    base = quantize_base(named, calib_samples, "int8", options.calib_method, INT4_OPSET)
    corrections: dict = {}
    weights: dict = {}  # int4 weights (GPTQ, passes/int4.py int4_weights), made with the 4-bit sensitivities

    def graph_of(bits: dict[str, int], acts: frozenset[str] = frozenset()):
        q, _ = set_weight_bits(base.model, base.floats, bits, corrections=corrections, weights=weights or None)
        return int_graph_for(fold_constants(onnx.shape_inference.infer_shapes(set_act_bits(q, acts))).model)

    ref = Reference(float_model)
    want = np.stack([ref.run(s)[0] for s in samples])

    def measure(bits: dict[str, int], acts: frozenset[str] = frozenset()) -> tuple[float, float | None]:
        g = graph_of(bits, acts)
        got = np.stack([run_int_graph(g, s)[0] for s in samples])
        top = None
        if labels is not None:
            top = float(np.mean(got.reshape(len(samples), -1).argmax(axis=1) == labels))
        return float(sqnr_db(want, got)), top

    g8 = graph_of({})
    ops8 = {op.node: op for op in g8.ops if isinstance(op, LinearOp)}
    s8, t8 = measure({})
    summary["int8_sqnr_db"] = round(s8, 2)
    if t8 is not None:
        summary["int8_top1"] = t8
    a16: frozenset[str] = frozenset()
    if act16:
        a16 = _choose_a16(ops8, g8, measure, s8, t8, _ram(int8), ram_budget, summary, log)

    def a16_flash(acts: frozenset[str]) -> int:
        """The constants' bytes int16 activations add (int64 biases, int16-input kernels)."""
        if not acts:
            return 0
        g = graph_of({}, acts)
        return sum(const_bytes(op, g, target.features, options.kernels) for op in g.ops if isinstance(op, LinearOp)) - sum(
            const_bytes(op, g8, target.features, options.kernels) for op in ops8.values())  # fmt: skip

    rows: list[dict] | None = None

    def sensitivities(acts: frozenset[str]) -> list[dict]:
        """Each layer alone at 4 bits (with the a16 layers `acts`): loss, bytes saved."""
        if not weights:
            weights.update(int4_weights(base.float_model, base.model, base.floats, calib_samples[:GPTQ_SAMPLES]))
            corrections.update(bias_corrections(base.float_model, base.model, base.floats,
                                                calib_samples[:CORRECTION_SAMPLES], weights=weights))  # fmt: skip
        log(f"mixed: measuring each layer at 4 bits on {len(samples)} samples")
        g = graph_of({}, acts)
        ops = {op.node: op for op in g.ops if isinstance(op, LinearOp)}
        all4 = graph_of(dict.fromkeys(ops, 4), acts)
        ops4 = {op.node: op for op in all4.ops if isinstance(op, LinearOp)}
        s0, t0 = measure({}, acts)
        out = []
        for name, op8 in ops.items():
            op4 = ops4.get(name)
            if op4 is None or op4.weight_bits != 4:
                continue
            saved = const_bytes(op8, g, target.features, options.kernels) - const_bytes(
                op4, all4, target.features, options.kernels
            )
            s, t = measure({name: 4}, acts)
            loss = max(_noise(s) - _noise(s0), 0.0) + (max(t0 - t, 0.0) if t is not None else 0.0)
            row = {"layer": name, "weights": int(op8.weight.size), "bytes_saved": int(saved), "sqnr_4bit_db": round(s, 2),
                   "loss": loss}  # fmt: skip
            if t is not None:
                row["top1_4bit"] = t
            out.append(row)
            log(f"mixed: {name}: 4-bit saves {saved:,} B, output SQNR {s:.1f} dB" + (f", top-1 {t:.1%}" if t is not None else ""))
        out.sort(key=lambda r: (r["loss"] + 1e-12) / max(r["bytes_saved"], 1))
        return out

    def fit(acts: frozenset[str]) -> tuple[BuildResult | None, dict[str, int]]:
        """Builds with the a16 layers `acts` and ever more 4-bit layers until one fits the flash."""
        nonlocal rows
        extra = a16_flash(acts)
        target_flash, chosen = flash_budget, {}
        for _ in range(MAX_BUILDS):
            est, n = flash8 + extra, 0
            if est > target_flash and rows is None:
                log(f"mixed: int8{' with int16 outputs' if acts else ''} needs ~{est:,} B flash, budget "
                    f"{flash_budget:,} B")  # fmt: skip
                rows = sensitivities(acts)
            while est > target_flash and n < len(rows or []):
                est -= rows[n]["bytes_saved"]
                n += 1
            chosen = {r["layer"]: 4 for r in (rows or [])[:n]}
            opts = replace(options, quantize="mixed", weight_bits=tuple(sorted(chosen.items())),
                           act_bits=tuple((name, 16) for name in sorted(acts)), fit_check=False)  # fmt: skip
            log(f"mixed: {n} of {len(rows or [])} layers at 4 bits, {len(acts)} with int16 outputs "
                f"(estimated {est:,} B): building")  # fmt: skip
            res = build(model_path, target, outdir, opts, reuse=True, log=quiet, calib=calib, eval_data=eval_data,
                        save_quantized=save_quantized, save_pruned=save_pruned)  # fmt: skip
            flash = _flash(res)
            summary["builds"].append({"layers_4bit": n, "layers_a16": len(acts), "estimated_flash_bytes": est,
                                      "flash_bytes": flash})  # fmt: skip
            if flash <= flash_budget:
                return res, chosen
            if rows is not None and n == len(rows):
                break
            # The estimate was short by this much: aim that far below it (not below the previous aim,
            # which the estimate may already undercut: the same choice would be built again).
            target_flash = min(target_flash, est) - (flash - flash_budget)
        return None, chosen

    final, chosen = fit(a16)
    if a16 and (final is None or (ram_budget and _ram(final) > ram_budget)):
        log("mixed: the model does not fit with int16 outputs: fitting it again with int8 activations only")
        a16 = frozenset()
        rows = None
        final, chosen = fit(a16)
    if final is None:
        n_rows = len(rows or [])
        got = summary["builds"][-1]["flash_bytes"] if summary["builds"] else flash8
        raise DoesNotFitError(
            f"--quantize mixed: even with {len(chosen)} of {n_rows} layers at 4 bits the model needs "
            f"{got:,} B flash > {flash_budget:,} B; prune it (--prune) or pick a bigger target"
        )
    if not chosen and not a16:
        log(f"mixed: int8 fits ({flash8:,} B <= {flash_budget:,} B): every layer stays 8-bit")
    for r in rows or []:
        r["weight_bits"] = chosen.get(r["layer"], 8)
    if rows is not None:
        summary["layers"] = rows
    fits = final.report.get("fits", {})
    if options.fit_check and (fits.get("flash_ok") is False or fits.get("ram_ok") is False):
        raise DoesNotFitError(f"--quantize mixed: the chosen model ({_flash(final):,} B flash, {_ram(final):,} B RAM "
                              f"incl. stack) does not fit {target.name} itself; pass --no-fit-check to build anyway")  # fmt: skip
    if ram_budget and _ram(final) > ram_budget:
        raise DoesNotFitError(f"--quantize mixed: the model needs {_ram(final):,} B RAM (incl. stack) > {ram_budget:,} B; "
                              "int4 weights do not reduce RAM: give --max-ram (patch-based execution), prune it or "
                              "pick a bigger target")  # fmt: skip
    summary["flash_bytes"] = _flash(final)
    summary["layers_4bit"] = sorted(chosen)
    summary["layers_a16"] = sorted(a16)
    sens = {r["layer"]: r for r in summary.get("layers", [])}
    sens16 = {r["layer"]: r for r in summary.get("act16", [])}
    for row in final.report.get("precision", []):
        if row["layer"] in sens:
            row["sqnr_4bit_db"] = sens[row["layer"]]["sqnr_4bit_db"]
        if row["layer"] in sens16:
            row["sqnr_a16_db"] = sens16[row["layer"]]["sqnr_a16_db"]
    final.report["mixed"] = summary
    (final.outdir / "report.json").write_text(json.dumps(final.report, indent=2, default=float) + "\n")
    log(f"mixed: {len(chosen)} layers at 4 bits, {len(a16)} with int16 outputs: {summary['flash_bytes']:,} B flash "
        f"(budget {flash_budget:,} B, "
        f"int8 {flash8:,} B)")  # fmt: skip
    return final


def _choose_a16(ops8: dict, g8, measure, s8: float, t8: float | None, ram8: int, ram_budget: int | None,
                summary: dict, log) -> frozenset[str]:  # fmt: skip
    """The layers whose int16 output is worth it (module docstring), within the RAM budget. All
    candidates together first: when even that gains less than A16_MIN_GAIN_DB (the noise the int8
    outputs add is small), no layer alone is measured — one run instead of one per layer."""
    rows = []
    extras = {name: int(np.prod(g8.tensors[op.output].shape)) for name, op in ops8.items()}  # +1 B an element
    candidates = [name for name in ops8 if not ram_budget or ram8 + extras[name] <= ram_budget]
    if not candidates:
        return frozenset()
    s_all, _ = measure({}, frozenset(candidates))
    summary["a16_all_gain_db"] = round(s_all - s8, 2)
    if s_all - s8 < A16_MIN_GAIN_DB:
        log(f"mixed: int16 outputs everywhere would add {s_all - s8:+.1f} dB output SQNR: activations stay int8")
        return frozenset()
    for name in candidates:
        extra = extras[name]
        s, t = measure({}, frozenset({name}))
        row = {"layer": name, "sqnr_a16_db": round(s, 2), "gain_db": round(s - s8, 2), "ram_extra_bytes": extra}
        if t is not None:
            row["top1_a16"] = t
        row["chosen"] = s - s8 >= A16_MIN_GAIN_DB and (t is None or t8 is None or t >= t8)
        rows.append(row)
        log(f"mixed: {name}: int16 output: output SQNR {s:.1f} dB ({s - s8:+.1f} dB)")
    ram = ram8
    for row in sorted((r for r in rows if r["chosen"]), key=lambda r: -r["gain_db"] / max(r["ram_extra_bytes"], 1)):
        if ram_budget and ram + row["ram_extra_bytes"] > ram_budget:
            row["chosen"] = False
            continue
        ram += row["ram_extra_bytes"]
    summary["act16"] = rows
    return frozenset(r["layer"] for r in rows if r["chosen"])
