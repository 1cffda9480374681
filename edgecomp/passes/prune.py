"""Structured channel pruning: remove whole output channels of Conv/Gemm layers and everything
that reads them, so the graph itself gets smaller (fewer MACs, weights and activation bytes).

Preserves: a valid ONNX model with the same inputs and outputs (names, shapes) that onnxruntime
runs; it computes a different (approximate) function. Channels that must stay together are pruned
together: the branches of a residual Add, a depthwise convolution and its input, BatchNorm and
per-channel constants, Concat parts (each pruned on its own, the consumer sliced accordingly) and
Flatten -> Gemm (the Gemm's input columns of a removed channel go too). Channels that reach a graph
output or come from a graph input, and tensors read by ops this pass does not know, are never pruned.

The analysis assigns each tensor's channel axis (axis 1) a *space*; Conv/Gemm/MatMul start a new
space, channel-wise ops carry it through, Add unites spaces, Concat composes them and Flatten
expands one channel into H*W features.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgecomp.errors import UserError

# Ops whose output has the same channels as their first input, and that read no per-channel data.
CHANNELWISE = frozenset({
    "Relu", "Clip", "Sigmoid", "Tanh", "LeakyRelu", "HardSigmoid", "HardSwish", "Elu", "Selu", "Softplus",
    "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Identity", "Dropout", "Abs", "Neg", "Exp",
    "Sqrt", "Floor", "Ceil", "Round",
})  # fmt: skip
NONZERO_AT_ZERO = frozenset({"Sigmoid", "HardSigmoid", "Exp", "Softplus"})  # f(0) != 0
IMPORTANCE = ("l1", "l2", "activation")


@dataclass
class Space:
    """A set of channels that is pruned as one: `size` channels, kept ones chosen once."""

    size: int
    producers: list = field(default_factory=list)  # (node, weight axis of the out channels)
    followers: list = field(default_factory=list)  # (node, input index, axis): per-channel constants
    frozen: bool = False
    zero_safe: bool = True  # an all-zero channel stays zero through every op that reads it
    parent: Space | None = None
    keep: np.ndarray | None = None

    def root(self) -> Space:
        s = self
        while s.parent is not None:
            s = s.parent
        return s


@dataclass
class Concat:
    parts: list  # Space | Concat | Flat, in order

    @property
    def size(self) -> int:
        return sum(p.size for p in self.parts)


@dataclass
class Flat:
    base: object  # Space | Concat
    inner: int  # features per channel (H*W)

    @property
    def size(self) -> int:
        return self.base.size * self.inner


def _kept(s) -> np.ndarray:
    """Kept indices of a channel axis described by `s`, after the decisions were made."""
    if isinstance(s, Space):
        r = s.root()
        return r.keep if r.keep is not None else np.arange(r.size)
    if isinstance(s, Concat):
        out, off = [], 0
        for p in s.parts:
            out.append(_kept(p) + off)
            off += p.size
        return np.concatenate(out)
    base = _kept(s.base)
    return (base[:, None] * s.inner + np.arange(s.inner)[None, :]).reshape(-1)


def _freeze(s) -> None:
    if isinstance(s, Space):
        s.root().frozen = True
    elif isinstance(s, Concat):
        for p in s.parts:
            _freeze(p)
    elif isinstance(s, Flat):
        _freeze(s.base)


def _mark_unsafe(s) -> None:
    if isinstance(s, Space):
        s.root().zero_safe = False
    elif isinstance(s, Concat):
        for p in s.parts:
            _mark_unsafe(p)
    elif isinstance(s, Flat):
        _mark_unsafe(s.base)


def _unite(a, b) -> object:
    if isinstance(a, Space) and isinstance(b, Space):
        ra, rb = a.root(), b.root()
        if ra is not rb:
            if ra.size != rb.size:
                _freeze(ra)
                _freeze(rb)
                return a
            rb.parent = ra
            ra.frozen |= rb.frozen
            ra.zero_safe &= rb.zero_safe
            ra.producers += rb.producers
            ra.followers += rb.followers
        return a
    _freeze(a)  # unite a composite with anything: keep both whole
    _freeze(b)
    return a


@dataclass(frozen=True)
class PruneReport:
    ratio: float
    importance: str
    layers: list  # per pruned space: producers, channels before/after

    def as_dict(self) -> dict:
        return {"ratio": self.ratio, "importance": self.importance, "layers": self.layers}


def parse_prune(spec: str) -> dict:
    """'channels=0.3' -> {"channels": 0.3}; 'channels=layers.json' (per-layer ratios);
    'sparsity=0.5' (magnitude pruning); both, comma-separated."""
    result: dict = {}
    for part in spec.split(","):
        key, _, value = part.partition("=")
        if key not in ("channels", "sparsity") or not value or key in result:
            raise UserError(f"--prune takes channels=RATIO|RATIOS.json and/or sparsity=RATIO, not '{spec}'")
        try:
            ratio = float(value)
        except ValueError:
            if key == "sparsity":
                raise UserError(f"--prune sparsity takes a ratio, not '{value}'") from None
            result[key] = value
            continue
        if not 0.0 <= ratio < 1.0:
            raise UserError(f"--prune {key} ratio must be in [0, 1), not {ratio}")
        result[key] = ratio
    return result


SPARSE_BLOCK = 4  # weights zeroed four at a time along the reduction axis: one SMLAD pair each
SPARSE_TILE_ROWS = 4  # dense layers: blocks of four output rows together (the kernel's row group)


def magnitude_prune(model: onnx.ModelProto, sparsity: float) -> tuple[onnx.ModelProto, dict]:
    """Zero the `sparsity` fraction of each Conv/Gemm/MatMul weight's blocks, smallest RMS first.
    A block is SPARSE_BLOCK consecutive weights along the reduction axis; in Gemm/MatMul weights,
    the same block of SPARSE_TILE_ROWS consecutive output rows together (a 4x4 tile: the dense
    micro-kernel multiplies four rows at a time, so a zero tile is skipped outright), rows left
    over after the last group of four one by one.

    Preserves the graph and every shape; changes the function. The zeros only save flash where a
    kernel stores the weights compressed: the int8 dense micro-kernel does (a tile bitmask plus the
    nonzero tiles) when at most microkernels.SPARSE_MAX_DENSITY of a layer's tiles are left.
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    inits = {i.name: i for i in model.graph.initializer}
    layers = []
    for node in model.graph.node:
        if (
            node.op_type not in ("Conv", "Gemm", "MatMul")
            or len(node.input) < 2
            or node.input[1] not in inits
        ):
            continue
        w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        if node.op_type == "Conv":
            rows = w.reshape(w.shape[0], -1)
        elif node.op_type == "Gemm" and _attr(node, "transB", 0):
            rows = w
        else:
            rows = w.T  # [K, N] -> rows of K
        n_rows, k = rows.shape
        if k % SPARSE_BLOCK or rows.size < 64:
            continue
        tile = SPARSE_TILE_ROWS if node.op_type != "Conv" else 1
        grouped = n_rows // tile * tile
        # One unit per tile (rows grouped by `tile`) and per block of a left-over row; RMS ranks both.
        units = [rows[:grouped].reshape(grouped // tile, tile, k // SPARSE_BLOCK, SPARSE_BLOCK).transpose(0, 2, 1, 3),
                 rows[grouped:].reshape(n_rows - grouped, k // SPARSE_BLOCK, 1, SPARSE_BLOCK)]  # fmt: skip
        rms = np.concatenate(
            [np.sqrt((u.astype(np.float64) ** 2).mean(axis=(2, 3))).reshape(-1) for u in units]
        )
        n_zero = int(round(rms.size * sparsity))
        if n_zero == 0:
            continue
        keep = np.ones(rms.size, bool)
        keep[np.argsort(rms, kind="stable")[:n_zero]] = False
        split = units[0].shape[0] * units[0].shape[1]
        parts = [
            (u * m.reshape(u.shape[:2])[..., None, None])
            for u, m in zip(units, (keep[:split], keep[split:]), strict=True)
        ]
        pruned = np.concatenate(
            [parts[0].transpose(0, 2, 1, 3).reshape(grouped, k), parts[1].reshape(n_rows - grouped, k)]
        )
        if node.op_type == "Conv":
            new = pruned.reshape(w.shape)
        elif node.op_type == "Gemm" and _attr(node, "transB", 0):
            new = pruned
        else:
            new = pruned.T
        inits[node.input[1]].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(new), node.input[1]))
        layers.append({"node": node.name or node.output[0], "blocks": int(rms.size), "zeroed": n_zero,
                       "block_shape": [tile, SPARSE_BLOCK]})  # fmt: skip
    return model, {
        "sparsity": sparsity,
        "block": SPARSE_BLOCK,
        "tile_rows": SPARSE_TILE_ROWS,
        "layers": layers,
    }


def prune_channels(model: onnx.ModelProto, ratio: float = 0.0, per_layer: dict[str, float] | None = None,
                   importance: str = "l1", samples: list[list[np.ndarray]] | None = None,
                   keep_masks: dict[str, np.ndarray] | None = None) -> tuple[onnx.ModelProto, PruneReport]:  # fmt: skip
    """Prune `ratio` of the output channels of every prunable Conv/Gemm/MatMul group (or the
    ratio `per_layer` gives for a group's first producer, by node name), the least important first.

    importance: "l1"/"l2" norm of each channel's weights (summed over a group's producers), or
    "activation": mean |output| of the producers on `samples`. `keep_masks` (producer name ->
    bool mask) overrides the choice, e.g. to drop provably dead channels only.
    """
    if importance not in IMPORTANCE:
        raise UserError(f"pruning importance must be one of {', '.join(IMPORTANCE)}, not '{importance}'")
    model = onnx.shape_inference.infer_shapes(onnx.ModelProto.FromString(model.SerializeToString()))
    spaces, consumers = _analyse(model)
    acts = _activations(model, spaces, samples) if importance == "activation" else {}
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    layers = []
    for space in spaces:
        if space.parent is not None or space.frozen or not space.producers:
            continue
        first = space.producers[0][0].name or space.producers[0][0].output[0]
        r = (per_layer or {}).get(first, ratio)
        mask = None
        for node, _ in space.producers:
            name = node.name or node.output[0]
            if keep_masks and name in keep_masks:
                m = np.asarray(keep_masks[name], bool)
                mask = m if mask is None else (mask | m)
        if mask is not None:
            keep = np.flatnonzero(mask)
            if keep.size == 0:
                keep = np.array([0])
        elif r > 0:
            score = _importance(space, inits, importance, acts)
            n_keep = max(1, int(round(space.size * (1.0 - r))))
            keep = np.sort(np.argsort(-score, kind="stable")[:n_keep])
        else:
            continue
        if keep.size == space.size:
            continue
        space.keep = keep
        layers.append({"producers": [n.name or n.output[0] for n, _ in space.producers], "channels": space.size,
                       "kept": int(keep.size)})  # fmt: skip
    _apply(model, spaces, consumers, inits)
    del model.graph.value_info[:]
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(model)
    return model, PruneReport(ratio, importance, layers)


def _shape(model: onnx.ModelProto, name: str) -> list[int] | None:
    for vi in (*model.graph.value_info, *model.graph.input, *model.graph.output):
        if vi.name == name and vi.type.tensor_type.HasField("shape"):
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim]
            return dims
    return None


def _attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _analyse(model: onnx.ModelProto):
    """Channel spaces of every tensor; returns (leaf spaces, consumers to slice)."""
    graph = model.graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    space: dict[str, object] = {}
    leaves: list[Space] = []
    consumers: list[tuple[onnx.NodeProto, int, int, object]] = []  # (node, input idx, axis, space of it)

    def new(size: int) -> Space:
        s = Space(size)
        leaves.append(s)
        return s

    for inp in graph.input:
        if inp.name in inits:
            continue
        shape = _shape(model, inp.name)
        if shape and len(shape) >= 2:
            s = new(shape[1])
            s.frozen = True
            space[inp.name] = s

    for node in graph.node:
        op = node.op_type
        x = node.input[0] if node.input else ""
        xs = space.get(x)
        out = node.output[0] if node.output else ""
        if op == "Conv" and node.input[1] in inits:
            w = inits[node.input[1]]
            group = _attr(node, "group", 1)
            if group == 1:
                if xs is not None:
                    consumers.append((node, 1, 1, xs))
                s = new(w.shape[0])
                s.producers.append((node, 0))
                if len(node.input) > 2 and node.input[2]:
                    s.followers.append((node, 2, 0))
                space[out] = s
            elif (
                xs is not None
                and group == w.shape[0] == xs.size
                and w.shape[1] == 1
                and isinstance(xs, Space)
            ):
                xs.root().followers.append((node, 1, 0))  # depthwise: weight rows, bias, group
                if len(node.input) > 2 and node.input[2]:
                    xs.root().followers.append((node, 2, 0))
                space[out] = xs
            else:
                if xs is not None:
                    _freeze(xs)
                space[out] = _frozen(new, w.shape[0])
        elif op in ("Gemm", "MatMul") and len(node.input) > 1 and node.input[1] in inits:
            w = inits[node.input[1]]
            trans_b = _attr(node, "transB", 0) if op == "Gemm" else 0
            if w.ndim != 2 or (op == "Gemm" and _attr(node, "transA", 0)) or _rank(model, x) != 2:
                if xs is not None:
                    _freeze(xs)
                space[out] = _frozen(new, w.shape[0 if trans_b else -1])
                continue
            if xs is not None:
                consumers.append((node, 1, 1 if trans_b else 0, xs))
            s = new(w.shape[0] if trans_b else w.shape[1])
            s.producers.append((node, 0 if trans_b else 1))
            if op == "Gemm" and len(node.input) > 2 and node.input[2] and inits.get(node.input[2]) is not None \
                    and inits[node.input[2]].size == s.size:  # fmt: skip
                s.followers.append((node, 2, 0))
            elif op == "Gemm" and len(node.input) > 2 and node.input[2]:
                s.frozen = True  # a broadcast bias we would not slice
            space[out] = s
        elif op == "BatchNormalization" and xs is not None and isinstance(xs, Space):
            for i in range(1, 5):
                xs.root().followers.append((node, i, 0))
            space[out] = xs
        elif op in CHANNELWISE and xs is not None:
            if op in ("MaxPool", "AveragePool") and _rank(model, x) != 4:
                _freeze(xs)
            space[out] = xs
            lo = inits.get(node.input[1]) if op == "Clip" and len(node.input) > 1 and node.input[1] else None
            hi = inits.get(node.input[2]) if op == "Clip" and len(node.input) > 2 and node.input[2] else None
            if op in NONZERO_AT_ZERO or (lo is not None and lo > 0) or (hi is not None and hi < 0):
                _mark_unsafe(xs)
        elif op in ("Add", "Mul", "Sub", "Div") and len(node.input) == 2:
            spaces_in = [space.get(i) for i in node.input]
            consts = [i for i in node.input if i in inits]
            if all(s is not None for s in spaces_in) and _shape(model, node.input[0]) == _shape(
                model, node.input[1]
            ):
                space[out] = _unite(spaces_in[0], spaces_in[1])
            elif len(consts) == 1 and any(s is not None for s in spaces_in):
                s = next(s for s in spaces_in if s is not None)
                c = inits[consts[0]]
                idx = list(node.input).index(consts[0])
                rank = _rank(model, out)
                if c.size == 1:
                    space[out] = s
                elif isinstance(s, Space) and rank and c.ndim >= rank - 1 and c.shape[c.ndim - rank + 1] == s.size \
                        and c.size == s.size:  # fmt: skip
                    s.root().followers.append((node, idx, c.ndim - rank + 1))  # per-channel constant
                    space[out] = s
                else:
                    _freeze(s)
            else:
                for s in spaces_in:
                    if s is not None:
                        _freeze(s)
        elif op == "Concat" and _attr(node, "axis", 0) % max(_rank(model, out) or 1, 1) == 1:
            parts = [space.get(i) for i in node.input]
            if all(p is not None for p in parts):
                space[out] = Concat(parts)
            else:
                for p in parts:
                    if p is not None:
                        _freeze(p)
        elif op in ("Flatten", "Reshape") and xs is not None:
            shape_in, shape_out = _shape(model, x), _shape(model, out)
            if (shape_in and shape_out and len(shape_in) == 4 and len(shape_out) == 2 and shape_in[0] == shape_out[0]
                    and (op == "Flatten" and _attr(node, "axis", 1) == 1 or op == "Reshape")):  # fmt: skip
                space[out] = Flat(xs, shape_in[2] * shape_in[3])
                if op == "Reshape":
                    consumers.append((node, 1, -1, None))  # its shape constant becomes [N, -1]
            elif shape_in == shape_out:
                space[out] = xs
            else:
                _freeze(xs)
        else:
            for i in node.input:
                if i in space:
                    _freeze(space[i])
    for o in graph.output:
        if o.name in space:
            _freeze(space[o.name])
    return leaves, consumers


def prunable_groups(model: onnx.ModelProto) -> list[dict]:
    """The channel groups `prune_channels` may prune: {"name": first producer (the key for
    per-layer ratios), "producers": [...], "channels": n}, in graph order."""
    spaces, _ = _analyse(onnx.shape_inference.infer_shapes(model))
    return [
        {"name": s.producers[0][0].name or s.producers[0][0].output[0],
         "producers": [n.name or n.output[0] for n, _ in s.producers], "channels": s.size}
        for s in spaces if s.parent is None and not s.frozen and s.producers
    ]  # fmt: skip


def count_macs(model: onnx.ModelProto) -> int:
    """Multiply-accumulates of the Conv, Gemm and MatMul nodes of a float model with static shapes."""
    model = onnx.shape_inference.infer_shapes(model)
    inits = {i.name: i for i in model.graph.initializer}
    total = 0
    for node in model.graph.node:
        if (
            node.op_type not in ("Conv", "Gemm", "MatMul")
            or len(node.input) < 2
            or node.input[1] not in inits
        ):
            continue
        w = list(inits[node.input[1]].dims)
        out = _shape(model, node.output[0]) or []
        if node.op_type == "Conv":
            per_output = int(np.prod(w[1:]))
        else:
            per_output = w[1] if node.op_type == "Gemm" and _attr(node, "transB", 0) else w[0]
        total += int(np.prod(out)) * per_output
    return total


def dead_channel_masks(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Keep-masks (producer name -> bool per channel) that drop only provably dead channels:
    all-zero weights and zero bias in every producer of the group, and nothing downstream that
    turns a zero into something else (BatchNorm, a nonzero per-channel offset, Sigmoid, ...).
    Removing them does not change the model's outputs. Empty when there are none."""
    model = onnx.shape_inference.infer_shapes(model)
    spaces, _ = _analyse(model)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    masks: dict[str, np.ndarray] = {}
    for space in spaces:
        if space.parent is not None or space.frozen or not space.zero_safe or not space.producers:
            continue
        live = np.zeros(space.size, bool)
        for node, axis in space.producers:
            w = np.moveaxis(inits[node.input[1]], axis, 0).reshape(space.size, -1)
            live |= np.any(w != 0, axis=1)
        for node, idx, axis in space.followers:
            c = np.moveaxis(inits[node.input[idx]], axis, 0).reshape(space.size, -1)
            if node.op_type == "BatchNormalization":
                live[:] = True
            elif node.op_type in ("Add", "Sub") or (node.op_type in ("Conv", "Gemm") and idx == 2):
                live |= np.any(c != 0, axis=1)  # an offset: the channel is dead only where it is 0
        if not live.all():
            for node, _ in space.producers:
                masks[node.name or node.output[0]] = live
    return masks


def _frozen(new, size: int) -> Space:
    s = new(size)
    s.frozen = True
    return s


def _rank(model: onnx.ModelProto, name: str) -> int | None:
    shape = _shape(model, name)
    return len(shape) if shape is not None else None


def _importance(space: Space, inits: dict, kind: str, acts: dict) -> np.ndarray:
    score = np.zeros(space.size)
    for node, axis in space.producers:
        if kind == "activation":
            a = acts.get(node.output[0])
            if a is not None:
                score += a / (a.mean() + 1e-12)
            continue
        w = np.moveaxis(inits[node.input[1]].astype(np.float64), axis, 0).reshape(space.size, -1)
        s = np.abs(w).sum(axis=1) if kind == "l1" else np.sqrt((w**2).sum(axis=1))
        score += s / (s.mean() + 1e-12)  # each producer counts equally in a residual group
    return score


def _activations(model: onnx.ModelProto, spaces: list[Space], samples) -> dict[str, np.ndarray]:
    """Mean |output| per channel of every producer on `samples`."""
    if not samples:
        raise UserError("--prune-importance activation needs calibration data (--calib)")
    import onnxruntime as ort

    names = sorted({n.output[0] for s in spaces for n, _ in s.producers})
    probe = onnx.ModelProto.FromString(model.SerializeToString())
    have = {o.name for o in probe.graph.output}
    for name in names:
        if name not in have:
            probe.graph.output.append(helper.make_empty_tensor_value_info(name))
    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    inputs = [i.name for i in sess.get_inputs()]
    sums: dict[str, np.ndarray] = {}
    for sample in samples:
        outs = sess.run(names, dict(zip(inputs, sample, strict=True)))
        for name, value in zip(names, outs, strict=True):
            v = np.abs(np.moveaxis(value, 1, 0).reshape(value.shape[1], -1)).mean(axis=1)
            sums[name] = sums.get(name, 0) + v
    return {k: v / len(samples) for k, v in sums.items()}


def _apply(model: onnx.ModelProto, spaces: list[Space], consumers: list, inits: dict) -> None:
    """Slice every tensor the decisions touch."""
    graph = model.graph
    new_values: dict[str, np.ndarray] = {}

    def value(name: str) -> np.ndarray:
        return new_values.get(name, inits[name])

    for s in spaces:
        if s.parent is not None or s.keep is None:
            continue
        for node, axis in s.producers:
            new_values[node.input[1]] = np.take(value(node.input[1]), s.keep, axis=axis)
        for node, idx, axis in s.followers:
            new_values[node.input[idx]] = np.take(value(node.input[idx]), s.keep, axis=axis)
            if node.op_type == "Conv" and idx == 1:  # depthwise: one group per channel
                for a in node.attribute:
                    if a.name == "group":
                        a.i = int(s.keep.size)
    for node, idx, axis, sp in consumers:
        if sp is None:  # Reshape feeding a pruned Gemm: let it infer the feature count
            shape = value(node.input[idx]).copy()
            shape[-1] = -1
            new_values[node.input[idx]] = shape
            continue
        kept = _kept(sp)
        if kept.size != sp.size:
            new_values[node.input[idx]] = np.take(value(node.input[idx]), kept, axis=axis)
    # Tensors shared by several nodes get one consistent slice: a shared constant sliced twice
    # differently would be an error in the analysis, so the model checker will catch it.
    for i, init in enumerate(graph.initializer):
        if init.name in new_values:
            graph.initializer[i].CopyFrom(
                numpy_helper.from_array(np.ascontiguousarray(new_values[init.name]), init.name)
            )
