"""Pruning sensitivity: prune each channel group alone at a few ratios and measure what it costs
(output SQNR against the unpruned model, argmax agreement, top-1 with labels) and what it saves
(MACs, parameters), so that users can choose per-layer ratios (`--prune channels=ratios.json`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from edgecomp.errors import UserError
from edgecomp.passes import count_macs, prunable_groups, prune_channels
from edgecomp.quant.accuracy import sqnr_db
from edgecomp.verify import Reference


def score(model: onnx.ModelProto, samples: list[list[np.ndarray]], baseline: np.ndarray,
          labels: np.ndarray | None) -> dict:  # fmt: skip
    """Quality of `model`'s first output on `samples` against the `baseline` outputs."""
    ref = Reference(model)
    out = np.stack([ref.run(s)[0] for s in samples])
    top = out.reshape(len(samples), -1).argmax(axis=1)
    result = {
        "sqnr_db": round(sqnr_db(baseline, out), 2),
        "argmax_agreement": float(np.mean(top == baseline.reshape(len(samples), -1).argmax(axis=1))),
    }
    if labels is not None:
        result["top1"] = float(np.mean(top == np.asarray(labels).reshape(-1)))
    return result


def baseline_outputs(model: onnx.ModelProto, samples: list[list[np.ndarray]]) -> np.ndarray:
    ref = Reference(model)
    return np.stack([ref.run(s)[0] for s in samples])


def sensitivity(model: onnx.ModelProto, samples: list[list[np.ndarray]], labels: np.ndarray | None,
                ratios: list[float], importance: str = "l1",
                calib: list[list[np.ndarray]] | None = None, log=lambda *_: None) -> dict:  # fmt: skip
    """For every prunable group and ratio: the model with only that group pruned, scored."""
    base = baseline_outputs(model, samples)
    macs0, params0 = count_macs(model), _params(model)
    rows = []
    reference = score(model, samples, base, labels)
    for group in prunable_groups(model):
        log(f"analyzing {group['name']} ({group['channels']} channels)")
        for r in ratios:
            pruned, report = prune_channels(model, 0.0, {group["name"]: r}, importance, calib)
            kept = report["layers"][0]["kept"] if report["layers"] else group["channels"]
            rows.append({
                "group": group["name"], "producers": group["producers"], "ratio": r, "channels": group["channels"],
                "kept": kept, "macs_saved": macs0 - count_macs(pruned), "params_saved": params0 - _params(pruned),
                **score(pruned, samples, base, labels),
            })  # fmt: skip
    return {"macs": macs0, "params": params0, "unpruned": reference, "ratios": ratios, "rows": rows}


def _params(model: onnx.ModelProto) -> int:
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT)


def analyze_file(model_path: Path, eval_data: Path, calib: Path | None, ratios: list[float], importance: str,
                 input_shapes: dict, log=lambda *_: None) -> dict:  # fmt: skip
    """`edgecomp analyze`: the float model after the lossless passes, its sensitivity on `eval_data`."""
    from edgecomp.io import load_calibration, load_eval
    from edgecomp.pipeline import float_model_of, io_specs

    model = float_model_of(model_path, input_shapes)
    samples, labels = load_eval(eval_data, io_specs(model))
    calib_samples = load_calibration(calib, io_specs(model)) if calib else None
    if importance == "activation" and calib_samples is None:
        raise UserError("--prune-importance activation needs --calib")
    return sensitivity(model, samples, labels, ratios, importance, calib_samples, log)
