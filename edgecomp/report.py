"""What a person sees: progress lines and rich tables for build, run and profile."""

from __future__ import annotations

import numpy as np
from rich.console import Console
from rich.table import Table

from edgecomp.pipeline import BuildResult
from edgecomp.verify import Comparison

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


def log(message: str) -> None:
    err_console.print(f"[dim]edgecomp:[/dim] {message}")


def _kb(n: int | None) -> str:
    return "-" if n is None else f"{n:,} B ({n / 1024:.1f} KiB)"


def print_targets() -> None:
    from edgecomp.targets import available_targets, load_target

    table = Table("target", "core", "part / budget", "flash", "RAM", "QEMU machine")
    for name in available_targets():
        t = load_target(name)
        table.add_row(t.name, t.core, t.part or t.description, _kb(t.flash_budget or None),
                      _kb(t.ram_budget or None), t.qemu.get("machine", "-"))  # fmt: skip
    console.print(table)


def print_ops(rows: list[dict]) -> None:
    table = Table("op", "tested", "element types", "limits", title="ONNX operators edgecomp compiles")
    for r in rows:
        table.add_row(r["op"], r["tested"], r["dtypes"], r["limits"])
    console.print(table)


def print_build(result: BuildResult) -> None:
    r = result.report
    table = Table(title=f"{r['model']} -> {r['target']['name']}", show_header=False)
    table.add_row("output", str(result.outdir))
    table.add_row("kernels", str(len(r["layers"])))
    table.add_row("MACs", f"{r['macs']:,}")
    table.add_row("parameters", f"{r['params']:,} ({_kb(r['weights_bytes'])})")
    table.add_row("arena", f"{_kb(r['arena_bytes'])} (unshared {r['arena_unshared_bytes']:,} B)")
    if "flash_bytes" in r:
        t = r["target"]
        table.add_row("flash", f"{_kb(r['flash_bytes'])} of {_kb(t['flash_budget'])}")
        table.add_row(
            "RAM (data+bss)",
            f"{_kb(r['ram_bytes'])} + stack {r['stack_reserved_bytes']:,} B of {_kb(t['ram_budget'])}",
        )
    table.add_row("compile time", f"{r['compile_time_s']:.2f} s")
    console.print(table)
    if "accuracy" in r:
        print_accuracy(r["accuracy"])


def print_export(result) -> None:
    """`edgecomp export`: where the library went and what it costs the program that links it."""
    r, lib = result.report, result.report["library"]
    table = Table(title=f"{r['model']} -> {'/'.join(r['formats'])} library '{r['name']}' for {r['target']['name']}",
                  show_header=False)  # fmt: skip
    table.add_row("output", str(result.outdir))
    table.add_row("API", f"{r['header']}: {r['name']}_init / {r['name']}_invoke / {r['name']}_run")
    table.add_row("MACs", f"{r['macs']:,}")
    owner = f"the caller's ({r['name']}_init)" if r["arena"] == "caller" else "static, in the library"
    table.add_row("arena", f"{_kb(r['arena_bytes'])}, {owner}")
    table.add_row("library flash", f"{_kb(lib['flash_bytes'])} (code and weights)")
    table.add_row("library RAM", f"{_kb(lib['ram_bytes'])} (data+bss{', arena included' if r['arena'] == 'static' else ''})")
    table.add_row("checked with", f"{lib['compiler']} {lib['cflags']}")
    console.print(table)


def print_accuracy(acc: dict) -> None:
    table = Table(title=f"quantized vs float on {acc['samples']} samples", show_header=False)
    if "float_top1" in acc:
        table.add_row("top-1 float / quantized", f"{acc['float_top1']:.2%} / {acc['quantized_top1']:.2%} "
                      f"({acc['top1_delta_pp']:+.2f} pp)")  # fmt: skip
    table.add_row("output SQNR", f"{acc['output_sqnr_db']:.1f} dB")
    table.add_row("max abs error", f"{acc['max_abs_error']:.4g}")
    table.add_row("argmax agreement", f"{acc['argmax_agreement']:.2%}")
    worst = sorted(acc["per_layer_sqnr_db"], key=lambda e: e["sqnr_db"])[:3]
    if worst:
        table.add_row(
            "lowest per-layer SQNR", ", ".join(f"{e['tensor']} {e['sqnr_db']:.1f} dB" for e in worst)
        )
    console.print(table)


def print_run(runs) -> None:
    for i, run in enumerate(runs):
        parts = [f"sample {i}:"]
        if run.instructions is not None:
            parts.append(f"{run.instructions:,} instructions")
        if run.stack_bytes is not None:
            parts.append(f"stack {run.stack_bytes:,} B")
        console.print(" ".join(parts) if len(parts) > 1 else f"sample {i}: done")


def print_comparison(cmp: Comparison, tolerance: float) -> None:
    verdict = "[green]match[/green]" if cmp.within(tolerance) else "[red]MISMATCH[/red]"
    console.print(
        f"vs onnxruntime: max abs error {cmp.max_abs_error:.3g}, relative {cmp.rel_error:.3g} "
        f"(tolerance {tolerance:g}), argmax agreement {cmp.argmax_agreement:.0%}: {verdict}"
    )


def print_profile(record: dict) -> None:
    table = Table(title=f"{record['model']} on {record['target']} ({record['device']})", show_header=False)
    for key, label in (("instructions", "instructions / inference"), ("cycles", "cycles / inference"),
                       ("host_ns", "host wall time (ns)"), ("instructions_per_mac", "instructions / MAC")):  # fmt: skip
        if record.get(key) is not None:
            table.add_row(label, f"{record[key]:,}")
    if record.get("latency_ms") is not None:
        table.add_row("latency", f"{record['latency_ms']:.3f} ms at {record['clock_hz'] / 1e6:g} MHz")
    cold = record.get("cold") or {}
    for key in ("instructions", "cycles"):
        if cold.get(key) is not None:
            table.add_row(f"first inference ({key})", f"{cold[key]:,} (cold; the figure above is warm)")
    table.add_row("MACs", f"{record['macs']:,}")
    table.add_row("params", f"{record['params']:,}")
    flt = record.get("float", {})
    for key, label in (("flash_bytes", "flash (code+weights)"), ("ram_bytes", "static RAM (data+bss)"),
                       ("arena_bytes", "arena"), ("stack_bytes", "peak stack")):  # fmt: skip
        beside = f"   (float model: {_kb(flt[key])})" if flt.get(key) is not None else ""
        table.add_row(label, _kb(record.get(key)) + beside)
    console.print(table)
    measured = next((k for k in ("instructions", "cycles", "ticks") if record["layers"] and
                     record["layers"][0].get(k) is not None), None)  # fmt: skip
    cols = ["#", "kernel", "MACs", "scratch B"] + ([measured, "per MAC", "share"] if measured else [])
    layers = Table(*cols, title="layers" + (" (measured with --per-layer)" if measured else ""))
    total = sum(layer[measured] for layer in record["layers"]) if measured else 0
    for layer in record["layers"]:
        row = [str(layer["index"]), layer["kernel"], f"{layer['macs']:,}", str(layer["workspace_bytes"])]
        if measured:
            v = layer[measured]
            row += [
                f"{v:,}",
                f"{v / layer['macs']:.2f}" if layer["macs"] else "",
                f"{100 * v / max(total, 1):.1f}%",
            ]
        layers.add_row(*row)
    console.print(layers)


def print_validation(v, title: str) -> None:
    """validate's per-layer table (v: validate.Validation) and its verdict."""
    timed = any(c.instructions is not None for c in v.layers)
    cols = ["#", "kernel", "computes", "shape", "dtype", "max |diff|", "differing", "status"] + (["instructions"] if timed else [])
    table = Table(*cols, title=title)
    first = v.first_divergence
    for c in v.layers:
        name = c.computes or c.tensor
        status = {"match": "[green]match[/green]", "no reference": "[dim]no reference[/dim]"}.get(
            c.status, "[red]DIVERGES[/red]" + (" (first)" if c is first else "")
        )
        err = "" if c.max_abs_error is None else (f"{c.max_abs_error:.3g}" if c.rel_error is not None
                                                   else f"{c.max_abs_error:g} LSB")  # fmt: skip
        table.add_row(str(c.index), c.kernel, name if len(name) <= 48 else "…" + name[-47:],
                      "x".join(map(str, c.shape)), c.dtype, err,
                      "" if c.differing is None else f"{c.differing:,}/{int(np.prod(c.shape)):,}", status,
                      *([f"{c.instructions:,}" if c.instructions is not None else ""] if timed else []))  # fmt: skip
    console.print(table)
    compared = sum(c.status != "no reference" for c in v.layers)
    if first is None:
        console.print(f"[green]every layer matches[/green] the reference, {v.reference} ({compared} of {len(v.layers)} "
                      "step outputs compared)")  # fmt: skip
    else:
        console.print(f"[red]first divergence: step {first.index}[/red] ({first.kernel}), computing "
                      f"'{first.computes}': {first.differing:,} element(s) differ from the reference, {v.reference}")  # fmt: skip


def print_lines(lines: list[str]) -> None:
    for line in lines:
        console.print(line)


def print_sensitivity(result: dict) -> None:
    labels = "top1" in result["unpruned"]
    cols = ["group", "ratio", "channels", "MACs saved", "params saved", "SQNR dB", "argmax agree"]
    table = Table(*cols, *(["top-1"] if labels else []),
                  title=f"pruning sensitivity ({result['macs']:,} MACs, {result['params']:,} params unpruned"
                  + (f", top-1 {100 * result['unpruned']['top1']:.1f}%)" if labels else ")"))  # fmt: skip
    for r in result["rows"]:
        row = [r["group"][-40:], f"{r['ratio']:.2f}", f"{r['channels']} -> {r['kept']}",
               f"{100 * r['macs_saved'] / max(result['macs'], 1):.1f}%", f"{r['params_saved']:,}",
               f"{r['sqnr_db']:.1f}", f"{100 * r['argmax_agreement']:.1f}%"]  # fmt: skip
        if labels:
            row.append(f"{100 * r['top1']:.1f}%")
        table.add_row(*row)
    console.print(table)


def print_fit(summary: dict) -> None:
    key = summary["metric"]
    table = Table("config", "MACs", "flash B", "RAM B (incl. stack)", "fits", key,
                  title=f"--fit: budget {summary['flash_budget']:,} B flash, {summary['ram_budget']:,} B RAM")  # fmt: skip
    for r in summary["candidates"]:
        quality = r.get(key)
        shown = "" if quality is None else (f"{100 * quality:.1f}%" if key == "top1" else f"{quality:.1f} dB")
        mark = " (chosen)" if r["config"] == summary.get("chosen") else ""
        table.add_row(r["config"] + mark, f"{r['macs']:,}", f"{r['flash_bytes']:,}", f"{r['ram_bytes']:,}",
                      "yes" if r["fits"] else "no", shown)  # fmt: skip
    console.print(table)


def print_precision(summary: dict, precision: list[dict]) -> None:
    """--quantize mixed: each layer's widths, bytes and SQNR, and the budget."""
    title = "precision per layer"
    if summary:
        title = (f"--quantize mixed: {summary.get('flash_bytes', 0):,} B flash (budget {summary['flash_budget']:,} B, "
                 f"int8 {summary['int8_flash_bytes']:,} B)")  # fmt: skip
    table = Table("layer", "weights", "act (in->out)", "weight bytes", "SQNR dB", "alone at 4 bits",
                  "int16 output alone", title=title)  # fmt: skip
    for r in precision:
        act = f"int{r['act_bits']}" if r.get("in_bits", r["act_bits"]) == r["act_bits"] else \
            f"int{r['in_bits']}->int{r['act_bits']}"  # fmt: skip
        table.add_row(r["layer"], f"int{r['weight_bits']}", act, f"{r['weights_bytes']:,}",
                      "" if r.get("sqnr_db") is None else f"{r['sqnr_db']:.1f}",
                      "" if r.get("sqnr_4bit_db") is None else f"{r['sqnr_4bit_db']:.1f} dB",
                      "" if r.get("sqnr_a16_db") is None else f"{r['sqnr_a16_db']:.1f} dB")  # fmt: skip
    console.print(table)
