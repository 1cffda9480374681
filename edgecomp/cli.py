"""Command line: build, export, run, profile, validate, analyze, finetune, sweep, flash, keygen, qemu,
targets, ops. Thin: parse the arguments, call the pipeline (or the command's module), print, and
map errors to exit codes.

Exit codes: 0 ok, 1 outputs disagree with the reference, 2 user error (bad model, bad arguments,
does not fit), 3 tool or device failure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

from edgecomp import __version__
from edgecomp.errors import EdgecompError, MismatchError, UserError
from edgecomp.frontend import parse_freeze, parse_input_shapes
from edgecomp.options import CHOICES
from edgecomp.pipeline import BuildOptions, BuildResult, build, default_outdir
from edgecomp.targets import available_targets, load_target
from edgecomp.verify import DEFAULT_ATOL, DEFAULT_TOLERANCE


def _build_parent() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("model", type=Path, help="ONNX (.onnx) or TFLite (.tflite) model file")
    p.add_argument("--target", "-t", default="cortex-m7",
                   help=f"target name ({', '.join(available_targets())}) or a target .toml file [cortex-m7]")  # fmt: skip
    p.add_argument("-o", "--output-dir", type=Path, help="build folder [build/<model>-<target>]")
    p.add_argument("--input-shape", action="append", metavar="NAME=D0,D1,...",
                   help="pin a dynamic input shape (repeat per input)")  # fmt: skip
    p.add_argument("--freeze", action="append", metavar="NAME=VALUE[,VALUE...]",
                   help="make an input a constant (e.g. a sample rate: sr=16000), so what depends on it "
                        "folds (repeat per input)")  # fmt: skip
    p.add_argument("--keep-input", action="append", metavar="NAME",
                   help="keep an initializer that the model also lists as an input as a run-time input "
                        "(by default such inputs are weights; repeat per input)")  # fmt: skip
    p.add_argument(
        "--no-fit-check", action="store_true", help="build even if the model exceeds the target's memory"
    )
    p.add_argument("--cflags", default="", help="extra C compiler flags for the generated code")
    q = p.add_argument_group("quantization")
    q.add_argument(
        "--quantize", choices=CHOICES["quantize"],
        help="post-training quantization before compiling (w4a8: int4 weights, int8 activations; mixed: 4 or "
             "8 bits per layer, by measured sensitivity, to fit --max-flash/--max-ram, and int16 outputs where "
             "a layer needs them)",
    )  # fmt: skip
    q.add_argument("--no-a16", action="store_true",
                   help="--quantize mixed: keep every activation int8 (int16 layers run TVM's kernels, not the "
                        "SIMD micro-kernels)")  # fmt: skip
    q.add_argument(
        "--calib",
        type=Path,
        help="calibration inputs: .npy (leading batch dim), .npz (x) or a folder of .npy",
    )
    q.add_argument("--calib-method", choices=CHOICES["calib_method"], default="minmax",
                   help="how activation ranges are chosen [minmax]")  # fmt: skip
    q.add_argument("--io", choices=CHOICES["io"], default=None,
                   help="quantized models: float I/O (quantized at the edges) or the integer tensors "
                        "(int16 for int16x8 models) [the model's own: float for ONNX, int8 for an int8 TFLite model]")  # fmt: skip
    q.add_argument("--prune", metavar="channels=RATIO|channels=RATIOS.json",
                   help="structured channel pruning before quantization: a global ratio, or per-layer ratios "
                        "(JSON: Conv/Gemm node name -> ratio)")  # fmt: skip
    q.add_argument("--prune-importance", choices=CHOICES["prune_importance"], default="l1",
                   help="which channels go first: smallest weight norm, or smallest mean activation on --calib [l1]")  # fmt: skip
    q.add_argument("--dead-channels", choices=CHOICES["dead_channels"], default="proven",
                   help="quantized builds: remove Conv/Gemm channels that are zero after their ReLU for every "
                        "input in the calibrated input range (proven by interval arithmetic), also those zero on "
                        "every --calib sample (calib: not a proof), or neither [proven]")  # fmt: skip
    q.add_argument("--fit", action="store_true",
                   help="search pruning ratio and quantization for the least accuracy loss that fits the budget "
                        "(needs --calib and --eval)")  # fmt: skip
    q.add_argument("--max-flash", metavar="SIZE",
                   help="--fit / --quantize mixed budget, e.g. 256K [the target's flash]; an int8 build meets it "
                        "with int8 instead of int16 weight records for the convolutions that cost least")  # fmt: skip
    q.add_argument("--max-ram", metavar="SIZE",
                   help="RAM budget incl. the reserved stack, e.g. 64K: for --fit and --quantize mixed, or "
                        "(quantized models) met by running the first stage patch by patch with the fewest "
                        "extra MACs")  # fmt: skip
    q.add_argument("--patch", default="none", metavar="auto|TENSOR:RxC",
                   help="quantized models: run the memory-heavy first stage patch by patch, up to a cut tensor: "
                        "auto (the smallest peak RAM within 1.25x the MACs; auto:1.5 for another cap) or an "
                        "explicit cut and grid [none]")  # fmt: skip
    q.add_argument("--save-pruned", type=Path, metavar="P.onnx", help="also write the pruned float model")
    q.add_argument(
        "--per-layer",
        action="store_true",
        help="instrument the call sequence to time every step (profile shows them; off: zero cost)",
    )
    q.add_argument("--kernels", choices=CHOICES["kernels"], default="auto",
                   help="int8 convolutions and dense layers: templated DSP micro-kernels (auto) or "
                        "TVM's generic kernels (tvm) [auto]")  # fmt: skip
    q.add_argument("--optimize", choices=CHOICES["optimize"], default="balanced",
                   help="integer builds: the kernels' weight records: int16 where the flash is worth it "
                        "(balanced), int16 wherever a kernel has them (speed: faster, more flash) or int8 "
                        "everywhere (size); --max-flash narrows from this choice [balanced]")  # fmt: skip
    q.add_argument("--save-quantized", type=Path, metavar="Q.onnx", help="also write the quantized QDQ model")
    q.add_argument("--eval", type=Path, metavar="DATA.npz",
                   help="accuracy of the quantized model vs float on x (and labels y) -> report.json")  # fmt: skip
    p.add_argument("--sanitize", action="store_true", help="host target: build with AddressSanitizer + UBSan")
    p.add_argument("--no-integrity", action="store_true",
                   help="leave out the firmware's check of its weights' SHA-256 at boot (on by default)")  # fmt: skip
    p.add_argument("--model-region", action="store_true",
                   help="weights in their own flash region behind a header, updatable without the code "
                        "(edgecomp flash --model-only); the firmware refuses a region built for other code")  # fmt: skip
    p.add_argument("--sign", metavar="KEY.pem",
                   help="also write firmware.signed.bin, signed for MCUboot with this key (imgtool; edgecomp keygen)")  # fmt: skip
    p.add_argument("--sign-version", default="0.0.0", help="the signed image's version [0.0.0]")
    p.add_argument("--name", default="model", metavar="PREFIX",
                   help="prefix of every exported symbol, macro, section and file (kws_run, KWS_ARENA_BYTES, "
                        "kws.h), so several models link into one program [model]")  # fmt: skip
    p.add_argument("--arena", choices=["static", "caller"], default=None,
                   help="the model's own static arena, or the caller's, handed to PREFIX_init(arena, bytes) "
                        "(models that never run at once can share one) [build: static, export: caller]")  # fmt: skip
    p.add_argument("-q", "--quiet", action="store_true", help="print only results and errors")
    return p


def _device_parent() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "--port", help="serial port of a board running the firmware (e.g. /dev/ttyACM0); default: QEMU"
    )
    p.add_argument("--baud", type=int, default=115200, help="baud rate for --port [115200]")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for each reply [5]")
    return p


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgecomp", description="Compile ONNX models to C and Cortex-M firmware through Apache TVM."
    )
    parser.add_argument("--version", action="version", version=f"edgecomp {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    build_p, device_p = _build_parent(), _device_parent()
    bld = sub.add_parser("build", parents=[build_p], help="compile a model into C sources and firmware")
    bld.add_argument("--harness", choices=["edgecomp", "mlperf"], default="edgecomp",
                     help="the firmware's main: edgecomp's framed protocol (run/profile/validate), or the MLPerf "
                          "Tiny runner's text protocol on the console UART (docs/protocol.md) [edgecomp]")  # fmt: skip
    bld.add_argument("--mlperf-model", metavar="ID",
                     help="--harness mlperf: the model id `profile` answers (kws01, ic01, vww01, ad01: the "
                          "runner picks its test by it) [the model file's name]")  # fmt: skip
    exp = sub.add_parser("export", parents=[build_p],
                         help="the compiled model as a library for your own firmware (CMake, Zephyr, Arduino, "
                              "PlatformIO or plain sources)")  # fmt: skip
    exp.add_argument("--format", "-f", default="cmake", metavar="cmake|zephyr|arduino|platformio|plain|all",
                     help="the build files to write beside the sources; several comma-separated, or all: "
                          "they never collide [cmake]")  # fmt: skip
    run = sub.add_parser("run", parents=[build_p, device_p],
                         help="build (cached), run on QEMU/board/host and check against onnxruntime")  # fmt: skip
    run.add_argument(
        "--input", "-i", type=Path, required=True, help=".npy (one input) or .npz (one array per input)"
    )
    run.add_argument("--output", type=Path, help="write the outputs (.npy: first output, .npz: all)")
    run.add_argument("--no-check", action="store_true", help="skip the comparison with onnxruntime")
    run.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                     help="float builds match when max abs error <= atol + tolerance x max |reference| [1e-4]")  # fmt: skip
    run.add_argument("--atol", type=float, default=DEFAULT_ATOL,
                     help="the absolute part of that bound, for outputs that are all tiny [1e-6]")  # fmt: skip
    prof = sub.add_parser("profile", parents=[build_p, device_p],
                          help="build (cached), run one inference and report time and memory")  # fmt: skip
    prof.add_argument("--input", "-i", type=Path, help="input sample (default: seeded random data)")
    prof.add_argument("--json", type=Path, help="write the profile as JSON")
    prof.add_argument("--plot", type=Path, metavar="LAYERS.png",
                      help="with --per-layer: a bar chart of each layer's instructions/cycles and MACs")  # fmt: skip
    val = sub.add_parser("validate", parents=[build_p, device_p],
                         help="build (cached), run step by step on the device and compare every layer's "
                              "output with the reference; names the first layer that diverges")  # fmt: skip
    val.add_argument("--input", "-i", type=Path, help="input sample, .npy or .npz (default: seeded random data)")
    val.add_argument("--json", type=Path, help="write the per-layer comparison as JSON")
    val.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                     help="float tensors: max abs error / max |reference| allowed per layer [1e-4]")  # fmt: skip
    an = sub.add_parser(
        "analyze", help="pruning sensitivity: prune each channel group alone and measure the loss"
    )
    an.add_argument("model", type=Path, help="ONNX model file (float)")
    an.add_argument(
        "--eval", type=Path, required=True, metavar="DATA.npz", help="x (and labels y) to measure on"
    )
    an.add_argument("--calib", type=Path, help="samples for --prune-importance activation")
    an.add_argument(
        "--ratios", default="0.25,0.5,0.75", help="pruning ratios to try per group [0.25,0.5,0.75]"
    )
    an.add_argument("--prune-importance", choices=CHOICES["prune_importance"], default="l1")
    an.add_argument("--input-shape", action="append", metavar="NAME=D0,D1,...")
    an.add_argument("--json", type=Path, help="write the table as JSON")
    an.add_argument("--plot", type=Path, metavar="SENSITIVITY.png", help="quality vs MACs saved, per group")
    an.add_argument("-q", "--quiet", action="store_true")
    ft = sub.add_parser("finetune", help="recover a pruned model's accuracy: distillation from the unpruned "
                        "model on user data (needs PyTorch: pip install 'edgecomp[train]')")  # fmt: skip
    ft.add_argument("model", type=Path, help="the pruned ONNX model (e.g. from build --save-pruned)")
    ft.add_argument("--teacher", type=Path, help="the unpruned ONNX model to distil from (not with --qat: "
                    "the float model itself is the teacher)")  # fmt: skip
    ft.add_argument("--qat", choices=["int8", "w4a8", "mixed"],
                    help="quantization-aware fine-tuning: quantize MODEL (on --calib), train the QDQ model with "
                         "fake quantization, write it as QDQ ONNX (build it without --quantize)")  # fmt: skip
    ft.add_argument("--calib", type=Path, help="--qat: calibration inputs (as build --calib)")
    ft.add_argument("--calib-method", choices=["minmax", "percentile", "entropy"], default="minmax")
    ft.add_argument("--max-flash", metavar="SIZE", help="--qat mixed: the flash budget that chooses the widths")
    ft.add_argument("--target", "-t", default="host", help="--qat mixed: the target the budget is for [host]")
    ft.add_argument("--data", type=Path, required=True, metavar="TRAIN.npz",
                    help="training inputs x and optional labels y")  # fmt: skip
    ft.add_argument(
        "-o", "--output", type=Path, required=True, help="where to write the fine-tuned ONNX model"
    )
    ft.add_argument("--eval", type=Path, metavar="DATA.npz", help="x (and y) to score before and after")
    ft.add_argument("--epochs", type=int, default=10)
    ft.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate [1e-3]")
    ft.add_argument("--batch-size", type=int, default=32)
    ft.add_argument("--temperature", type=float, default=4.0, help="distillation temperature [4]")
    ft.add_argument("--alpha", type=float, default=0.5, help="weight of the labels' cross-entropy [0.5]")
    ft.add_argument("--seed", type=int, default=0)
    ft.add_argument("--input-shape", action="append", metavar="NAME=D0,D1,...")
    ft.add_argument("-q", "--quiet", action="store_true")
    fl = sub.add_parser("flash", help="program a built firmware into a board through its debug probe")
    fl.add_argument("firmware", type=Path, help="a build folder (its firmware.elf) or an ELF file")
    fl.add_argument("--target", "-t", required=True, help="the board's target name or .toml file")
    fl.add_argument("--probe", choices=["pyocd", "openocd"], default="pyocd", help="programmer [pyocd]")
    fl.add_argument("--probe-id", help="unique id of the probe to use when several are attached")
    fl.add_argument("--model-only", action="store_true",
                    help="write only the model region of a --model-region build (a model update)")  # fmt: skip
    fl.add_argument("-q", "--quiet", action="store_true")
    sw = sub.add_parser("sweep", help="design-space exploration: every combination of a grid of build options on "
                        "every target, built, profiled and scored; Pareto fronts (docs/sweep.md)")  # fmt: skip
    sw.add_argument("models", type=Path, nargs="+", metavar="MODEL", help="float ONNX model files")
    sw.add_argument("--targets", "-t", required=True, help="comma-separated target names or .toml files")
    sw.add_argument("--grid", type=Path, required=True, metavar="GRID.toml",
                    help="the build options to combine, as lists (e.g. quantize = [\"fp32\", \"int8\"])")  # fmt: skip
    sw.add_argument("--calib", action="append", metavar="[MODEL=]DATA",
                    help="calibration data as build takes it; one for all models, or MODEL=DATA per model")  # fmt: skip
    sw.add_argument("--eval", action="append", metavar="[MODEL=]DATA",
                    help="accuracy samples: .npz with x and optional labels y (top-1), or what --calib takes "
                         "[the calibration data]")  # fmt: skip
    sw.add_argument("-o", "--output-dir", type=Path, required=True,
                    help="results, reports, and the builds (reused by later sweeps)")  # fmt: skip
    sw.add_argument("-j", "--jobs", type=int, default=max(1, (os.cpu_count() or 2) // 2),
                    help="local worker processes [half the CPUs]")  # fmt: skip
    sw.add_argument("--ray", nargs="?", const="auto", metavar="ADDRESS",
                    help="run the points as tasks on a Ray cluster [auto: the one `ray start` runs here]")  # fmt: skip
    sw.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for each device reply [60]")
    sw.add_argument("-q", "--quiet", action="store_true", help="no progress; print the table only")
    kg = sub.add_parser("keygen", help="make a key pair for signed images (--sign; MCUboot's imgtool)")
    kg.add_argument("-o", "--output", type=Path, required=True, metavar="KEY.pem", help="the private key to write")
    kg.add_argument("--type", default="ecdsa-p256", help="ecdsa-p256, ed25519, rsa-2048 or rsa-3072 [ecdsa-p256]")
    qm = sub.add_parser("qemu", help="run a build's firmware in QEMU with its UART on a pseudo-terminal, for serial "
                                     "tools such as the MLPerf Tiny runner (--harness mlperf builds), until Ctrl-C")  # fmt: skip
    qm.add_argument("build_dir", type=Path, help="a build folder (firmware.elf and report.json)")
    qm.add_argument("--target", "-t", help="its target name or .toml file [the one report.json names]")
    sub.add_parser("targets", help="list the shipped targets")
    ops = sub.add_parser(
        "ops", help="list the ONNX operators edgecomp compiles, with element types and limits"
    )
    ops.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ops.add_argument("--markdown", action="store_true", help="print the docs/operators.md page")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except EdgecompError as exc:
        print(f"edgecomp: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("edgecomp: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # an edgecomp bug: say so in one line, traceback only on request
        if os.environ.get("EDGECOMP_DEBUG"):
            raise
        print(f"edgecomp: internal error: {type(exc).__name__}: {exc} (set EDGECOMP_DEBUG=1 for a traceback)",
              file=sys.stderr)  # fmt: skip
        return 3


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "ops":
        from edgecomp.frontend.ops import ops_markdown, ops_table
        from edgecomp.report import print_ops

        if args.json:
            print(json.dumps(ops_table(), indent=2))
        elif args.markdown:
            print(ops_markdown(), end="")
        else:
            print_ops(ops_table())
        return 0
    if args.command == "keygen":
        from edgecomp.sign import keygen

        pub = keygen(args.output, args.type)
        print(f"wrote {args.output} (private: keep it secret) and {pub} (public: the bootloader's)")
        return 0
    if args.command == "qemu":
        return _qemu(args)
    if args.command == "targets":
        from edgecomp.report import print_targets

        print_targets()
        return 0
    from edgecomp import report

    log = (lambda *_: None) if args.quiet else report.log
    if args.command == "analyze":
        return _analyze(args, log)
    if args.command == "finetune":
        return _finetune(args, log)
    if args.command == "sweep":
        return _sweep(args, log)
    if args.command == "flash":
        from edgecomp.flash import flash

        flash(args.firmware, load_target(args.target), args.probe, args.probe_id, log, args.model_only)
        log("flashed and reset: run or profile it with --port /dev/ttyACM0")
        return 0
    if args.command == "export":
        return _export(args, log)
    result = _build(args, reuse=args.command != "build", log=log)
    if args.command == "build":
        report.print_build(result)
        return 0
    if args.command == "run":
        return _run(args, result, log)
    if args.command == "validate":
        return _validate(args, result, log)
    return _profile(args, result, log)


def _options(args) -> BuildOptions:
    """The build options the command line gives (the same for build, export, run, profile, validate)."""
    from edgecomp.options import parse_patch

    parse_patch(args.patch)  # a bad spelling fails before any work
    return BuildOptions(
        input_shapes=parse_input_shapes(args.input_shape),
        freeze=parse_freeze(args.freeze),
        keep_inputs=tuple(args.keep_input or ()),
        fit_check=not args.no_fit_check,
        extra_cflags=args.cflags,
        sanitize=args.sanitize,
        quantize=args.quantize,
        calib_method=args.calib_method,
        io=args.io,
        kernels=args.kernels,
        optimize=args.optimize,
        per_layer=args.per_layer,
        prune=args.prune,
        prune_importance=args.prune_importance,
        dead_channels=args.dead_channels,
        integrity=not args.no_integrity,
        model_region=args.model_region,
        sign=str(args.sign) if args.sign else None,
        sign_version=args.sign_version,
        patch=args.patch,
        name=args.name,
        arena=args.arena or "static",
        harness=getattr(args, "harness", "edgecomp"),
        mlperf_model=getattr(args, "mlperf_model", None) or "",
    )


def _qemu(args) -> int:
    """Start the firmware with its UART on a pty, say where, and keep it running until Ctrl-C (or
    until the firmware exits)."""
    from edgecomp.harness.qemu import QemuProcess

    try:
        report = json.loads((args.build_dir / "report.json").read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{args.build_dir} is not a build folder (no readable report.json): {exc}") from exc
    target = load_target(args.target or report["target"]["name"])
    elf = args.build_dir / "firmware.elf"
    if not elf.is_file():
        raise UserError(f"{elf} not found: build the model for an MCU target with QEMU first")
    with QemuProcess(target, elf, pty=True) as qemu:
        print(f"{target.qemu['machine']}: the firmware's UART is {qemu.url} (Ctrl-C stops QEMU)", flush=True)
        qemu.proc.wait()
    return 0


def _export(args, log) -> int:
    from edgecomp import report
    from edgecomp.export import export

    if args.fit or args.max_flash or args.max_ram:
        raise UserError("--fit, --max-flash and --max-ram measure a firmware: choose with edgecomp build, then export "
                        "with the options it chose (e.g. --patch)")  # fmt: skip
    if args.eval:
        raise UserError("--eval reports a build's accuracy: use it with edgecomp build")
    if args.no_a16:
        raise UserError("--no-a16 is an option of edgecomp build --quantize mixed")
    options = replace(_options(args), arena=args.arena or "caller")
    result = export(args.model, load_target(args.target), args.output_dir, options, args.format, log, args.calib,
                    args.save_quantized, args.save_pruned)  # fmt: skip
    report.print_export(result)
    return 0


def _is_qdq(path) -> bool:
    """A QDQ .onnx (already quantized: an integer build without --quantize); False if it cannot be
    read here (the build then says why)."""
    import onnx

    from edgecomp.quant.extract import is_quantized

    try:
        return is_quantized(onnx.load(str(path), load_external_data=False))
    except Exception:  # noqa: BLE001 - a bad file is reported by the build itself
        return False


def _build(args, reuse: bool, log) -> BuildResult:
    target = load_target(args.target)
    options = _options(args)
    if args.sanitize and not target.is_host:
        raise UserError("--sanitize builds the host target only (use --target host)")
    if args.no_a16 and args.quantize != "mixed":
        raise UserError("--no-a16 is an option of --quantize mixed")
    if args.fit:
        from edgecomp.fit import fit
        from edgecomp.options import parse_size

        if args.calib is None or args.eval is None:
            raise UserError(
                "--fit needs --calib (for quantization) and --eval (to measure the accuracy loss)"
            )
        outdir = Path(args.output_dir or default_outdir(args.model, target))
        result, summary = fit(args.model, target, outdir, options, args.calib, args.eval,
                              parse_size(args.max_flash) if args.max_flash else None,
                              parse_size(args.max_ram) if args.max_ram else None, log)  # fmt: skip
        from edgecomp import report

        report.print_fit(summary)
        return result
    if args.quantize == "mixed":
        from edgecomp.mixed import mixed
        from edgecomp.options import parse_size

        if args.calib is None:
            raise UserError("--quantize mixed needs calibration data: --calib DATA")
        outdir = Path(args.output_dir or default_outdir(args.model, target))
        result = mixed(args.model, target, outdir, options, args.calib, args.eval,
                       parse_size(args.max_flash) if args.max_flash else None,
                       parse_size(args.max_ram) if args.max_ram else None, log,
                       save_quantized=args.save_quantized, save_pruned=args.save_pruned,
                       act16=not args.no_a16)  # fmt: skip
        from edgecomp import report

        report.print_precision(result.report.get("mixed", {}), result.report.get("precision", []))
        return result
    if args.max_flash:  # an integer build: int8 weight records where int16 ones do not fit
        from edgecomp.frontend.tflite import is_tflite
        from edgecomp.options import parse_size

        if args.quantize is None and not is_tflite(args.model) and not _is_qdq(args.model):
            raise UserError("--max-flash is a budget for --fit, --quantize (int8: weight records), a quantized model "
                            "and --quantize mixed")  # fmt: skip
        options = replace(options, max_flash=parse_size(args.max_flash))
    if args.max_ram:
        from edgecomp.options import parse_size

        options = replace(options, max_ram=parse_size(args.max_ram))
    result = build(args.model, target, args.output_dir, options, reuse=reuse, log=log, calib=args.calib,
                   eval_data=args.eval, save_quantized=args.save_quantized, save_pruned=args.save_pruned)  # fmt: skip
    if result.cached:
        log(f"reusing build in {result.outdir}")
    return result


def _run(args, result: BuildResult, log) -> int:
    from edgecomp import report
    from edgecomp.io import load_samples, save_outputs
    from edgecomp.runner import run_samples
    from edgecomp.verify import check_outputs

    samples = load_samples(args.input, result.report["inputs"])
    log(f"running {len(samples)} sample(s) on {_where(args, result)}")
    runs = run_samples(result, samples, args.port, args.baud, args.timeout)
    outputs = [r.outputs for r in runs]
    if args.output:
        save_outputs(args.output, [o["name"] for o in result.report["outputs"]], outputs)
    report.print_run(runs)
    if args.no_check:
        return 0
    check = check_outputs(result, samples, outputs, args.tolerance, args.atol)
    report.print_lines(check.lines)
    if not check.ok:
        raise MismatchError(check.failure)
    return 0


def _profile(args, result: BuildResult, log) -> int:
    from edgecomp import report
    from edgecomp.io import load_samples, random_sample
    from edgecomp.runner import profile

    if args.input:
        samples = load_samples(args.input, result.report["inputs"])[:1]
    else:
        samples = [random_sample(result.report["inputs"], seed=0)]
    log(f"profiling on {_where(args, result)}")
    record = profile(result, samples[0], args.port, args.baud, args.timeout, log)
    report.print_profile(record)
    if args.plot:
        from edgecomp.plots import layers_png

        layers_png(record, args.plot)
        log(f"wrote {args.plot}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=2) + "\n")
    return 0


def _sweep(args, log) -> int:
    from edgecomp.sweep import LocalExecutor, RayExecutor, run_sweep
    from edgecomp.sweep.report import print_table

    if args.jobs < 1 or not args.timeout > 0:
        raise UserError("--jobs must be >= 1 and --timeout > 0")
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    if not targets:
        raise UserError("--targets takes comma-separated target names")
    executor = RayExecutor(args.ray) if args.ray else LocalExecutor(args.jobs)
    result = run_sweep(args.models, targets, args.grid, args.output_dir, executor, args.calib, args.eval,
                       args.timeout, log, show_progress=not args.quiet)  # fmt: skip
    print_table(result.rows)
    log(f"{result.ran} point(s) run, {result.reused} reused, in {result.seconds:.1f} s; wrote "
        + ", ".join(str(p) for p in result.files))  # fmt: skip
    if result.mismatches:
        raise MismatchError(f"{len(result.mismatches)} point(s) whose device output differs from the build's "
                            "reference: their accuracy is not the device's (see the reason column)")  # fmt: skip
    return 0


def _validate(args, result: BuildResult, log) -> int:
    from edgecomp import report
    from edgecomp.io import load_samples, random_sample
    from edgecomp.validate import validate

    if args.input:
        sample = load_samples(args.input, result.report["inputs"])[0]
    else:
        sample = random_sample(result.report["inputs"], seed=0)
    log(f"validating layer by layer on {_where(args, result)}")
    validation = validate(result, sample, args.port, args.baud, args.timeout, args.tolerance)
    report.print_validation(validation, f"{args.model.name} on {result.target.name}, step by step")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(validation.as_dict(), indent=2) + "\n")
    first = validation.first_divergence
    if first is not None:
        raise MismatchError(f"layer {first.index} ({first.kernel}, computing '{first.computes}') is the first "
                            f"to diverge from the reference, {validation.reference}")  # fmt: skip
    return 0


def _finetune(args, log) -> int:
    from edgecomp import report
    from edgecomp.finetune import FinetuneConfig, finetune_files

    if args.epochs < 1 or args.batch_size < 1 or not args.lr > 0 or not 0 <= args.alpha <= 1:
        raise UserError("--epochs and --batch-size must be >= 1, --lr > 0 and --alpha in [0, 1]")
    config = FinetuneConfig(args.epochs, args.lr, args.batch_size, args.temperature, args.alpha, args.seed)
    if args.qat:
        return _qat(args, config, log)
    if args.teacher is None:
        raise UserError("finetune needs --teacher (the unpruned model), or --qat to fine-tune a quantized model")
    lines = finetune_files(args.model, args.teacher, args.data, args.eval, args.output, config,
                           parse_input_shapes(args.input_shape), log)  # fmt: skip
    report.print_lines(lines)
    return 0


def _qat(args, config, log) -> int:
    from edgecomp import report
    from edgecomp.qat import qat_files

    if args.calib is None:
        raise UserError("--qat needs calibration data: --calib DATA")
    bits = None
    if args.qat == "mixed":  # the widths --quantize mixed chooses for the budget, then trained
        from edgecomp.mixed import mixed
        from edgecomp.options import parse_size

        if not args.max_flash:
            raise UserError("--qat mixed needs --max-flash (and --target for the flash figures)")
        outdir = args.output.with_name(args.output.stem + "-mixed-build")
        chosen = mixed(args.model, load_target(args.target), outdir, BuildOptions(calib_method=args.calib_method),
                       args.calib, args.eval, parse_size(args.max_flash), None, log, act16=False)  # fmt: skip
        bits = dict.fromkeys(chosen.report["mixed"]["layers_4bit"], 4)
    lines = qat_files(args.model, args.qat, args.calib, args.data, args.eval, args.output, config,
                      parse_input_shapes(args.input_shape), args.calib_method, bits, log)  # fmt: skip
    report.print_lines(lines)
    return 0


def _analyze(args, log) -> int:
    from edgecomp import report
    from edgecomp.analyze import analyze_file

    try:
        ratios = [float(r) for r in args.ratios.split(",")]
    except ValueError as exc:
        raise UserError(f"--ratios takes comma-separated numbers, not '{args.ratios}'") from exc
    if not ratios or not all(0 < r < 1 for r in ratios):
        raise UserError("--ratios must be in (0, 1)")
    result = analyze_file(args.model, args.eval, args.calib, ratios, args.prune_importance,
                          parse_input_shapes(args.input_shape), log)  # fmt: skip
    report.print_sensitivity(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if args.plot:
        from edgecomp.plots import sensitivity_png

        sensitivity_png(result, args.plot)
        log(f"wrote {args.plot}")
    return 0


def _where(args, result: BuildResult) -> str:
    target = result.report["target"]
    if target["kind"] == "host":
        return "the host"
    if target["kind"] == "linux":
        cmd = result.target.process_command(result.outdir / "harness")
        return f"{cmd[0]} user mode" if len(cmd) > 1 else "this machine"
    return args.port or f"QEMU {target['qemu_machine']}"


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["main", "make_parser", "UserError"]
