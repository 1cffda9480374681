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
          save_quantized: Path | None = None, save_pruned: Path | None = None) -> BuildResult:  # fmt: skip
    """Choose each layer's weight width to fit the budget, build the choice into `outdir`."""
    from edgecomp.io import load_calibration, load_eval
    from edgecomp.passes import fold_constants
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
    int8 = build(model_path, target, work / "int8", replace(options, quantize="int8", weight_bits=(), fit_check=False),
                 reuse=True, log=quiet, calib=calib)  # fmt: skip
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

    chosen: dict[str, int] = {}
    if flash8 <= flash_budget:
        log(f"mixed: int8 fits ({flash8:,} B <= {flash_budget:,} B): every layer stays 8-bit")
        final = build(model_path, target, outdir, replace(options, quantize="mixed", weight_bits=(), fit_check=False),
                      reuse=True, log=quiet, calib=calib, eval_data=eval_data, save_quantized=save_quantized,
                      save_pruned=save_pruned)  # fmt: skip
    else:
        log(f"mixed: int8 needs {flash8:,} B flash, budget {flash_budget:,} B: measuring each layer at 4 bits "
            f"on {len(samples)} samples")  # fmt: skip
        named = name_layers(float_model)
        base = quantize_base(named, calib_samples, "int8", options.calib_method, INT4_OPSET)
        weights = int4_weights(base.float_model, base.model, base.floats, calib_samples[:GPTQ_SAMPLES])
        corrections = bias_corrections(base.float_model, base.model, base.floats, calib_samples[:CORRECTION_SAMPLES],
                                       weights=weights)  # fmt: skip
        ref = Reference(float_model)
        want = np.stack([ref.run(s)[0] for s in samples])

        def graph_of(bits: dict[str, int]):
            q, _ = set_weight_bits(base.model, base.floats, bits, corrections=corrections, weights=weights)
            return int_graph_for(fold_constants(onnx.shape_inference.infer_shapes(q)).model)

        def measure(bits: dict[str, int]) -> tuple[float, float | None]:
            g = graph_of(bits)
            got = np.stack([run_int_graph(g, s)[0] for s in samples])
            top = None
            if labels is not None:
                top = float(np.mean(got.reshape(len(samples), -1).argmax(axis=1) == labels))
            return float(sqnr_db(want, got)), top

        g8 = graph_of({})
        ops8 = {op.node: op for op in g8.ops if isinstance(op, LinearOp)}
        all4 = graph_of(dict.fromkeys(ops8, 4))
        ops4 = {op.node: op for op in all4.ops if isinstance(op, LinearOp)}
        s0, t0 = measure({})
        rows = []
        for name, op8 in ops8.items():
            op4 = ops4.get(name)
            if op4 is None or op4.weight_bits != 4:
                continue
            saved = const_bytes(op8, g8, target.features, options.kernels) - const_bytes(
                op4, all4, target.features, options.kernels
            )
            s, t = measure({name: 4})
            loss = max(_noise(s) - _noise(s0), 0.0) + (max(t0 - t, 0.0) if t is not None else 0.0)
            row = {"layer": name, "weights": int(op8.weight.size), "bytes_saved": int(saved), "sqnr_4bit_db": round(s, 2),
                   "loss": loss}  # fmt: skip
            if t is not None:
                row["top1_4bit"] = t
            rows.append(row)
            log(f"mixed: {name}: 4-bit saves {saved:,} B, output SQNR {s:.1f} dB" + (f", top-1 {t:.1%}" if t is not None else ""))
        rows.sort(key=lambda r: (r["loss"] + 1e-12) / max(r["bytes_saved"], 1))
        summary.update(int8_sqnr_db=round(s0, 2), layers=rows)
        if t0 is not None:
            summary["int8_top1"] = t0
        target_flash = flash_budget
        for _ in range(MAX_BUILDS):
            est, n = flash8, 0
            while est > target_flash and n < len(rows):
                est -= rows[n]["bytes_saved"]
                n += 1
            chosen = {r["layer"]: 4 for r in rows[:n]}
            opts = replace(options, quantize="mixed", weight_bits=tuple(sorted(chosen.items())), fit_check=False)
            log(f"mixed: {n} of {len(rows)} layers at 4 bits (estimated {est:,} B): building")
            res = build(model_path, target, outdir, opts, reuse=True, log=quiet, calib=calib, eval_data=eval_data,
                        save_quantized=save_quantized, save_pruned=save_pruned)  # fmt: skip
            flash = _flash(res)
            summary["builds"].append({"layers_4bit": n, "estimated_flash_bytes": est, "flash_bytes": flash})
            if flash <= flash_budget or n == len(rows):
                break
            # The estimate was short by this much: aim that far below it (not below the previous aim,
            # which the estimate may already undercut: the same choice would be built again).
            target_flash = min(target_flash, est) - (flash - flash_budget)
        else:
            last_flash, res = _flash(res), None
        for r in rows:
            r["weight_bits"] = chosen.get(r["layer"], 8)
        if res is None or _flash(res) > flash_budget:
            got = _flash(res) if res is not None else last_flash
            raise DoesNotFitError(
                f"--quantize mixed: even with {len(chosen)} of {len(rows)} layers at 4 bits the model needs "
                f"{got:,} B flash > {flash_budget:,} B; prune it (--prune) or pick a bigger target"
            )
        final = res
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
    sens = {r["layer"]: r for r in summary.get("layers", [])}
    for row in final.report.get("precision", []):
        if row["layer"] in sens:
            row["sqnr_4bit_db"] = sens[row["layer"]]["sqnr_4bit_db"]
    final.report["mixed"] = summary
    (final.outdir / "report.json").write_text(json.dumps(final.report, indent=2, default=float) + "\n")
    log(f"mixed: {len(chosen)} layers at 4 bits: {summary['flash_bytes']:,} B flash (budget {flash_budget:,} B, "
        f"int8 {flash8:,} B)")  # fmt: skip
    return final
