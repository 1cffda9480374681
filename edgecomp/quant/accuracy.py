"""Accuracy of a quantized model against its float original, on user data.

Quantized outputs come from the integer reference (bit-identical to the device); float outputs
from onnxruntime on the float model.
"""

from __future__ import annotations

import numpy as np
import onnx

from edgecomp.quant.interpret import run_int_graph
from edgecomp.quant.ir import IntGraph
from edgecomp.quant.ops import Dequantize
from edgecomp.verify import Reference, with_outputs


def sqnr_db(reference: np.ndarray, test: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB (inf when identical)."""
    ref = reference.astype(np.float64)
    noise = float(np.sum((ref - test.astype(np.float64)) ** 2))
    signal = float(np.sum(ref**2))
    if noise == 0:
        return float("inf")
    return 10 * np.log10(signal / noise) if signal > 0 else float("-inf")


def evaluate(float_model: onnx.ModelProto, graph: IntGraph, samples: list[list[np.ndarray]],
             labels: np.ndarray | None = None) -> dict:  # fmt: skip
    """Float vs quantized: output SQNR, max abs error, argmax agreement, top-1 with labels, per-layer SQNR."""
    float_names = {n for node in float_model.graph.node for n in node.output}
    layers = [t for t in graph.tensors.values() if t.dtype != "float32" and t.float_name in float_names]
    ref = Reference(with_outputs(float_model, [t.float_name for t in layers]))
    n_out = len(float_model.graph.output)
    f_out, q_out, f_layers, q_layers = [], [], {t.name: [] for t in layers}, {t.name: [] for t in layers}
    for sample in samples:
        f_all = ref.run(sample)
        env = run_int_graph(graph, sample, keep_all=True)
        f_out.append(f_all[0])
        q_out.append(env[graph.outputs[0]])
        for t, f in zip(layers, f_all[n_out:], strict=True):
            f_layers[t.name].append(f)
            q_layers[t.name].append((env[t.name].astype(np.float64) - t.zero_point) * t.scale)
    f_arr, q_arr = np.stack(f_out), np.stack(q_out)
    f_top = f_arr.reshape(len(samples), -1).argmax(axis=1)
    q_top = q_arr.reshape(len(samples), -1).argmax(axis=1)
    result = {
        "samples": len(samples),
        "output_sqnr_db": round(sqnr_db(f_arr, q_arr), 2),
        "max_abs_error": float(np.max(np.abs(f_arr.astype(np.float64) - q_arr))),
        "argmax_agreement": float(np.mean(f_top == q_top)),
        "per_layer_sqnr_db": [
            {
                "tensor": t.float_name,
                "sqnr_db": round(sqnr_db(np.stack(f_layers[t.name]), np.stack(q_layers[t.name])), 2),
            }
            for t in layers
        ],
    }
    if labels is not None:
        labels = np.asarray(labels).reshape(-1)
        result["float_top1"] = float(np.mean(f_top == labels))
        result["quantized_top1"] = float(np.mean(q_top == labels))
        result["top1_delta_pp"] = round(100 * (result["quantized_top1"] - result["float_top1"]), 2)
    return result


def output_step(graph: IntGraph, name: str) -> float:
    """The quantization step of model output `name`: its scale, or (a float output) the scale of
    the integer tensor it is dequantized from."""
    t = graph.tensors[name]
    if t.dtype != "float32":
        return t.scale
    op = next(op for op in graph.ops if op.output == name)
    return graph.tensors[op.inputs[0]].scale if isinstance(op, Dequantize) else 0.0


def lsb_agreement(step: float, got: list[np.ndarray], want: list[np.ndarray]) -> float:
    """Fraction of values within one quantization step (`step`) of `want`."""
    diff = np.abs(np.concatenate([g.reshape(-1) for g in got]).astype(np.float64)
                  - np.concatenate([w.reshape(-1) for w in want]).astype(np.float64))  # fmt: skip
    # float32 outputs carry rounding of their own: allow a few ulps of the value beyond one step.
    ulps = (
        4
        * np.finfo(np.float32).eps
        * np.abs(np.concatenate([w.reshape(-1) for w in want]).astype(np.float64))
    )
    return float(np.mean(diff <= step * 1.0001 + ulps + 1e-12))


def precision(graph: IntGraph, per_layer_sqnr: list[dict] | None = None) -> list[dict]:
    """Each weighted layer's widths and stored weight bytes (int4: two per byte), with the SQNR of its
    output tensor against float where `per_layer_sqnr` (evaluate's list) has it."""
    from edgecomp.quant.ir import LinearOp

    sqnr = {e["tensor"]: e["sqnr_db"] for e in per_layer_sqnr or []}
    rows = []
    for op in graph.ops:
        if not isinstance(op, LinearOp):
            continue
        x, y = graph.tensors[op.inputs[0]], graph.tensors[op.output]
        # act_bits: the layer's output (what --quantize mixed chooses); in_bits: what it reads
        row = {"layer": op.node, "weight_bits": op.weight_bits, "act_bits": 16 if y.dtype == "int16" else 8,
               "in_bits": 16 if x.dtype == "int16" else 8,
               "weights": int(op.weight.size), "weights_bytes": -(-op.weight.size * op.weight_bits // 8)}  # fmt: skip
        if y.float_name in sqnr:
            row["sqnr_db"] = sqnr[y.float_name]
        rows.append(row)
    return rows
