"""Quantization-aware fine-tuning (`edgecomp finetune --qat int8|w4a8|mixed`, the `train` extra).

The model is quantized first (post-training, as `build --quantize` does: calibrated activation
scales, per-channel weight scales, int4 bias correction), then the QDQ graph itself is trained in
torch (finetune.py's op set) with fake quantization:

- every QuantizeLinear is clamp(round(x / s) + z) with a straight-through gradient (the rounding
  passes gradients as the identity, the clamp stops them outside the range);
- the constant weights behind each weight DequantizeLinear become float parameters, initialised
  from the float model's weights (the dequantized ones where the float original is not found),
  read through the same fake quantization with the layer's post-training scales and its width's
  range (int4: [-8, 7]); biases likewise on their int32 grid (s = x_scale * w_scale);
- the scales and zero points stay the post-training ones.

The loss is finetune.py's distillation from the float model (the teacher): KL divergence of the
softened logits (with labels, mixed with cross-entropy), or the mean squared error of the output.
The result is written back as the same QDQ model with new integer weights and biases (clamp(round(
w / s)) in each initializer's own type), so `edgecomp build` compiles it like any QDQ model, bit-
exact with the integer reference of those integers.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from edgecomp.errors import UserError
from edgecomp.finetune import _OPS, FinetuneConfig, FinetuneReport, _logits_name, _torch, check_compatible

SCHEMES = ("int8", "w4a8", "mixed")


def _int_range(arr: np.ndarray) -> tuple[int, int]:
    name = arr.dtype.name
    if name == "int4":
        return -8, 7
    if name == "uint4":
        return 0, 15
    info = np.iinfo(arr.dtype)
    return int(info.min), int(info.max)


def _as_int64(arr: np.ndarray) -> np.ndarray:
    return np.asarray(arr).astype(np.int64)


def _float_source(name: str, floats: dict[str, np.ndarray], shape) -> np.ndarray | None:
    for suffix in ("_int4", "_quantized"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    value = floats.get(name)
    return value if value is not None and value.shape == tuple(shape) else None


def _student_logits(model: onnx.ModelProto) -> tuple[str, bool]:
    """The QDQ model's tensor to train on: the input of a final Softmax (through its Q/DQ), else
    the output."""
    producer = {o: n for n in model.graph.node for o in n.output}
    name = model.graph.output[0].name
    node = producer.get(name)
    while node is not None and node.op_type in ("QuantizeLinear", "DequantizeLinear"):
        name = node.input[0]
        node = producer.get(name)
    if node is not None and node.op_type == "Softmax":
        return node.input[0], True
    return model.graph.output[0].name, False


def qdq_module(qmodel: onnx.ModelProto, floats: dict[str, np.ndarray]):
    """A torch module running QDQ `qmodel` with fake quantization; its parameters are the float
    weights and biases behind the weight DequantizeLinear nodes. forward(*inputs) -> every tensor."""
    torch = _torch()
    nn, F = torch.nn, torch.nn.functional
    g = qmodel.graph
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    for node in g.node:
        if node.op_type not in _OPS and node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            raise UserError(f"finetune --qat: unsupported op {node.op_type} (node '{node.name or node.output[0]}')")
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def ste_round(x):
        return x + (torch.round(x) - x).detach()

    def axis_shape(scale, ndim: int, axis: int) -> list[int]:
        shape = [1] * ndim
        if scale.numel() > 1:
            shape[axis % ndim] = -1
        return shape

    # Weight DequantizeLinear nodes: (node index) -> parameter key, scale, zero point, range, axis.
    trained: dict[str, dict] = {}
    for node in g.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in inits:
            continue
        q = inits[node.input[0]]
        if q.dtype.name not in ("int8", "int4", "int32"):
            continue
        scale = inits[node.input[1]].astype(np.float32)
        zp = _as_int64(inits[node.input[2]]) if len(node.input) > 2 and node.input[2] else np.zeros((), np.int64)
        if np.any(zp != 0):
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        shape = [1] * q.ndim
        if scale.size > 1:
            shape[axis % q.ndim] = -1
        deq = _as_int64(q).astype(np.float32) * scale.reshape(shape)
        src = _float_source(node.input[0], floats, q.shape)
        init = src.astype(np.float32) if src is not None else deq
        trained[node.input[0]] = {"key": f"p{len(trained)}", "init": init, "scale": scale.reshape(shape),
                                  "range": _int_range(q), "dtype": q.dtype}  # fmt: skip

    class QdqModule(nn.Module):
        def __init__(self):
            super().__init__()
            self.weights = nn.ParameterDict(
                {t["key"]: nn.Parameter(torch.from_numpy(np.ascontiguousarray(t["init"]))) for t in trained.values()}
            )
            self.constants = {n: torch.from_numpy(v.astype(np.float32).copy()) if v.dtype.kind == "f" else v
                              for n, v in inits.items() if n not in trained}  # fmt: skip
            self.attrs = [{a.name: onnx.helper.get_attribute_value(a) for a in n.attribute} for n in g.node]
            self.input_names = [i.name for i in g.input if i.name not in inits]
            dims = next(i for i in g.input if i.name not in inits).type.tensor_type.shape.dim
            self.batch = dims[0].dim_value if dims else 1

        def fake_weight(self, name: str):
            t = trained[name]
            s = torch.from_numpy(t["scale"])
            lo, hi = t["range"]
            return torch.clamp(ste_round(self.weights[t["key"]] / s), lo, hi) * s

        def forward(self, *xs):
            env = dict(zip(self.input_names, xs, strict=True))
            env.update(self.constants)
            for node, attrs in zip(g.node, self.attrs, strict=True):
                if node.op_type == "DequantizeLinear" and node.input[0] in trained:
                    env[node.output[0]] = self.fake_weight(node.input[0])
                    continue
                args = [env[i] if i else None for i in node.input]
                if node.op_type == "QuantizeLinear":
                    x, s = args[0], args[1]
                    zp = args[2] if len(args) > 2 and args[2] is not None else np.zeros((), np.uint8)
                    lo, hi = _int_range(np.asarray(zp))
                    s = s.reshape(axis_shape(s, x.dim(), attrs.get("axis", 1)))
                    z = torch.from_numpy(_as_int64(zp).astype(np.float32)).reshape(axis_shape(s, x.dim(), attrs.get("axis", 1)))
                    env[node.output[0]] = torch.clamp(ste_round(x / s) + z, lo, hi)
                elif node.op_type == "DequantizeLinear":
                    q, s = args[0], args[1]
                    q = torch.from_numpy(_as_int64(q).astype(np.float32)) if isinstance(q, np.ndarray) else q
                    zp = args[2] if len(args) > 2 and args[2] is not None else np.zeros((), np.int64)
                    z = torch.from_numpy(_as_int64(zp).astype(np.float32)).reshape(axis_shape(s, q.dim(), attrs.get("axis", 1)))
                    env[node.output[0]] = (q - z) * s.reshape(axis_shape(s, q.dim(), attrs.get("axis", 1)))
                else:
                    if node.op_type == "Reshape":  # a batch-1 target shape, for the batch being run
                        shape = [int(v) for v in np.asarray(args[1]).reshape(-1)]
                        if shape and shape[0] == self.batch and args[0].shape[0] != self.batch:
                            shape[0] = args[0].shape[0]
                        args[1] = np.array(shape, np.int64)
                    out = _OPS[node.op_type](torch, F, args, attrs)
                    for name, value in zip(node.output, out if isinstance(out, tuple) else (out,), strict=False):
                        env[name] = value
            return env

    return QdqModule(), trained


def qat(qmodel: onnx.ModelProto, teacher: onnx.ModelProto, floats: dict[str, np.ndarray], x: np.ndarray,
        labels: np.ndarray | None, config: FinetuneConfig | None = None,
        log=lambda *_: None) -> tuple[onnx.ModelProto, FinetuneReport]:  # fmt: skip
    """QDQ `qmodel` with its integer weights and biases trained with fake quantization on `x` to
    match float `teacher` (and `labels`). Preserves the graph, every scale and zero point, and each
    weight's type and range."""
    torch = _torch()
    cfg = config or FinetuneConfig()
    torch.manual_seed(cfg.seed)
    module, trained = qdq_module(qmodel, floats)
    if not trained:
        raise UserError("finetune --qat: the model has no quantized weights to train")
    from edgecomp.finetune import graph_module

    t_mod = graph_module(teacher)
    check_compatible(qmodel, teacher)
    s_out, s_cls = _student_logits(qmodel)
    t_out, t_cls = _logits_name(teacher)
    classify = s_cls and t_cls
    report = FinetuneReport(trained=sorted(trained), objective="quantization-aware distillation "
                            + ("(softmax logits)" if classify else "(mean squared error)"))  # fmt: skip
    xs = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    with torch.no_grad():
        targets = torch.cat([t_mod(xs[i : i + 256])[t_out] for i in range(0, len(xs), 256)])
    ys = None if labels is None else torch.from_numpy(np.asarray(labels).reshape(-1).astype(np.int64))
    opt = torch.optim.Adam(module.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    temp = cfg.temperature
    for epoch in range(cfg.epochs):
        order, total = torch.randperm(len(xs), generator=gen), 0.0
        for i in range(0, len(xs), cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            out = module(xs[idx])[s_out]
            if classify:
                s_l, t_l = out.reshape(len(idx), -1), targets[idx].reshape(len(idx), -1)
                loss = torch.nn.functional.kl_div(torch.log_softmax(s_l / temp, 1), torch.softmax(t_l / temp, 1),
                                                  reduction="batchmean") * temp * temp  # fmt: skip
                if ys is not None:
                    loss = cfg.alpha * torch.nn.functional.cross_entropy(s_l, ys[idx]) + (1 - cfg.alpha) * loss
            else:
                loss = torch.nn.functional.mse_loss(out.reshape(targets[idx].shape), targets[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        report.losses.append(total / len(xs))
        if not math.isfinite(report.losses[-1]):
            raise UserError(f"finetune --qat: the loss diverged in epoch {epoch + 1} (lower --lr)")
        log(f"epoch {epoch + 1}/{cfg.epochs}: loss {report.losses[-1]:.4f}")
    tuned = onnx.ModelProto()
    tuned.CopyFrom(qmodel)
    for t in tuned.graph.initializer:
        if t.name not in trained:
            continue
        info = trained[t.name]
        lo, hi = info["range"]
        w = module.weights[info["key"]].detach().numpy().astype(np.float64)
        q = np.clip(np.round(w / info["scale"].astype(np.float64)), lo, hi).astype(np.int64)
        t.CopyFrom(numpy_helper.from_array(q.astype(info["dtype"]), t.name))
    return tuned, report


def qat_files(model_path: Path, scheme: str, calib: Path, data: Path, eval_data: Path | None, output: Path,
              config: FinetuneConfig, input_shapes: dict, calib_method: str = "minmax", weight_bits: dict | None = None,
              log=print) -> list[str]:  # fmt: skip
    """`edgecomp finetune --qat`: quantize `model_path` (post-training, on `calib`), train the QDQ
    model on `data` by distillation from the float model, write it to `output`; summary lines."""
    from edgecomp.io import load_calibration, load_eval
    from edgecomp.passes.int4 import name_layers
    from edgecomp.passes.quantize import quantize
    from edgecomp.pipeline import float_model_of, io_specs
    from edgecomp.quant import int_graph_for, run_int_graph
    from edgecomp.quant.accuracy import sqnr_db
    from edgecomp.verify import Reference

    if scheme not in SCHEMES:
        raise UserError(f"--qat must be one of {', '.join(SCHEMES)}, not '{scheme}'")
    teacher = name_layers(float_model_of(model_path, input_shapes))
    specs = io_specs(teacher)
    calib_samples = load_calibration(calib, specs)
    log(f"quantizing to {scheme} on {len(calib_samples)} calibration samples")
    qmodel = onnx.shape_inference.infer_shapes(quantize(teacher, calib_samples, scheme, calib_method, weight_bits).model)
    floats = {t.name: numpy_helper.to_array(t) for t in teacher.graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    samples, labels = load_eval(data, specs, "--data")
    x = np.concatenate([s[0] for s in samples])
    evals = load_eval(eval_data, specs) if eval_data else None

    def score(m: onnx.ModelProto) -> dict:
        from edgecomp.passes import fold_constants

        graph = int_graph_for(fold_constants(m).model)
        ref = Reference(teacher)
        want = np.stack([ref.run(s)[0] for s in evals[0]])
        got = np.stack([run_int_graph(graph, s)[0] for s in evals[0]])
        result = {"sqnr_db": sqnr_db(want, got)}
        if evals[1] is not None:
            result["top1"] = float(np.mean(got.reshape(len(got), -1).argmax(1) == np.asarray(evals[1]).reshape(-1)))
        return result

    before = score(qmodel) if evals else None
    log(f"quantization-aware fine-tuning on {len(x)} samples, {config.epochs} epochs")
    tuned, rep = qat(qmodel, teacher, floats, x, labels, config, log)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    onnx.save(tuned, str(tmp))
    tmp.replace(output)
    lines = [f"objective: {rep.objective}", f"trained {len(rep.trained)} quantized tensors ({scheme})",
             f"loss: {rep.losses[0]:.4f} (epoch 1) -> {rep.losses[-1]:.4f} (epoch {len(rep.losses)})"]  # fmt: skip
    if evals:
        after = score(tuned)
        if "top1" in after:
            lines.append(f"top-1 (integer reference): {before['top1']:.1%} post-training -> {after['top1']:.1%}")
        lines.append(f"SQNR vs float: {before['sqnr_db']:.1f} -> {after['sqnr_db']:.1f} dB")
    lines.append(f"wrote {output} (QDQ: build it without --quantize)")
    return lines
