"""What a sweep leaves behind: results.json and results.csv (one row per point), a rich table,
one Pareto PNG per model (matplotlib) and index.html, self-contained (the PNGs inlined as base64,
the table, the fronts marked)."""

from __future__ import annotations

import base64
import contextlib
import csv
import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path

from rich.table import Table

from edgecomp.errors import UserError
from edgecomp.sweep.pareto import COSTS, eligible, number

COST_LABELS = {"instructions": "instructions per inference", "flash": "flash (bytes)",
               "ram": "RAM + peak stack (bytes)"}  # fmt: skip
FRONT_MARKS = {"instructions": "I", "flash": "F", "ram": "R"}
CSV_FIELDS = ["key", "model", "target", "config", "status", "fits", "instructions", "clock_hz", "latency_ms",
              "flash_bytes", "ram_bytes", "stack_bytes", "ram_with_stack_bytes", "arena_bytes", "weights_bytes",
              "macs", "params", "accuracy_metric", "accuracy", "sqnr_db", "argmax_agreement", "top1", "float_top1",
              "samples", "eval_source", "device_check", "host_ns", "build_cached", "seconds", "reason"]  # fmt: skip


@contextlib.contextmanager
def progress(total: int, enabled: bool) -> Iterator[Callable[[dict], None]]:
    """A progress bar on stderr (when `enabled`); yields the function to call per finished row."""
    if not enabled:
        yield lambda row: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from edgecomp.report import err_console

    with Progress(TextColumn("[dim]sweep[/dim]"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.description}"), console=err_console) as bar:  # fmt: skip
        task = bar.add_task("", total=total)

        def advance(row: dict) -> None:
            bar.update(task, advance=1, description=f"{row['model']} {row['target']} {row['config']}: {row['status']}")

        yield advance


def write_reports(outdir: Path, rows: list[dict], meta: dict, log=print) -> list[Path]:
    """Write every report into `outdir`; return their paths."""
    outdir = Path(outdir)
    written = [outdir / "results.json", outdir / "results.csv"]
    (outdir / "results.json").write_text(json.dumps({**meta, "rows": rows}, indent=1) + "\n")
    _write_csv(outdir / "results.csv", rows)
    images: dict[str, Path] = {}
    for model in dict.fromkeys(r["model"] for r in rows):
        path = outdir / f"pareto-{model}.png"
        try:
            _pareto_png([r for r in rows if r["model"] == model], model, path)
        except UserError as exc:  # matplotlib missing: everything else still written
            log(f"no Pareto PNGs: {exc}")
            break
        if path.exists():
            images[model] = path
            written.append(path)
    html = outdir / "index.html"
    html.write_text(render_html(rows, meta, images))
    written.append(html)
    return written


def _option_columns(rows: list[dict]) -> list[str]:
    """The options that differ between rows (the others are the same everywhere)."""
    keys = list(rows[0]["options"]) if rows else []
    return [k for k in keys if len({json.dumps(r["options"][k]) for r in rows}) > 1]


def _write_csv(path: Path, rows: list[dict]) -> None:
    options = _option_columns(rows)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_FIELDS[:4] + options + CSV_FIELDS[4:] + [f"pareto_{k}" for k in COSTS])
        for r in rows:
            w.writerow([_csv(r.get(k)) for k in CSV_FIELDS[:4]] + [_csv(r["options"][k]) for k in options]
                       + [_csv(r.get(k)) for k in CSV_FIELDS[4:]] + [_csv(r["pareto"][k]) for k in COSTS])  # fmt: skip


def _csv(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def accuracy_text(row: dict) -> str:
    if row.get("accuracy") is None:
        return "-"
    if row["accuracy_metric"] == "top1":
        return f"{100 * row['top1']:.1f}%"
    return "= float" if row["sqnr_db"] == "inf" else f"{number(row['sqnr_db']):.1f} dB"


def front_marks(row: dict) -> str:
    return "".join(FRONT_MARKS[k] for k in COSTS if row.get("pareto", {}).get(k))


def _n(value, fmt: str = "{:,}") -> str:
    return "-" if value is None else fmt.format(value)


def table_rows(rows: list[dict]) -> list[list[str]]:
    """The table's cells, shared by the terminal and the HTML page."""
    out = []
    for r in rows:
        status = r["status"] if r["status"] != "ok" else ("ok" if r["fits"] is not False else "over budget")
        out.append([r["model"], r["target"], r["config"], status, _n(r["instructions"]),
                    _n(r["latency_ms"], "{:.3f}"), _n(r["flash_bytes"]), _n(r["ram_with_stack_bytes"]),
                    accuracy_text(r), _n(r["argmax_agreement"], "{:.0%}"), front_marks(r),
                    r["reason"]])  # fmt: skip
    return out


TABLE_HEADER = ["model", "target", "config", "status", "instructions", "latency ms", "flash B", "RAM+stack B",
                "accuracy", "argmax agree", "front", "reason"]  # fmt: skip


def print_table(rows: list[dict]) -> None:
    from rich.console import Console

    from edgecomp.report import console

    if not console.is_terminal:  # a file or pipe: wide enough not to fold every cell
        console = Console(highlight=False, width=200)
    table = Table(title="sweep (front: non-dominated on accuracy vs I instructions, F flash, R RAM + stack)")
    for col in TABLE_HEADER:
        table.add_column(col, justify="left" if col in ("model", "target", "config", "status", "front", "reason")
                         else "right", overflow="fold")  # fmt: skip
    for cells in table_rows(rows):
        cells[-1] = cells[-1][:80]
        table.add_row(*cells)
    console.print(table)


def _pareto_png(rows: list[dict], model: str, path: Path) -> None:
    from edgecomp.plots import pareto_png

    measured = [r for r in rows if r["status"] == "ok" and r["accuracy"] is not None]
    if not measured:
        return
    top1 = measured[0]["accuracy_metric"] == "top1"
    ys = [number(r["accuracy"]) for r in measured]
    finite = [y for y in ys if math.isfinite(y)]
    cap = (max(finite) if finite else 0.0) + 10.0  # outputs identical to float: drawn above the rest
    panels = []
    for front, field in COSTS.items():
        points = [{"x": r[field], "y": 100 * y if top1 else min(y, cap), "colour": r["target"],
                   "marker": r["options"]["quantize"] or "fp32", "front": r["pareto"][front],
                   "deployable": eligible(r), "label": f"{r['config']} ({r['target']})"}
                  for r, y in zip(measured, ys, strict=True) if r[field]]  # fmt: skip
        panels.append({"xlabel": COST_LABELS[front], "points": points})
    ylabel = "top-1 (%)" if top1 else "output SQNR vs float (dB)" + ("; top row: identical to float" if len(finite) < len(ys) else "")
    pareto_pngs_title = f"{model}: accuracy vs cost (ringed: non-dominated among points that fit)"
    pareto_png(panels, ylabel, pareto_pngs_title, path)


def render_html(rows: list[dict], meta: dict, images: dict[str, Path]) -> str:
    """index.html: the summary, each model's Pareto PNG inline and its rows."""
    import jinja2

    from edgecomp.resources import data_dir

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(data_dir("templates"))),
                             autoescape=True, undefined=jinja2.StrictUndefined)  # fmt: skip
    models = []
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        png = images.get(model)
        models.append({
            "name": model,
            "image": base64.b64encode(png.read_bytes()).decode() if png else None,
            "rows": [{"cells": cells, "front": bool(front_marks(r)), "status": r["status"]}
                     for r, cells in zip(mine, table_rows(mine), strict=True)],
            "meta": meta["models"].get(model, {}),
        })  # fmt: skip
    return env.get_template("sweep/index.html.j2").render(meta=meta, models=models, header=TABLE_HEADER)
