"""Benchmark: instructions per inference (QEMU -icount), flash, RAM, arena, stack and compile time
for the MLPerf Tiny models, as a table and JSON. Not a test: it reports numbers.

    python bench/run.py [--targets cortex-m7,cortex-m4] [--models DIR] [--json bench/results/fp32.json]

Models default to ../shared/models/mlperf-tiny (the float ONNX files and their *_sample.npy).
Every run is also checked against onnxruntime; the error is part of the table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from edgecomp.errors import EdgecompError
from edgecomp.pipeline import BuildOptions, build
from edgecomp.reference import Reference, compare
from edgecomp.runner import profile_record, run_samples
from edgecomp.targets import load_target

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODELS = REPO.parent / "shared" / "models" / "mlperf-tiny"
MODELS = {
    "ic_resnet8": "ic_sample",
    "kws_dscnn": "kws_sample",
    "vww_mobilenet": "vww_sample",
    "ad_autoencoder": "ad_sample",
}


def bench_one(model: Path, sample: Path, target_name: str, workdir: Path) -> dict:
    target = load_target(target_name)
    t0 = time.monotonic()
    result = build(
        model, target, workdir / f"{model.stem}-{target_name}", BuildOptions(), log=lambda *_: None
    )
    compile_s = time.monotonic() - t0
    x = np.load(sample).astype(np.float32)
    (run,) = run_samples(result, [[x]])
    rec = profile_record(result, run, on_board=False)
    cmp = compare([run.outputs], [Reference(result.model).run([x])])
    return {
        "model": model.stem,
        "target": target_name,
        "dtype": "fp32",
        "macs": rec["macs"],
        "instructions": rec["instructions"],
        "instructions_per_mac": rec.get("instructions_per_mac"),
        "flash_bytes": rec["flash_bytes"],
        "ram_bytes": rec["ram_bytes"],
        "arena_bytes": rec["arena_bytes"],
        "stack_bytes": rec["stack_bytes"],
        "compile_time_s": round(compile_s, 2),
        "rel_error_vs_onnxruntime": cmp.rel_error,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=Path, default=DEFAULT_MODELS)
    ap.add_argument("--targets", default="cortex-m7")
    ap.add_argument("--only", help="comma-separated model names")
    ap.add_argument("--json", type=Path, help="write the rows as JSON here")
    ap.add_argument("--workdir", type=Path, default=REPO / "build" / "bench")
    args = ap.parse_args(argv)
    if not args.models.is_dir():
        print(f"bench: model folder {args.models} not found (pass --models)", file=sys.stderr)
        return 2
    names = args.only.split(",") if args.only else list(MODELS)
    rows = []
    console = Console(width=160)
    for target in args.targets.split(","):
        for name in names:
            console.print(f"[dim]bench: {name} on {target}[/dim]")
            try:
                rows.append(bench_one(args.models / f"{name}.onnx", args.models / f"{MODELS[name]}.npy", target,
                                      args.workdir))  # fmt: skip
            except EdgecompError as exc:
                console.print(f"[red]bench: {name} on {target}: {exc}[/red]")
                rows.append({"model": name, "target": target, "error": str(exc)})
    table = Table(title="edgecomp fp32, QEMU -icount shift=0 (instructions exact)")
    for col in ("model", "target", "MACs", "instructions", "instr/MAC", "flash B", "RAM B", "arena B", "stack B",
                "compile s", "rel err"):  # fmt: skip
        table.add_column(col, justify="left" if col in ("model", "target") else "right")
    for r in rows:
        if "error" in r:
            table.add_row(r["model"], r["target"], "error: " + r["error"][:60])
            continue
        table.add_row(r["model"], r["target"], f"{r['macs']:,}", f"{r['instructions']:,}", f"{r['instructions_per_mac']:.2f}",
                      f"{r['flash_bytes']:,}", f"{r['ram_bytes']:,}", f"{r['arena_bytes']:,}", f"{r['stack_bytes']:,}",
                      f"{r['compile_time_s']:.1f}", f"{r['rel_error_vs_onnxruntime']:.1e}")  # fmt: skip
    console.print(table)
    text = json.dumps(rows, indent=2)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
