"""PNG charts (matplotlib, the optional `edgecomp[plot]` extra): pruning sensitivity and per-layer
profiles. Decisions and figures come from the callers; this module only draws."""

from __future__ import annotations

from pathlib import Path

from edgecomp.errors import UserError


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise UserError("writing a PNG needs matplotlib: pip install 'edgecomp[plot]'") from exc
    return plt


def sensitivity_png(result: dict, path: Path) -> None:
    """Quality (SQNR, or top-1 when labels were given) against MACs saved, one line per group."""
    plt = _pyplot()
    key = "top1" if "top1" in result["unpruned"] else "sqnr_db"
    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    groups = list(dict.fromkeys(r["group"] for r in result["rows"]))
    for g in groups:
        rows = [r for r in result["rows"] if r["group"] == g]
        xs = [100 * r["macs_saved"] / max(result["macs"], 1) for r in rows]
        ys = [(100 * r[key]) if key == "top1" else min(r[key], 99.0) for r in rows]
        ax.plot(xs, ys, marker="o", label=g[-40:])
    ax.set_xlabel("MACs saved (% of the model)")
    ax.set_ylabel("top-1 accuracy (%)" if key == "top1" else "output SQNR vs unpruned (dB)")
    ax.set_title("pruning sensitivity: each group alone at " + ", ".join(str(r) for r in result["ratios"]))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


def layers_png(record: dict, path: Path) -> None:
    """Each step's measured instructions (or cycles) as bars, its MACs as a line."""
    plt = _pyplot()
    layers = record["layers"]
    key = next(
        (k for k in ("instructions", "cycles", "ticks") if layers and layers[0].get(k) is not None), None
    )
    if key is None:
        raise UserError("no per-layer figures to plot: profile with --per-layer")
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(layers)), 5), dpi=100)
    idx = list(range(len(layers)))
    ax.bar(idx, [layer[key] for layer in layers], color="tab:blue", label=key)
    ax.set_xticks(
        idx, [f"{layer['index']} {layer['kernel'][:18]}" for layer in layers], rotation=90, fontsize=6
    )
    ax.set_ylabel(key)
    ax2 = ax.twinx()
    ax2.plot(idx, [layer["macs"] for layer in layers], color="tab:orange", marker=".", label="MACs")
    ax2.set_ylabel("MACs")
    ax.set_title(f"{Path(record['model']).name} on {record['target']}: per-layer {key}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)
