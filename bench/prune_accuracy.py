"""Accuracy against structured pruning ratio on real data: the CNN and depthwise-separable CNN of
tests/digits.py trained on scikit-learn's digits, pruned (`--prune channels=R`, L1 importance),
then float top-1 (onnxruntime) and int8 top-1 (the integer reference, bit-identical to the device)
on 500 held-out images — without fine-tuning, and after `edgecomp finetune` (distillation from
the unpruned model plus the labels, on the 1,297 training images; needs PyTorch).

    python bench/prune_accuracy.py [--json bench/results/prune-accuracy-digits.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from digits import load_split, to_onnx, train  # noqa: E402

from edgecomp.passes import count_macs, fold_constants, prune_channels, simplify  # noqa: E402
from edgecomp.passes.quantize import quantize  # noqa: E402
from edgecomp.quant import extract_int_graph, run_int_graph  # noqa: E402
from edgecomp.verify import Reference  # noqa: E402

RATIOS = (0.0, 0.25, 0.5)
EPOCHS = 30


def _scores(model: onnx.ModelProto, xt: np.ndarray, xv: np.ndarray, yv: np.ndarray) -> tuple[float, float]:
    """(float top-1, int8 top-1) on the held-out set; int8 calibrated on 100 training images."""
    ref = Reference(model)
    f_top = np.array([ref.run([x[None]])[0].argmax() for x in xv])
    q = quantize(model, [[x[None]] for x in xt[:100]]).model
    graph = extract_int_graph(fold_constants(onnx.shape_inference.infer_shapes(q)).model)
    q_top = np.array([run_int_graph(graph, [x[None]])[0].argmax() for x in xv])
    return float(np.mean(f_top == yv)), float(np.mean(q_top == yv))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    (xt, yt), (xv, yv) = load_split()
    from edgecomp.finetune import FinetuneConfig, finetune

    try:
        import torch  # noqa: F401
    except ImportError:
        print("prune_accuracy: PyTorch not installed, no fine-tuned columns (pip install 'edgecomp[train]')")
        finetune = None
    rows = []
    for kind in ("cnn", "dscnn"):
        model, _ = simplify(to_onnx(train(kind, xt, yt)))
        model = fold_constants(onnx.shape_inference.infer_shapes(model)).model
        for ratio in RATIOS:
            pruned = prune_channels(model, ratio)[0] if ratio else model
            row = {"model": kind, "prune_ratio": ratio, "macs": count_macs(pruned),
                   "params": sum(int(np.prod(i.dims)) for i in pruned.graph.initializer)}  # fmt: skip
            row["float_top1"], row["int8_top1"] = _scores(pruned, xt, xv, yv)
            if ratio and finetune is not None:
                tuned, _ = finetune(pruned, model, xt, yt, FinetuneConfig(epochs=EPOCHS))
                row["float_top1_finetuned"], row["int8_top1_finetuned"] = _scores(tuned, xt, xv, yv)
                row["finetune_epochs"] = EPOCHS
            rows.append(row)
    pct = lambda r, k: f"{100 * r[k]:.1f}%" if k in r else "–"  # noqa: E731
    print(
        "| model | prune ratio | MACs | params | float top-1 | int8 top-1 | float top-1, fine-tuned | int8 top-1, fine-tuned |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['prune_ratio']:.2f} | {r['macs']:,} | {r['params']:,} | {pct(r, 'float_top1')} | "
              f"{pct(r, 'int8_top1')} | {pct(r, 'float_top1_finetuned')} | {pct(r, 'int8_top1_finetuned')} |")  # fmt: skip
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
