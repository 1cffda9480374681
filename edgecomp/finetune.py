"""Fine-tuning a pruned model on user data, with knowledge distillation from the unpruned model
(optional extra: `pip install edgecomp[train]`, PyTorch).

The ONNX graph is run by a torch module that calls one `torch.nn.functional` op per node (the op
set edgecomp compiles), with the float weights of Conv, Gemm, MatMul and BatchNormalization as
trainable parameters. Training changes only those values: the result is the same graph with new
initializers, so it prunes, quantizes and compiles like the model it came from. (onnx2torch would
convert the graph too, but it needs torchvision, and writing the weights back into the same ONNX
graph needs no exporter at all.)

Loss: with a final Softmax, the KL divergence between the student's and the teacher's logits
softened by a temperature T (times T^2), mixed with cross-entropy when labels are given
(`alpha * CE + (1 - alpha) * KD`); otherwise the mean squared error to the teacher's outputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from edgecomp.errors import UserError

# (op type, input positions that are trainable when they are float initializers)
TRAINABLE_INPUTS = {"Conv": (1, 2), "Gemm": (1, 2), "MatMul": (0, 1), "BatchNormalization": (1, 2)}


def _torch():
    try:
        import torch
    except ImportError as exc:
        raise UserError("edgecomp finetune needs PyTorch: pip install 'edgecomp[train]'") from exc
    return torch


@dataclass
class FinetuneConfig:
    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 32
    temperature: float = 4.0
    alpha: float = 0.5  # weight of the cross-entropy against labels (when there are labels)
    seed: int = 0


@dataclass
class FinetuneReport:
    losses: list[float] = field(default_factory=list)  # mean training loss per epoch
    trained: list[str] = field(default_factory=list)  # initializers that were trained
    objective: str = ""


def graph_module(model: onnx.ModelProto):
    """A torch.nn.Module computing `model`: forward(*inputs) -> {tensor name: value} for every
    tensor of the graph (so a caller can take logits before a final Softmax)."""
    torch = _torch()
    nn, F = torch.nn, torch.nn.functional
    graph = model.graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    trainable = {
        n.input[i]
        for n in graph.node
        for i in TRAINABLE_INPUTS.get(n.op_type, ())
        if i < len(n.input) and n.input[i] in inits and inits[n.input[i]].dtype == np.float32
    }
    for node in graph.node:
        if node.op_type not in _OPS:
            raise UserError(f"finetune: unsupported op {node.op_type} (node '{node.name or node.output[0]}')")

    class GraphModule(nn.Module):
        def __init__(self):
            super().__init__()
            self.keys = {name: f"p{i}" for i, name in enumerate(sorted(trainable))}
            self.weights = nn.ParameterDict(
                {k: nn.Parameter(torch.from_numpy(inits[n].copy())) for n, k in self.keys.items()}
            )
            # Once, not per step: float constants as tensors, every node's attributes parsed.
            self.constants = {n: torch.from_numpy(v.copy()) if v.dtype.kind == "f" else v
                              for n, v in inits.items() if n not in trainable}  # fmt: skip
            self.attrs = [
                {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute} for n in graph.node
            ]
            self.input_names = [i.name for i in graph.input if i.name not in inits]
            first = next(i for i in graph.input if i.name not in inits)
            self.batch = (
                first.type.tensor_type.shape.dim[0].dim_value if first.type.tensor_type.shape.dim else 1
            )

        def _batched(self, x, shape):
            """A Reshape's target with the model's batch size replaced by the batch being run
            (graphs exported for batch 1 say [1, -1] where they mean [batch, -1])."""
            shape = _ints(shape)
            if shape and shape[0] == self.batch and x.shape[0] != self.batch:
                shape[0] = x.shape[0]
            return np.array(shape, np.int64)

        def forward(self, *xs):
            env = dict(zip(self.input_names, xs, strict=True))
            for name, key in self.keys.items():
                env[name] = self.weights[key]
            env.update(self.constants)
            for node, attrs in zip(graph.node, self.attrs, strict=True):
                args = [env[i] if i else None for i in node.input]
                if node.op_type == "Reshape":
                    args[1] = self._batched(args[0], args[1])
                out = _OPS[node.op_type](torch, F, args, attrs)
                for name, value in zip(node.output, out if isinstance(out, tuple) else (out,), strict=False):
                    env[name] = value
            return env

    return GraphModule()


def finetune(student: onnx.ModelProto, teacher: onnx.ModelProto, x: np.ndarray, labels: np.ndarray | None,
             config: FinetuneConfig | None = None, log=lambda *_: None) -> tuple[onnx.ModelProto, FinetuneReport]:  # fmt: skip
    """`student` with its float weights trained on `x` (one sample per row) to match `teacher`
    (and `labels` when given). Preserves the graph (nodes, shapes, every other initializer) and
    the zeros of the trained weights (magnitude pruning's sparsity)."""
    torch = _torch()
    cfg = config or FinetuneConfig()
    torch.manual_seed(cfg.seed)
    s_mod, t_mod = graph_module(student), graph_module(teacher)
    if not list(s_mod.parameters()):
        raise UserError("finetune: the model has no float Conv/Gemm/MatMul weights to train")
    s_out, t_out = _logits_name(student), _logits_name(teacher)
    check_compatible(student, teacher)
    classify = s_out[1] and t_out[1]
    report = FinetuneReport(trained=sorted(s_mod.keys), objective="distillation (softmax logits)"
                            if classify else "distillation (mean squared error)")  # fmt: skip
    if labels is not None and classify:
        report.objective += f" + cross-entropy on labels (alpha {cfg.alpha})"
    xs = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    with torch.no_grad():
        targets = torch.cat([t_mod(xs[i : i + 256])[t_out[0]] for i in range(0, len(xs), 256)])
    ys = None if labels is None else torch.from_numpy(np.asarray(labels).reshape(-1).astype(np.int64))
    opt = torch.optim.Adam(s_mod.parameters(), lr=cfg.lr)
    # Weights that are exactly zero stay zero: magnitude-pruned tiles keep their sparsity.
    nonzero = {k: (w != 0).to(w.dtype) for k, w in s_mod.weights.items()}
    gen = torch.Generator().manual_seed(cfg.seed)
    temp = cfg.temperature
    for epoch in range(cfg.epochs):
        order, total = torch.randperm(len(xs), generator=gen), 0.0
        for i in range(0, len(xs), cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            out = s_mod(xs[idx])[s_out[0]]
            if classify:
                s_l, t_l = out.reshape(len(idx), -1), targets[idx].reshape(len(idx), -1)
                loss = torch.nn.functional.kl_div(torch.log_softmax(s_l / temp, 1), torch.softmax(t_l / temp, 1),
                                                  reduction="batchmean") * temp * temp  # fmt: skip
                if ys is not None:
                    loss = (
                        cfg.alpha * torch.nn.functional.cross_entropy(s_l, ys[idx]) + (1 - cfg.alpha) * loss
                    )
            else:
                loss = torch.nn.functional.mse_loss(out, targets[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                for k, w in s_mod.weights.items():
                    w.mul_(nonzero[k])
            total += float(loss.detach()) * len(idx)
        report.losses.append(total / len(xs))
        if not math.isfinite(report.losses[-1]):
            raise UserError(f"finetune: the loss diverged in epoch {epoch + 1} (lower --lr)")
        log(f"epoch {epoch + 1}/{cfg.epochs}: loss {report.losses[-1]:.4f}")
    tuned = onnx.ModelProto()
    tuned.CopyFrom(student)
    for t in tuned.graph.initializer:
        if t.name in s_mod.keys:
            value = s_mod.weights[s_mod.keys[t.name]].detach().numpy().astype(np.float32)
            t.CopyFrom(numpy_helper.from_array(value, t.name))
    return tuned, report


def check_compatible(student: onnx.ModelProto, teacher: onnx.ModelProto) -> None:
    """A UserError unless both models take and give tensors of the same shapes."""
    for what in ("input", "output"):
        shapes = [[[d.dim_value for d in v.type.tensor_type.shape.dim] for v in getattr(m.graph, what)
                   if v.name not in {t.name for t in m.graph.initializer}] for m in (student, teacher)]  # fmt: skip
        if shapes[0] != shapes[1]:
            raise UserError(f"finetune: the model's {what}s {shapes[0]} and the teacher's {shapes[1]} differ")


def _logits_name(model: onnx.ModelProto) -> tuple[str, bool]:
    """(the tensor to train on, whether it is the logits of a final Softmax)."""
    out = model.graph.output[0].name
    producer = next((n for n in model.graph.node if out in n.output), None)
    if producer is not None and producer.op_type == "Softmax":
        return producer.input[0], True
    return out, False


# --- one function per ONNX op: (torch, F, inputs, attributes) -> output(s) ---------------------


def _pads(x, attrs: dict, kernel: list[int], strides: list[int], dilations: list[int]) -> list[int]:
    """ONNX pads (begin..., end...) for x's spatial dimensions, auto_pad resolved."""
    n = len(kernel)
    auto = attrs.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = [0] * (2 * n)
        for d in range(n):
            size = x.shape[2 + d]
            total = max(
                (-(-size // strides[d]) - 1) * strides[d] + (kernel[d] - 1) * dilations[d] + 1 - size, 0
            )
            small, big = total // 2, total - total // 2
            pads[d], pads[d + n] = (small, big) if auto == "SAME_UPPER" else (big, small)
        return pads
    if auto == "VALID":
        return [0] * (2 * n)
    return list(attrs.get("pads", [0] * (2 * n)))


def _padded(F, x, pads: list[int], value: float = 0.0):
    """x padded per ONNX pads, or (x, symmetric padding) when begin == end everywhere."""
    n = len(pads) // 2
    if pads[:n] == pads[n:]:
        return x, tuple(pads[:n])
    torch_pads = [p for d in reversed(range(n)) for p in (pads[d], pads[d + n])]
    return F.pad(x, torch_pads, value=value), (0,) * n


def _conv(torch, F, a, attrs):
    x, w, b = a[0], a[1], a[2] if len(a) > 2 else None
    k = list(w.shape[2:])
    strides, dil = attrs.get("strides", [1] * len(k)), attrs.get("dilations", [1] * len(k))
    x, pad = _padded(F, x, _pads(x, attrs, k, strides, dil))
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[len(k)]
    return conv(x, w, b, tuple(strides), pad, tuple(dil), attrs.get("group", 1))


def _pool(kind):
    def pool(torch, F, a, attrs):
        x, k = a[0], list(attrs["kernel_shape"])
        strides = attrs.get("strides", [1] * len(k))
        pads = _pads(x, attrs, k, strides, [1] * len(k))
        ceil = bool(attrs.get("ceil_mode", 0))
        if kind == "max":
            x, pad = _padded(F, x, pads, value=-math.inf)
            fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[len(k)]
            return fn(x, k, strides, pad, attrs.get("dilations", [1] * len(k)), ceil)
        include = bool(attrs.get("count_include_pad", 0))
        if include or not any(pads):
            x, pad = _padded(F, x, pads)
            fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[len(k)]
            return fn(x, k, strides, pad, ceil, True)
        # Average over the valid elements only: sum of x over sum of a ones-mask.
        ones = torch.ones_like(x[:1, :1])
        fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[len(k)]
        xs, pad = _padded(F, x, pads)
        ms, _ = _padded(F, ones, pads)
        return fn(xs, k, strides, pad, ceil, True) / fn(ms, k, strides, pad, ceil, True)

    return pool


def _gemm(torch, F, a, attrs):
    x, w = a[0], a[1]
    x = x.T if attrs.get("transA", 0) else x
    w = w.T if attrs.get("transB", 0) else w
    y = attrs.get("alpha", 1.0) * (x @ w)
    if len(a) > 2 and a[2] is not None:
        y = y + attrs.get("beta", 1.0) * a[2]
    return y


def _ints(v) -> list[int]:
    return [int(i) for i in np.asarray(v).reshape(-1)]


def _axes(a, attrs) -> list[int] | None:
    if len(a) > 1 and a[1] is not None:
        return _ints(a[1])
    return list(attrs["axes"]) if "axes" in attrs else None


def _reshape(torch, F, a, attrs):
    shape = _ints(a[1])
    if not attrs.get("allowzero", 0):
        shape = [a[0].shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return a[0].reshape(shape)


def _flatten(torch, F, a, attrs):
    axis = attrs.get("axis", 1) % max(a[0].dim(), 1)
    return a[0].reshape(int(np.prod(a[0].shape[:axis])), -1)


def _squeeze(torch, F, a, attrs):
    axes = _axes(a, attrs)
    x = a[0]
    for ax in sorted((d % x.dim() for d in axes), reverse=True) if axes else []:
        x = x.squeeze(ax)
    return x if axes else x.squeeze()


def _unsqueeze(torch, F, a, attrs):
    x = a[0]
    rank = x.dim() + len(_axes(a, attrs))
    for ax in sorted(d % rank for d in _axes(a, attrs)):
        x = x.unsqueeze(ax)
    return x


def _clip(torch, F, a, attrs):
    lo = a[1] if len(a) > 1 and a[1] is not None else attrs.get("min")
    hi = a[2] if len(a) > 2 and a[2] is not None else attrs.get("max")
    lo = None if lo is None else float(np.asarray(lo.detach() if hasattr(lo, "detach") else lo))
    hi = None if hi is None else float(np.asarray(hi.detach() if hasattr(hi, "detach") else hi))
    return torch.clamp(a[0], lo, hi)


def _batchnorm(torch, F, a, attrs):
    x, scale, bias, mean, var = a[:5]
    return F.batch_norm(
        x, torch.as_tensor(mean), torch.as_tensor(var), scale, bias, False, 0.0, attrs.get("epsilon", 1e-5)
    )


def _pad(torch, F, a, attrs):
    pads = _ints(a[1]) if len(a) > 1 else list(attrs["pads"])
    value = float(np.asarray(a[2])) if len(a) > 2 and a[2] is not None else float(attrs.get("value", 0.0))
    mode = attrs.get("mode", b"constant")
    if (mode.decode() if isinstance(mode, bytes) else mode) != "constant":
        raise UserError("finetune: only constant Pad is supported")
    n = len(pads) // 2
    torch_pads = [p for d in reversed(range(n)) for p in (pads[d], pads[d + n])]
    return F.pad(a[0], torch_pads, value=value)


def _reduce_mean(torch, F, a, attrs):
    axes = _axes(a, attrs)
    return a[0].mean(dim=axes or list(range(a[0].dim())), keepdim=bool(attrs.get("keepdims", 1)))


_OPS = {
    "Conv": _conv,
    "Gemm": _gemm,
    "MatMul": lambda torch, F, a, at: torch.matmul(a[0], a[1]),
    "Add": lambda torch, F, a, at: a[0] + a[1],
    "Sub": lambda torch, F, a, at: a[0] - a[1],
    "Mul": lambda torch, F, a, at: a[0] * a[1],
    "Div": lambda torch, F, a, at: a[0] / a[1],
    "Relu": lambda torch, F, a, at: F.relu(a[0]),
    "LeakyRelu": lambda torch, F, a, at: F.leaky_relu(a[0], at.get("alpha", 0.01)),
    "Sigmoid": lambda torch, F, a, at: torch.sigmoid(a[0]),
    "Tanh": lambda torch, F, a, at: torch.tanh(a[0]),
    "HardSigmoid": lambda torch, F, a, at: torch.clamp(
        at.get("alpha", 0.2) * a[0] + at.get("beta", 0.5), 0, 1
    ),
    "HardSwish": lambda torch, F, a, at: F.hardswish(a[0]),
    "Clip": _clip,
    "Softmax": lambda torch, F, a, at: torch.softmax(a[0], at.get("axis", -1)),
    "MaxPool": _pool("max"),
    "AveragePool": _pool("avg"),
    "GlobalAveragePool": lambda torch, F, a, at: a[0].mean(dim=tuple(range(2, a[0].dim())), keepdim=True),
    "GlobalMaxPool": lambda torch, F, a, at: a[0].amax(dim=tuple(range(2, a[0].dim())), keepdim=True),
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Transpose": lambda torch, F, a, at: a[0].permute(*(at.get("perm") or reversed(range(a[0].dim())))),
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Concat": lambda torch, F, a, at: torch.cat(a, at["axis"]),
    "Identity": lambda torch, F, a, at: a[0],
    "Dropout": lambda torch, F, a, at: a[0],
    "BatchNormalization": _batchnorm,
    "Pad": _pad,
    "ReduceMean": _reduce_mean,
}


def finetune_files(model_path: Path, teacher_path: Path, data: Path, eval_data: Path | None, output: Path,
                   config: FinetuneConfig, input_shapes: dict, log=print) -> list[str]:  # fmt: skip
    """`edgecomp finetune`: train `model_path` (after the lossless passes) by distillation from
    `teacher_path` on `data`, write it to `output` (never half-written); the summary lines."""
    from edgecomp.analyze import baseline_outputs, score
    from edgecomp.io import load_eval
    from edgecomp.pipeline import float_model_of, io_specs

    student = float_model_of(model_path, input_shapes)
    teacher = float_model_of(teacher_path, input_shapes)
    check_compatible(student, teacher)
    samples, labels = load_eval(data, io_specs(student), "--data")
    x = np.concatenate([s[0] for s in samples])
    evals = load_eval(eval_data, io_specs(student)) if eval_data else None
    before = None
    if evals:
        base = baseline_outputs(teacher, evals[0])
        before = score(student, evals[0], base, evals[1])
    log(f"fine-tuning {model_path} on {len(x)} samples, {config.epochs} epochs")
    tuned, rep = finetune(student, teacher, x, labels, config, log)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    onnx.save(tuned, str(tmp))
    tmp.replace(output)
    lines = [f"objective: {rep.objective}", f"trained {len(rep.trained)} weight tensors",
             f"loss: {rep.losses[0]:.4f} (epoch 1) -> {rep.losses[-1]:.4f} (epoch {len(rep.losses)})"]  # fmt: skip
    if evals:
        after = score(tuned, evals[0], base, evals[1])
        for key, name in (("top1", "top-1"), ("argmax_agreement", "argmax agreement with the teacher")):
            if key in after:
                lines.append(f"{name}: {before[key]:.1%} -> {after[key]:.1%}")
        lines.append(f"SQNR vs the teacher: {before['sqnr_db']:.1f} -> {after['sqnr_db']:.1f} dB")
    lines.append(f"wrote {output}")
    return lines
