"""Instructions per MAC of an int4 convolution and dense layer on an A-class target in QEMU (system
mode, -icount: the PMU's ticks are instructions): the NEON int4 kernels (conv_neon_s4,
dense_neon_s4), the portable C int4 kernels (conv_s4, dense_s4: the NEON entries left out of the
variant table) and the int8 NEON kernels, each layer timed alone (--per-layer).

    python bench/int4_neon.py [--target cortex-a53-virt] [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import onnx
from onnx import helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import make_model, random_inputs, weight  # noqa: E402

import edgecomp.lower.kernels as kernels  # noqa: E402
from edgecomp.passes.quantize import quantize  # noqa: E402
from edgecomp.pipeline import BuildOptions, build  # noqa: E402
from edgecomp.runner import run_samples  # noqa: E402
from edgecomp.targets import load_target  # noqa: E402

NEON_S4 = ("conv_neon_s4", "dense_neon_s4")


def conv() -> onnx.ModelProto:
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1])]
    return make_model(nodes, [("x", [1, 16, 16, 16])], [("y", [1, 32, 16, 16])],
                      [weight("w", [32, 16, 3, 3]), weight("b", [32])])  # fmt: skip


def dense() -> onnx.ModelProto:
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)]
    return make_model(nodes, [("x", [1, 1024])], [("y", [1, 256])], [weight("w", [256, 1024]), weight("b", [256])])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="cortex-a53-virt")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    target = load_target(args.target)
    out = args.out or Path(tempfile.mkdtemp(prefix="int4_neon-"))
    table = kernels.VARIANTS
    for name, make in (("conv 16->32 3x3 16x16", conv), ("dense 1024->256", dense)):
        model = onnx.shape_inference.infer_shapes(make())
        samples = [random_inputs(model, s) for s in range(8)]
        for label, scheme, drop in (("int4 NEON", "w4a8", ()), ("int4 portable C", "w4a8", NEON_S4),
                                    ("int8 NEON", "int8", ())):  # fmt: skip
            kernels.VARIANTS = tuple(v for v in table if v.name not in drop)
            try:
                folder = out / f"{make.__name__}-{scheme}-{'c' if drop else 'neon'}"
                folder.mkdir(parents=True, exist_ok=True)
                onnx.save(quantize(model, samples, scheme).model, folder / "q.onnx")
                result = build(folder / "q.onnx", target, folder / "build", BuildOptions(per_layer=True),
                               log=lambda *_: None)  # fmt: skip
            finally:
                kernels.VARIANTS = table
            run = run_samples(result, samples[:1])[0]
            for layer, ticks in zip(result.report["layers"], run.step_ticks, strict=True):
                if layer.get("macs"):
                    ins = run.ticks_to_instructions(ticks)
                    print(f"{name:24s} {label:16s} {layer['variant']:14s} MACs {layer['macs']:>9,}  instructions "
                          f"{ins:>10,}  per MAC {ins / layer['macs']:.3f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
