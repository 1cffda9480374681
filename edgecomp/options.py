"""What a build is asked to do: the options that key its cache, and the parsing of the option
values that have a small language of their own (--prune, sizes)."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from edgecomp.errors import UserError

# The options that take one of a few values: the CLI offers them as choices, sweep grids are
# checked against them.
CHOICES: dict[str, tuple[str, ...]] = {
    "quantize": ("int8", "int16x8", "w4a8", "mixed"),
    "calib_method": ("minmax", "percentile", "entropy"),
    "io": ("float", "int8"),
    "kernels": ("auto", "tvm"),
    "prune_importance": ("l1", "l2", "activation"),
    "dead_channels": ("proven", "calib", "none"),
    "optimize": ("balanced", "speed", "size"),
}


@dataclass(frozen=True)
class BuildOptions:
    """Everything that changes what `build` produces (and so keys its cache)."""

    input_shapes: dict[str, list[int]] = field(default_factory=dict)
    # --freeze: inputs made constants (name -> values, in the input's own type and shape)
    freeze: dict[str, list[int | float]] = field(default_factory=dict)
    # --keep-input: initializers listed as graph inputs that stay run-time inputs (others are weights)
    keep_inputs: tuple[str, ...] = ()
    fit_check: bool = True
    per_layer: bool = False
    extra_cflags: str = ""
    quantize: str | None = None  # "int8" / "int16x8" / "w4a8" / "mixed": post-training quantization first
    # Layers (passes/int4.py layer_name) whose weights are int4, the rest int8: what --quantize mixed
    # chose (edgecomp/mixed.py), or an override for the other schemes.
    weight_bits: tuple[tuple[str, int], ...] = ()
    # Layers whose output activations are int16 (passes/act16.py), the rest int8: --quantize mixed's
    # choice (edgecomp/mixed.py).
    act_bits: tuple[tuple[str, int], ...] = ()
    calib_method: str = "minmax"
    # "int8": a quantized model's C API takes and gives its integer tensors; "float": float tensors,
    # quantized at the edges; None: the model's own (float for ONNX, int8 for a full-integer TFLite).
    io: str | None = None
    sanitize: bool = False  # host only: build with ASan + UBSan
    kernels: str = "auto"  # "auto": int8 micro-kernels where they apply; "tvm": TVM's kernels only
    prune: str | None = None  # "channels=0.5" or "channels=ratios.json": structured pruning first
    prune_importance: str = "l1"  # "l1", "l2" or "activation" (on the calibration data)
    # Channels zero after their ReLU: "proven" for every input the quantized model accepts (interval
    # arithmetic over its input range), "calib" also those zero on all calibration samples, "none".
    dead_channels: str = "proven"
    integrity: bool = True  # the firmware checks the weights' SHA-256 at boot (--no-integrity: off)
    model_region: bool = False  # weights in their own flash region behind a header (updatable apart)
    sign: str | None = None  # a private key: firmware.signed.bin in MCUboot's format (edgecomp/sign.py)
    sign_version: str = "0.0.0"  # the image version MCUboot's header records
    # Patch-based execution of the first stage (quant/patches.py): "none", "auto" (the smallest peak
    # within PATCH_MAC_CAP times the MACs; "auto:1.5" another cap) or "TENSOR:GHxGW" (that cut and grid)
    patch: str = "none"
    max_ram: int | None = None  # a RAM budget (static RAM + the reserved stack) patching must meet
    # --max-flash (int8 builds): a flash budget met by keeping the weights of the convolutions with the
    # fewest output pixels as int8 records (slower by ~0.25 instructions/MAC) instead of int16 ones
    max_flash: int | None = None
    # Convolutions (by output tensor) whose matrix-product kernel reads int8 weight records though
    # int16 ones would be faster: what --max-flash chose (edgecomp/lower/kernels/mm.py narrow_plan)
    narrow_records: tuple[str, ...] = ()
    # --optimize (integer builds): the weight records of the kernels that have a choice (kernels.select):
    # "balanced", int16 where each kernel's rule finds the flash worth it; "speed", int16 wherever a kernel
    # has them (faster, more flash); "size", int8 everywhere. --max-flash narrows from this choice.
    optimize: str = "balanced"
    # --name: the prefix of every exported symbol, macro, section and file (kws_run, KWS_ARENA_BYTES,
    # kws.h); "model" keeps the names every earlier build had (codegen/naming.py)
    name: str = "model"
    # --arena: "static", the model's own arena (the harness's default); "caller", handed to
    # prefix_init() by the program, so models that never run at once can share one
    arena: str = "static"
    # --harness: the firmware's main: "edgecomp" (the framed protocol run/profile/validate speak) or
    # "mlperf" (the MLPerf Tiny runner's text protocol, docs/protocol.md); mlperf_model is what it
    # answers to `profile` (m-model-[kws01]): the runner picks its test script by it
    harness: str = "edgecomp"
    mlperf_model: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


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


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmM]?)(i?[bB])?\s*$")


def parse_size(text: str) -> int:
    """'256K', '1M', '65536' -> bytes (K = 1024)."""
    m = _SIZE.match(text)
    if not m:
        raise UserError(f"not a size: '{text}' (use e.g. 65536, 64K or 1M)")
    return int(float(m.group(1)) * {"": 1, "k": 1024, "m": 1024 * 1024}[m.group(2).lower()])


PATCH_MAC_CAP = 1.25  # --patch auto: at most this many times the MACs of the unpatched model


def parse_patch(spec: str) -> tuple[str, float | str, tuple[int, int] | None]:
    """'none' | 'auto' | 'auto:CAP' | 'TENSOR:GHxGW' -> (mode, cap or tensor, grid)."""
    if spec in ("none", "auto"):
        return spec, PATCH_MAC_CAP, None
    head, _, tail = spec.rpartition(":")
    if head == "auto":
        try:
            cap = float(tail)
        except ValueError:
            cap = 0.0
        if cap < 1.0:
            raise UserError(f"--patch auto:CAP takes a MAC ratio >= 1 (e.g. auto:1.5), not '{tail}'")
        return "auto", cap, None
    m = re.fullmatch(r"(\d+)x(\d+)", tail)
    if not head or m is None or min(int(m[1]), int(m[2])) < 1:
        raise UserError(f"--patch takes none, auto, auto:CAP or TENSOR:ROWSxCOLS (e.g. conv3:4x4), not '{spec}'")
    return "cut", head, (int(m[1]), int(m[2]))
