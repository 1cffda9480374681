"""Budget mode (`--fit`): search pruning ratios and quantization for the configuration that loses
the least accuracy while fitting a flash/RAM budget (by default the target's own).

Every candidate is really built (so flash and RAM are the linker's figures, not estimates) and
scored on the user's evaluation data: top-1 when it has labels, else output SQNR against the
unpruned float model. Quantized candidates are scored with the integer reference, which is
bit-identical to the device.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from edgecomp.errors import DoesNotFitError, UserError
from edgecomp.pipeline import BuildOptions, BuildResult, build, io_specs
from edgecomp.quant.accuracy import sqnr_db
from edgecomp.targets import Target
from edgecomp.verify import Reference, float_outputs

QUANTIZE = (None, "int8")
RATIOS = (0.0, 0.25, 0.5, 0.75)


def _usage(result: BuildResult) -> tuple[int, int]:
    r = result.report
    return r.get("flash_bytes") or 0, (r.get("ram_bytes") or 0) + (r.get("stack_reserved_bytes") or 0)


def _quality(result: BuildResult, samples, labels, base: np.ndarray) -> dict:
    out = np.stack([o[0] for o in float_outputs(result, samples)])
    top = out.reshape(len(samples), -1).argmax(axis=1)
    q = {"sqnr_db": round(sqnr_db(base, out), 2)}
    if labels is not None:
        q["top1"] = float(np.mean(top == np.asarray(labels).reshape(-1)))
    return q


def fit(model_path: Path, target: Target, outdir: Path, options: BuildOptions, calib: Path, eval_data: Path,
        max_flash: int | None, max_ram: int | None, log=print) -> tuple[BuildResult, dict]:  # fmt: skip
    """Build every candidate, pick the best that fits, and build it into `outdir`."""
    from edgecomp.io import load_eval

    if options.quantize or options.prune:
        raise UserError("--fit chooses --quantize and --prune itself: leave them out")
    flash_budget = max_flash or target.flash_budget
    ram_budget = max_ram or target.ram_budget
    if not flash_budget or not ram_budget:
        raise UserError(f"target {target.name} has no memory budget: give --max-flash and --max-ram")
    work = outdir.with_name(outdir.name + "-fit")
    base_opts = replace(options, fit_check=False)
    float_build = build(model_path, target, work / "float", base_opts, reuse=True, log=lambda *_: None)
    samples, labels = load_eval(eval_data, io_specs(float_build.model))
    ref = Reference(float_build.model)
    base = np.stack([ref.run(s)[0] for s in samples])
    rows = []
    for q in QUANTIZE:
        for r in RATIOS:
            name = f"{q or 'fp32'}-prune{r:g}"
            opts = replace(base_opts, quantize=q, prune=f"channels={r:g}" if r else None)
            log(f"fit: building {name}")
            res = build(model_path, target, work / name, opts, reuse=True, log=lambda *_: None,
                        calib=calib if q else None)  # fmt: skip
            flash, ram = _usage(res)
            row = {"config": name, "quantize": q, "prune_ratio": r, "flash_bytes": flash, "ram_bytes": ram,
                   "macs": res.report["macs"], "fits": flash <= flash_budget and ram <= ram_budget}  # fmt: skip
            if row["fits"]:
                row.update(_quality(res, samples, labels, base))
            rows.append(row)
    key = "top1" if labels is not None else "sqnr_db"
    fitting = [r for r in rows if r["fits"]]
    summary = {"flash_budget": flash_budget, "ram_budget": ram_budget, "metric": key, "candidates": rows}
    if not fitting:
        closest = min(rows, key=lambda r: max(r["flash_bytes"] / flash_budget, r["ram_bytes"] / ram_budget))
        raise DoesNotFitError(
            f"no configuration fits {flash_budget:,} B flash / {ram_budget:,} B RAM; the closest is "
            f"{closest['config']} with {closest['flash_bytes']:,} B flash and {closest['ram_bytes']:,} B RAM "
            "(incl. stack)"
        )
    best = max(fitting, key=lambda r: (r[key], -r["flash_bytes"]))
    summary["chosen"] = best["config"]
    log(
        f"fit: chose {best['config']} ({key} {best[key]}, {best['flash_bytes']:,} B flash, {best['ram_bytes']:,} B RAM)"
    )
    final = replace(
        options,
        quantize=best["quantize"],
        prune=f"channels={best['prune_ratio']:g}" if best["prune_ratio"] else None,
    )
    result = build(model_path, target, outdir, final, log=log, calib=calib if best["quantize"] else None)
    result.report["fit"] = summary
    (result.outdir / "report.json").write_text(json.dumps(result.report, indent=2) + "\n")
    return result, summary
