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


def pareto_png(panels: list[dict], ylabel: str, title: str, path: Path) -> None:
    """Side-by-side scatter plots of accuracy against a cost, one per panel ({"xlabel", "points"}:
    each point {"x", "y", "colour" (group name), "marker" (group name), "front", "deployable",
    "label"}), the non-dominated points ringed, labelled and joined by their staircase."""
    plt = _pyplot()
    colours = list(dict.fromkeys(p["colour"] for panel in panels for p in panel["points"]))
    markers = list(dict.fromkeys(p["marker"] for panel in panels for p in panel["points"]))
    palette = plt.get_cmap("tab10")
    shapes = "os^DvP*X"
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 5), dpi=100, squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        for p in panel["points"]:
            c = palette(colours.index(p["colour"]) % 10)
            m = shapes[markers.index(p["marker"]) % len(shapes)]
            if p["deployable"]:
                ax.scatter(p["x"], p["y"], color=c, marker=m, s=70 if p["front"] else 30,
                           edgecolors="black" if p["front"] else "none", linewidths=1.2, zorder=3)  # fmt: skip
            else:  # measured but over the part's budget: hollow
                ax.scatter(p["x"], p["y"], facecolors="none", edgecolors=c, marker=m, s=30, alpha=0.6, zorder=2)
            if p["front"]:
                ax.annotate(p["label"], (p["x"], p["y"]), fontsize=6, xytext=(4, 4), textcoords="offset points")
        front = sorted((p["x"], p["y"]) for p in panel["points"] if p["front"])
        if front:
            ax.step([x for x, _ in front], [y for _, y in front], where="post", color="black", alpha=0.4,
                    linewidth=1, zorder=1)  # fmt: skip
        ax.set_xscale("log")
        ax.set_xlabel(panel["xlabel"])
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, which="both")
    handles = [plt.Line2D([], [], color=palette(i % 10), marker="o", linestyle="") for i in range(len(colours))]
    handles += [plt.Line2D([], [], color="grey", marker=shapes[i % len(shapes)], linestyle="")
                for i in range(len(markers))]  # fmt: skip
    handles += [plt.Line2D([], [], color="grey", marker="o", markerfacecolor="none", linestyle=""),
                plt.Line2D([], [], color="grey", marker="o", markeredgecolor="black", linestyle="")]  # fmt: skip
    fig.legend(handles, [*colours, *markers, "over budget", "non-dominated"], loc="lower center",
               ncol=min(len(handles), 8), fontsize=8, frameon=False)  # fmt: skip
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)
