"""Regenerate the bundled example: a small CNN for 1x1x28x28 images (digit-sized), with fixed
seeded weights, and one input sample. `python examples/make_example.py` rewrites both files."""

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).parent


def make_model(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)

    def w(name, *shape):
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
        return numpy_helper.from_array(
            (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32), name
        )

    inits = [w("c1_w", 8, 1, 3, 3), w("c1_b", 8), w("dw_w", 8, 1, 3, 3), w("dw_b", 8),
             w("pw_w", 16, 8, 1, 1), w("pw_b", 16), w("fc_w", 10, 16), w("fc_b", 10),
             numpy_helper.from_array(np.float32(0.0), "lo"), numpy_helper.from_array(np.float32(6.0), "hi")]  # fmt: skip
    nodes = [
        helper.make_node("Conv", ["x", "c1_w", "c1_b"], ["c1"], "conv1", pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c1"], ["r1"], "relu1"),
        helper.make_node("Conv", ["r1", "dw_w", "dw_b"], ["dw"], "dwconv", pads=[1, 1, 1, 1], group=8),
        helper.make_node("Clip", ["dw", "lo", "hi"], ["r2"], "relu6"),
        helper.make_node("Conv", ["r2", "pw_w", "pw_b"], ["pw"], "pwconv"),
        helper.make_node("Relu", ["pw"], ["r3"], "relu3"),
        helper.make_node("MaxPool", ["r3"], ["mp"], "pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["mp"], ["gap"], "gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], "flatten"),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], "fc", transB=1),
        helper.make_node("Softmax", ["logits"], ["probs"], "softmax", axis=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 28, 28])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 10])],
        inits,
    )  # fmt: skip
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="edgecomp-example"
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


if __name__ == "__main__":
    onnx.save(make_model(), HERE / "tiny_cnn.onnx")
    x = np.random.default_rng(1).uniform(0, 1, (1, 1, 28, 28)).astype(np.float32)
    np.save(HERE / "tiny_cnn_input.npy", x)
    print("wrote", HERE / "tiny_cnn.onnx", HERE / "tiny_cnn_input.npy")
