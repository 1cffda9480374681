"""ONNX backend conformance: the `onnx` package's node tests, compiled by edgecomp and checked
against the outputs the suite ships. Writes a per-op report (passed / failed / unsupported).

    python bench/conformance.py [--target host] [--ops Conv,Resize] [--json F] [--markdown docs/conformance.md]

The node tests (onnx/backend/test/data/node/*: model.onnx + test_data_set_0/*.pb) come from the
onnx 1.22.0 wheel (1.23 stopped shipping them), downloaded once with pip into .cache/. A test
counts for an op when its graph is that single op (the `_expanded` variants test the ops of the
function body instead). Inputs that a deployed model holds as constants are frozen into
initializers: weights and biases, quantization scales and zero points, shape/axes/pads/roi
tensors and every int64 input. Data inputs stay model inputs: input 0, and every input of the
elementwise binaries, Concat and MatMul(Integer). Outputs are compared as the suite's own runner
does: floats with rtol 1e-3 / atol 1e-7, integers exactly.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

REPO = Path(__file__).resolve().parents[1]
ONNX_WITH_DATA = "1.22.0"
CACHE = REPO / ".cache" / f"onnx-{ONNX_WITH_DATA}-node-tests"

# The ops issue 7 asks for (float32 and, where ONNX defines them, quantized forms).
OPS = (
    "Conv", "ConvTranspose", "Gemm", "MatMul", "Relu", "LeakyRelu", "PRelu", "Clip", "Sigmoid",
    "HardSigmoid", "HardSwish", "Tanh", "Softmax", "MaxPool", "AveragePool", "GlobalAveragePool",
    "GlobalMaxPool", "Add", "Sub", "Mul", "Div", "Concat", "Split", "Slice", "Pad", "Reshape", "Flatten",
    "Transpose", "Squeeze", "Unsqueeze", "ReduceMean", "ReduceMax", "Resize", "BatchNormalization",
    "QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger",
)  # fmt: skip
ALL_DATA_INPUTS = {"Add", "Sub", "Mul", "Div", "Concat", "MatMul"}
DATA_INPUTS = {"QLinearMatMul": (0, 3), "MatMulInteger": (0, 1)}
RTOL, ATOL = 1e-3, 1e-7
# 4- and 2-bit integers travel one per byte (edgecomp's representation of them on the device).
_WIDE = {"int4": np.int8, "int2": np.int8, "uint4": np.uint8, "uint2": np.uint8}

# A sample for QEMU Cortex-M7: one or two cases per op family.
QEMU_SAMPLE = (
    "test_conv_with_strides_padding", "test_convtranspose", "test_gemm_default_single_elem_vector_bias",
    "test_matmul_3d", "test_leakyrelu", "test_softmax_axis_1", "test_maxpool_2d_pads",
    "test_averagepool_2d_same_upper", "test_add_bcast", "test_div_uint8", "test_concat_3d_axis_1",
    "test_split_variable_parts_2d_opset18", "test_slice_neg_steps", "test_resize_upsample_scales_linear",
    "test_resize_downsample_scales_cubic_antialias", "test_batchnorm_epsilon", "test_quantizelinear_int4",
    "test_dequantizelinear_axis", "test_qlinearconv", "test_qlinearmatmul_3D_int8_float32",
    "test_convinteger_with_padding", "test_matmulinteger", "test_reduce_mean_keepdims_random",
)  # fmt: skip


@dataclass(frozen=True)
class Case:
    name: str
    op: str
    path: Path


@dataclass
class Outcome:
    case: Case
    status: str  # "passed", "failed" (wrong output) or "unsupported" (refused with an error)
    detail: str = ""


def node_tests_dir(fetch: bool = True) -> Path | None:
    """The node test folder: the installed onnx's if it ships one, else the cached 1.22.0 copy
    (downloaded with pip when `fetch`)."""
    installed = Path(onnx.__file__).parent / "backend" / "test" / "data" / "node"
    if installed.is_dir() and any(installed.iterdir()):
        return installed
    if (CACHE / ".complete").exists():
        return CACHE
    if not fetch:
        return None
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    # Test workers (pytest-xdist) collect at the same time: one downloads, the others wait for it.
    with open(CACHE.parent / f".{CACHE.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (CACHE / ".complete").exists():
            return CACHE
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--no-deps",
                 "--only-binary=:all:", f"onnx=={ONNX_WITH_DATA}", "-d", tmp],
                check=True,
            )  # fmt: skip
            wheel = next(Path(tmp).glob("onnx-*.whl"))
            prefix = "onnx/backend/test/data/node/"
            with zipfile.ZipFile(wheel) as z:
                for info in z.infolist():
                    if info.filename.startswith(prefix) and not info.is_dir():
                        dest = CACHE / info.filename[len(prefix) :]
                        dest.parent.mkdir(parents=True, exist_ok=True)
                        dest.write_bytes(z.read(info))
        (CACHE / ".complete").write_text(ONNX_WITH_DATA + "\n")
    return CACHE


def discover(root: Path, ops: list[str] | tuple[str, ...] = OPS) -> list[Case]:
    """Node tests whose graph is a single node of one of `ops`."""
    cases = []
    for d in sorted(root.iterdir()):
        if not (d / "model.onnx").is_file():
            continue
        nodes = onnx.load(str(d / "model.onnx"), load_external_data=False).graph.node
        if len(nodes) == 1 and nodes[0].op_type in ops:
            cases.append(Case(d.name, nodes[0].op_type, d))
    return cases


def _tensor(path: Path) -> onnx.TensorProto:
    t = onnx.TensorProto()
    t.ParseFromString(path.read_bytes())
    return t


def _wide(arr: np.ndarray) -> np.ndarray:
    return arr.astype(_WIDE[str(arr.dtype)]) if str(arr.dtype) in _WIDE else arr


def prepare(case: Case) -> tuple[onnx.ModelProto, list[np.ndarray], list[np.ndarray]]:
    """The model with its constant-in-deployment inputs frozen, the data inputs, the expected outputs."""
    model = onnx.load(str(case.path / "model.onnx"))
    node = model.graph.node[0]
    data_set = case.path / "test_data_set_0"

    def numbered(kind: str) -> list[Path]:
        return sorted(data_set.glob(f"{kind}_*.pb"), key=lambda p: int(p.stem.split("_")[1]))

    given = [_tensor(p) for p in numbered("input")]
    expected = [_wide(numpy_helper.to_array(_tensor(p))) for p in numbered("output")]
    keep = DATA_INPUTS.get(node.op_type, (0,))
    runtime, arrays = [], []
    for vi, t in zip(list(model.graph.input), given, strict=False):
        position = list(node.input).index(vi.name)
        is_data = node.op_type in ALL_DATA_INPUTS or position in keep
        if is_data and t.data_type != onnx.TensorProto.INT64:
            runtime.append(vi)
            arrays.append(_wide(numpy_helper.to_array(t)))
        else:
            frozen = onnx.TensorProto()
            frozen.CopyFrom(t)
            frozen.name = vi.name
            model.graph.initializer.append(frozen)
    del model.graph.input[:]
    model.graph.input.extend(runtime)
    return model, arrays, expected


def _tensors_only(case: Case) -> bool:
    """Whether every graph input and output of `case` is a tensor (not a sequence or optional)."""
    graph = onnx.load(str(case.path / "model.onnx"), load_external_data=False).graph
    return all(v.type.HasField("tensor_type") for v in [*graph.input, *graph.output])


def run_case(case: Case, target: str, workdir: Path, extra_cflags: str = "-Werror",
             sanitize: bool = False) -> Outcome:  # fmt: skip
    """Compile `case` for `target`, run its inputs and compare with the suite's outputs."""
    from edgecomp.errors import EdgecompError
    from edgecomp.pipeline import BuildOptions, build
    from edgecomp.runner import run_samples
    from edgecomp.targets import load_target

    if not _tensors_only(case):
        return Outcome(case, "unsupported", "sequence/optional inputs or outputs are not compiled")
    model, arrays, expected = prepare(case)
    path = workdir / f"{case.name}.onnx"
    onnx.save(model, str(path))
    options = BuildOptions(extra_cflags=extra_cflags, sanitize=sanitize)
    try:
        result = build(path, load_target(target), workdir / case.name, options, log=lambda *_: None)
        (run,) = run_samples(result, [arrays])
    except EdgecompError as exc:
        return Outcome(case, "unsupported", str(exc).splitlines()[0])
    if len(run.outputs) != len(expected):
        return Outcome(case, "failed", f"{len(run.outputs)} outputs, expected {len(expected)}")
    for i, (got, want) in enumerate(zip(run.outputs, expected, strict=True)):
        if got.shape != want.shape:
            return Outcome(case, "failed", f"output {i}: shape {got.shape}, expected {want.shape}")
        if want.dtype.kind == "f":
            if not np.allclose(got, want, rtol=RTOL, atol=ATOL, equal_nan=True):
                err = float(np.max(np.abs(got.astype(np.float64) - want)))
                return Outcome(case, "failed", f"output {i}: max abs error {err:.3g}")
        elif not np.array_equal(got, want):
            return Outcome(case, "failed", f"output {i}: {int(np.sum(got != want))} values differ")
    return Outcome(case, "passed")


def summarise(outcomes: list[Outcome]) -> dict:
    """Per op: passed / failed / unsupported, with the reasons of the ones that did not pass."""
    per_op: dict[str, dict] = {}
    for o in outcomes:
        entry = per_op.setdefault(o.case.op, {"passed": 0, "failed": 0, "unsupported": 0, "not_passed": {}})
        entry[o.status] += 1
        if o.status != "passed":
            entry["not_passed"][o.case.name] = f"{o.status}: {o.detail}"
    total = len(outcomes)
    passed = sum(o.status == "passed" for o in outcomes)
    return {
        "onnx_node_tests": ONNX_WITH_DATA,
        "cases": total,
        "passed": passed,
        "pass_rate": round(passed / total, 4) if total else 0.0,
        "ops": dict(sorted(per_op.items())),
    }


def markdown(summary: dict, target: str) -> str:
    lines = [
        "# ONNX conformance",
        "",
        f"The node tests of onnx {summary['onnx_node_tests']} for the ops below, compiled by edgecomp for "
        f"`{target}` and compared with the outputs the suite ships (`python bench/conformance.py`; "
        "how inputs are frozen and compared: that script's docstring).",
        "",
        f"**{summary['passed']} of {summary['cases']} pass ({summary['pass_rate']:.1%}).**",
        "",
        "| op | passed | failed | unsupported |",
        "|---|---:|---:|---:|",
    ]
    for op, e in summary["ops"].items():
        lines.append(f"| {op} | {e['passed']} | {e['failed']} | {e['unsupported']} |")
    lines += ["", "## Not passing, and why", ""]
    for op, e in summary["ops"].items():
        for name, why in e["not_passed"].items():
            lines.append(f"- `{name}` ({op}) — {why}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="host")
    ap.add_argument("--ops", help="comma-separated subset of the ops")
    ap.add_argument("--sample", action="store_true", help="only the QEMU sample cases")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--markdown", type=Path)
    args = ap.parse_args(argv)
    from rich.console import Console

    console = Console()
    root = node_tests_dir()
    cases = discover(root, args.ops.split(",") if args.ops else OPS)
    if args.sample:
        cases = [c for c in cases if c.name in QEMU_SAMPLE]
    outcomes = []
    with tempfile.TemporaryDirectory() as tmp, console.status("compiling") as status:
        for i, case in enumerate(cases):
            status.update(f"[{i + 1}/{len(cases)}] {case.name}")
            outcomes.append(run_case(case, args.target, Path(tmp)))
            if outcomes[-1].status != "passed":
                console.print(f"{case.name}: {outcomes[-1].status}: {outcomes[-1].detail}", markup=False)
    summary = summarise(outcomes)
    console.print(
        f"{summary['passed']} of {summary['cases']} pass ({summary['pass_rate']:.1%}) on {args.target}"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"target": args.target, **summary}, indent=2) + "\n")
    if args.markdown:
        args.markdown.write_text(markdown(summary, args.target))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
