"""Million-parameter models for the benchmark, built from their published architectures as ONNX
(onnx.helper, no framework) with random weights: He-normal convolutions, small random biases (the
inference graph after BatchNorm folding). Random weights are enough for speed, size and
correctness against onnxruntime; accuracy figures need trained weights and are not claimed.

- MobileNetV2 (Sandler et al. 2018), width 1.0, 224x224x3, 1000 classes: 3,487,816 parameters
  after BatchNorm folding (3,504,872 before).
- MobileFaceNet (Chen et al. 2018), 112x112x3 -> 128-d embedding, PReLU, global depthwise
  (7x7) convolution: 993,344 parameters after folding.
- A wide MLP (bench/run.py --huge: compile time and compiler memory with 54 M weights): 4096
  inputs, three 4096-wide ReLU layers, 1000 outputs; 54,440,936 parameters (218 MB of fp32).

    python bench/models.py OUT_DIR     # writes mobilenet_v2.onnx, mobilefacenet.onnx and samples
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class _Builder:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.n = 0

    def _name(self, kind: str) -> str:
        self.n += 1
        return f"{kind}{self.n}"

    def const(self, kind: str, value: np.ndarray) -> str:
        name = self._name(kind)
        self.inits.append(numpy_helper.from_array(value.astype(np.float32), name))
        return name

    def conv(
        self, x: str, cin: int, cout: int, k: int, stride: int = 1, group: int = 1, pad: int | None = None
    ) -> str:
        fan_in = cin // group * k * k
        w = self.rng.standard_normal((cout, cin // group, k, k)) * np.sqrt(2.0 / fan_in)
        b = self.rng.standard_normal(cout) * 0.05
        pad = k // 2 if pad is None else pad
        y = self._name("conv")
        self.nodes.append(helper.make_node(
            "Conv", [x, self.const("w", w), self.const("b", b)], [y], y,
            kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4, group=group,
        ))  # fmt: skip
        return y

    def relu6(self, x: str) -> str:
        y = self._name("relu6")
        lo, hi = self.const("lo", np.array(0.0)), self.const("hi", np.array(6.0))
        self.nodes.append(helper.make_node("Clip", [x, lo, hi], [y], y))
        return y

    def prelu(self, x: str, c: int) -> str:
        y = self._name("prelu")
        slope = self.const("slope", np.full((c, 1, 1), 0.25) + self.rng.standard_normal((c, 1, 1)) * 0.02)
        self.nodes.append(helper.make_node("PRelu", [x, slope], [y], y))
        return y

    def add(self, a: str, b: str) -> str:
        y = self._name("add")
        self.nodes.append(helper.make_node("Add", [a, b], [y], y))
        return y

    def model(self, x: str, shape: list[int], y: str, out_shape: list[int], name: str) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, name,
            [helper.make_tensor_value_info(x, TensorProto.FLOAT, shape)],
            [helper.make_tensor_value_info(y, TensorProto.FLOAT, out_shape)],
            self.inits,
        )  # fmt: skip
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = 8
        onnx.checker.check_model(model)
        return model


def mobilenet_v2(
    width: float = 1.0, resolution: int = 224, classes: int = 1000, seed: int = 0
) -> onnx.ModelProto:
    """MobileNetV2 (inverted residuals, linear bottlenecks, ReLU6)."""

    def ch(c: float) -> int:  # round to a multiple of 8, as the reference implementation
        v = max(8, int(c * width + 4) // 8 * 8)
        return v + 8 if v < 0.9 * c * width else v

    b = _Builder(seed)
    x = b.relu6(b.conv("input", 3, ch(32), 3, 2))
    cin = ch(32)
    for t, c, n, s in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                       (6, 160, 3, 2), (6, 320, 1, 1)]:  # fmt: skip
        cout = ch(c)
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = cin * t
            y = b.relu6(b.conv(x, cin, hidden, 1)) if t != 1 else x
            y = b.relu6(b.conv(y, hidden, hidden, 3, stride, group=hidden))
            y = b.conv(y, hidden, cout, 1)  # linear bottleneck
            x = b.add(x, y) if stride == 1 and cin == cout else y
            cin = cout
    last = max(1280, ch(1280)) if width > 1.0 else 1280
    x = b.relu6(b.conv(x, cin, last, 1))
    pooled, flat = "pool", "flat"
    b.nodes.append(helper.make_node("GlobalAveragePool", [x], [pooled], pooled))
    b.nodes.append(helper.make_node("Flatten", [pooled], [flat], flat))
    w = b.const("fc_w", b.rng.standard_normal((classes, last)) * np.sqrt(1.0 / last))
    fc_b = b.const("fc_b", b.rng.standard_normal(classes) * 0.01)
    b.nodes.append(helper.make_node("Gemm", [flat, w, fc_b], ["logits"], "fc", transB=1))
    return b.model("input", [1, 3, resolution, resolution], "logits", [1, classes], "mobilenet_v2")


def mobilefacenet(seed: int = 0) -> onnx.ModelProto:
    """MobileFaceNet: 112x112 face crop -> 128-d embedding."""
    b = _Builder(seed)
    x = b.prelu(b.conv("input", 3, 64, 3, 2), 64)
    x = b.prelu(b.conv(x, 64, 64, 3, 1, group=64), 64)
    cin = 64
    for t, c, n, s in [(2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1)]:
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = cin * t
            y = b.prelu(b.conv(x, cin, hidden, 1), hidden)
            y = b.prelu(b.conv(y, hidden, hidden, 3, stride, group=hidden), hidden)
            y = b.conv(y, hidden, c, 1)
            x = b.add(x, y) if stride == 1 and cin == c else y
            cin = c
    x = b.prelu(b.conv(x, cin, 512, 1), 512)
    x = b.conv(x, 512, 512, 7, 1, group=512, pad=0)  # global depthwise convolution, linear
    x = b.conv(x, 512, 128, 1)  # linear embedding
    flat = "embedding"
    b.nodes.append(helper.make_node("Flatten", [x], [flat], flat))
    return b.model("input", [1, 3, 112, 112], flat, [1, 128], "mobilefacenet")


def mlp_wide(inputs: int = 4096, width: int = 4096, layers: int = 3, classes: int = 1000,
             seed: int = 0) -> onnx.ModelProto:  # fmt: skip
    """Fully connected layers (Gemm, transB) of `width` units with ReLU, then `classes` outputs:
    a model whose size is all weights."""
    b = _Builder(seed)
    x, cin = "input", inputs
    for i, cout in enumerate([width] * layers + [classes]):
        w = b.const("w", b.rng.standard_normal((cout, cin), dtype=np.float32) * np.float32(np.sqrt(2.0 / cin)))
        bias = b.const("b", b.rng.standard_normal(cout, dtype=np.float32) * np.float32(0.01))
        y = b._name("fc")
        b.nodes.append(helper.make_node("Gemm", [x, w, bias], [y], y, transB=1))
        if i < layers:
            r = b._name("relu")
            b.nodes.append(helper.make_node("Relu", [y], [r], r))
            y = r
        x, cin = y, cout
    return b.model("input", [1, inputs], x, [1, classes], "mlp_wide")


LARGE_MODELS = {"mobilenet_v2": mobilenet_v2, "mobilefacenet": mobilefacenet}
HUGE_MODELS = {"mlp_wide": mlp_wide}


def write_large_models(out: Path, models: dict | None = None) -> dict[str, tuple[Path, Path]]:
    """Write each model (if missing) and a sample input and a calibration set beside it."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, make in (LARGE_MODELS if models is None else models).items():
        path, sample = out / f"{name}.onnx", out / f"{name}_sample.npy"
        if not path.exists():
            model = make()
            onnx.save(model, str(path))
            shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
            rng = np.random.default_rng(1)
            np.save(sample, rng.uniform(-1, 1, [4, *shape]).astype(np.float32))
        paths[name] = (path, sample)
    return paths


if __name__ == "__main__":
    for name, (path, _) in write_large_models(
        Path(sys.argv[1] if len(sys.argv) > 1 else "build/models")
    ).items():
        m = onnx.load(str(path))
        params = sum(
            int(np.prod(t.dims)) for t in m.graph.initializer if len(t.dims) > 1 or t.name.startswith("b")
        )
        print(f"{name}: {path} ({path.stat().st_size:,} bytes)")
