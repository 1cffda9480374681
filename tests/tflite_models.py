"""Small .tflite models built in the tests (no TensorFlow): the flatbuffer schema's object API that
the tflite-micro wheel ships, int8 tensors with the quantization TFLite's converter gives them
(per-channel symmetric weights, int32 biases at input x weight scale, asymmetric activations)."""

from __future__ import annotations

import zlib

import flatbuffers
import numpy as np
from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as S

_TYPE = {np.dtype(np.int8): S.TensorType.INT8, np.dtype(np.int32): S.TensorType.INT32,
         np.dtype(np.float32): S.TensorType.FLOAT32, np.dtype(np.int16): S.TensorType.INT16,
         np.dtype(np.int64): S.TensorType.INT64}  # fmt: skip
BO = S.BuiltinOperator
OPT = S.BuiltinOptions
RELU, RELU6 = 1, 3
SAME, VALID = 0, 1


def options(cls: str, **fields):
    o = getattr(S, cls)()
    for k, v in fields.items():
        setattr(o, k, v)
    return o


class Builder:
    """One subgraph; tensors and operators appended in order."""

    def __init__(self, seed: str) -> None:
        self.rng = np.random.default_rng(zlib.crc32(seed.encode()))
        self.m = S.ModelT()
        self.m.version = 3
        self.m.operatorCodes, self.m.buffers = [], [S.BufferT()]
        self.sg = S.SubGraphT()
        self.sg.tensors, self.sg.operators, self.sg.inputs, self.sg.outputs = [], [], [], []
        self.m.subgraphs = [self.sg]
        self._codes: dict[int, int] = {}

    def tensor(self, shape, dtype=np.int8, data=None, scale=None, zp=0, qdim=0, name=None) -> int:
        t = S.TensorT()
        t.shape = [int(v) for v in shape]
        t.type = _TYPE[np.dtype(dtype)]
        t.name = name or f"t{len(self.sg.tensors)}"
        t.buffer = 0
        if data is not None:
            buf = S.BufferT()
            buf.data = np.frombuffer(np.ascontiguousarray(np.asarray(data, dtype)).tobytes(), np.uint8)
            self.m.buffers.append(buf)
            t.buffer = len(self.m.buffers) - 1
        if scale is not None:
            q = S.QuantizationParametersT()
            q.scale = [float(v) for v in np.atleast_1d(np.asarray(scale, np.float32))]
            zps = np.atleast_1d(np.asarray(zp, np.int64))
            q.zeroPoint = [int(v) for v in (np.zeros(len(q.scale), np.int64) if zps.size != len(q.scale) else zps)]
            q.quantizedDimension = int(qdim)
            t.quantization = q
        self.sg.tensors.append(t)
        return len(self.sg.tensors) - 1

    def act(self, shape, scale=None, zp=None, name=None) -> int:
        """An int8 activation with random (or given) quantization."""
        scale = float(self.rng.uniform(0.01, 0.1)) if scale is None else scale
        zp = int(self.rng.integers(-20, 20)) if zp is None else zp
        return self.tensor(shape, np.int8, scale=scale, zp=zp, name=name)

    def weights(self, shape, qdim=0, per_channel=True) -> tuple[int, np.ndarray]:
        w = self.rng.integers(-127, 128, shape).astype(np.int8)
        n = shape[qdim] if per_channel else 1
        scales = self.rng.uniform(0.002, 0.02, n).astype(np.float32)
        return self.tensor(shape, np.int8, w, scales, np.zeros(n), qdim), scales

    def bias(self, n: int, x_scale: float, w_scales: np.ndarray) -> int:
        b = self.rng.integers(-3000, 3000, n).astype(np.int32)
        return self.tensor([n], np.int32, b, np.broadcast_to(np.float32(x_scale) * w_scales, (n,)), np.zeros(n))

    def scale(self, i: int) -> float:
        return self.sg.tensors[i].quantization.scale[0]

    def op(self, code: int, inputs, outputs, opt_type: int = 0, opt=None) -> None:
        if code not in self._codes:
            oc = S.OperatorCodeT()
            oc.builtinCode = code
            oc.deprecatedBuiltinCode = min(code, 127)
            oc.version = 1
            self.m.operatorCodes.append(oc)
            self._codes[code] = len(self.m.operatorCodes) - 1
        o = S.OperatorT()
        o.opcodeIndex = self._codes[code]
        o.inputs, o.outputs = list(inputs), list(outputs)
        o.builtinOptionsType, o.builtinOptions = opt_type, opt
        self.sg.operators.append(o)

    def finish(self, inputs, outputs) -> bytes:
        self.sg.inputs, self.sg.outputs = list(inputs), list(outputs)
        b = flatbuffers.Builder(1 << 16)
        b.Finish(self.m.Pack(b), file_identifier=b"TFL3")
        return bytes(b.Output())

    # -- layers ------------------------------------------------------------------------------
    def conv(self, x: int, cout: int, k: int, stride=1, padding=SAME, act=0, dilation=1) -> int:
        n, h, w, cin = self.sg.tensors[x].shape
        wt, ws = self.weights([cout, k, k, cin])
        oh = -(-h // stride) if padding == SAME else (h - (k - 1) * dilation - 1) // stride + 1
        ow = -(-w // stride) if padding == SAME else (w - (k - 1) * dilation - 1) // stride + 1
        y = self.act([n, oh, ow, cout], zp=-128 if act else None)
        self.op(BO.CONV_2D, [x, wt, self.bias(cout, self.scale(x), ws)], [y], OPT.Conv2DOptions,
                options("Conv2DOptionsT", padding=padding, strideH=stride, strideW=stride, fusedActivationFunction=act,
                        dilationHFactor=dilation, dilationWFactor=dilation))  # fmt: skip
        return y

    def dwconv(self, x: int, k: int, stride=1, padding=SAME, act=0, mult=1) -> int:
        n, h, w, cin = self.sg.tensors[x].shape
        wt, ws = self.weights([1, k, k, cin * mult], qdim=3)
        oh = -(-h // stride) if padding == SAME else (h - k) // stride + 1
        ow = -(-w // stride) if padding == SAME else (w - k) // stride + 1
        y = self.act([n, oh, ow, cin * mult], zp=-128 if act else None)
        self.op(BO.DEPTHWISE_CONV_2D, [x, wt, self.bias(cin * mult, self.scale(x), ws)], [y],
                OPT.DepthwiseConv2DOptions,
                options("DepthwiseConv2DOptionsT", padding=padding, strideH=stride, strideW=stride,
                        depthMultiplier=mult, fusedActivationFunction=act, dilationHFactor=1, dilationWFactor=1))  # fmt: skip
        return y

    def fc(self, x: int, units: int, act=0, per_channel=False, out_shape=None) -> int:
        depth = self.sg.tensors[x].shape[-1] if out_shape else int(np.prod(self.sg.tensors[x].shape[1:]))
        wt, ws = self.weights([units, depth], per_channel=per_channel)
        batch = int(np.prod(self.sg.tensors[x].shape)) // depth
        y = self.act(out_shape or [batch, units], zp=-128 if act else None)
        self.op(BO.FULLY_CONNECTED, [x, wt, self.bias(units, self.scale(x), np.broadcast_to(ws, (units,)))], [y],
                OPT.FullyConnectedOptions,
                options("FullyConnectedOptionsT", fusedActivationFunction=act, keepNumDims=out_shape is not None))  # fmt: skip
        return y


def random_input(model: bytes, seed: int = 0) -> list[np.ndarray]:
    """Random values for each input of `model`: int8 over its whole range, floats standard normal."""
    m = S.ModelT.InitFromPackedBuf(bytearray(model), 0)
    sg = m.subgraphs[0]
    rng = np.random.default_rng(seed)
    out = []
    for i in sg.inputs:
        t = sg.tensors[i]
        shape = tuple(int(v) for v in t.shape)
        if t.type == S.TensorType.INT8:
            out.append(rng.integers(-128, 128, shape).astype(np.int8))
        else:
            out.append(rng.standard_normal(shape).astype(np.float32))
    return out
