"""Print bench JSON results as a markdown table (what the README shows).

python bench/table.py bench/results/int8-cortex-m7.json [more.json ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _fmt(v) -> str:
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1e-2 else f"{v:,.2f}"
    return "" if v is None else str(v)


def markdown(rows: list[dict]) -> str:
    quant = any(r["dtype"] != "fp32" for r in rows)
    cols = ["model", "target", "dtype", "macs", "instructions", "instructions_per_mac", "flash_bytes", "ram_bytes",
            "arena_bytes", "stack_bytes", "compile_time_s"]  # fmt: skip
    cols += ["bit_exact_vs_reference", "sqnr_db_vs_float"] if quant else ["rel_error_vs_onnxruntime"]
    pruned = any("sqnr_db_vs_unpruned_float" in r for r in rows)
    if pruned:
        cols.append("sqnr_db_vs_unpruned_float")
    head = ["model", "target", "dtype", "MACs", "instructions", "instr/MAC", "flash B", "RAM B", "arena B",
            "stack B", "compile s"]  # fmt: skip
    head += ["bit-exact", "SQNR dB"] if quant else ["rel. error vs ORT"]
    if pruned:
        head.append("SQNR dB vs unpruned float")
    with_tflm = any("vs_tflm" in r for r in rows)
    if with_tflm:
        head.append("x TFLM instr / flash / RAM")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 3 + "---:|" * (len(head) - 3)]
    for r in rows:
        cells = [_fmt(r.get(c)) for c in cols]
        if with_tflm:
            t = r.get("vs_tflm") or {}
            cells.append(" / ".join(f"{t[k]:.2f}" for k in ("instructions", "flash", "ram") if k in t))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    # Bench rows only: other results (conformance summaries, accuracy studies) have no dtype.
    data = [json.loads(Path(path).read_text()) for path in sys.argv[1:]]
    rows = [row for rows in data if isinstance(rows, list) for row in rows
            if isinstance(row, dict) and "dtype" in row and "error" not in row]  # fmt: skip
    dtypes = sorted({r["dtype"] for r in rows})
    print("\n\n".join(markdown([r for r in rows if r["dtype"] == d]) for d in dtypes))
