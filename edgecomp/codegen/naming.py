"""What the generated C calls things: the public API's prefix, the namespace of the internal global
symbols, and the files and folder they live in.

`edgecomp build` without `--name` keeps the names the harness, `validate` and every earlier build
use (`model_run`, `MODEL_ARENA_BYTES`, internals `ec_...`). With `--name kws` every exported
symbol, macro, section and file takes the prefix (`kws_run`, `KWS_ARENA_BYTES`, `kws.h`) and every
internal global symbol the namespace `kws_ec_` (weights, kernels, the workspace allocator, SHA-256,
TVM's library context), so two models link into one program. An export is a library for someone
else's program, so its internals are always namespaced, `--name` or not.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from edgecomp.codegen.cnames import C_KEYWORDS
from edgecomp.errors import UserError

DEFAULT_PREFIX = "model"
_PREFIX = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,31}$")

# The global symbols of the runtime files every model carries (firmware/common/ec_runtime.c,
# ec_sha256.c) and the one global TVM's C code defines: ec/ec_names.h maps them into the model's
# namespace with the preprocessor, so those files stay the same for every model.
RUNTIME_SYMBOLS = (
    "TVMBackendAllocWorkspace",
    "TVMBackendFreeWorkspace",
    "ec_workspace_reset",
    "ec_sha256_init",
    "ec_sha256_update",
    "ec_sha256_final",
    "__tvm_ffi__library_ctx",
)
# The runtime's C files, copied into every model's library (their globals renamed as above).
RUNTIME_SOURCES = ("ec_runtime.c", "ec_sha256.c")
# The headers the model's own C includes from its internal folder.
RUNTIME_HEADERS = ("ec_tvm_shim.h", "ec_sha256.h", "ec_dsp.h", "ec_fpu.h", "ec_neon.h", "ec_mve.h", "ec_mm.h", "ec_port.h")


def check_prefix(prefix: str) -> str:
    """`prefix` if it can start every exported C symbol and macro, else a UserError saying why."""
    if not _PREFIX.match(prefix):
        raise UserError(f"--name must be a C identifier of at most 32 characters starting with a letter "
                        f"(e.g. kws), not '{prefix}'")  # fmt: skip
    if prefix in C_KEYWORDS or prefix.lower() in ("ec", "tvm", "dl") or prefix.lower().startswith("ec_"):
        raise UserError(f"--name '{prefix}' is reserved (a C keyword, or edgecomp's, TVM's or DLPack's own "
                        "prefix): pick another")  # fmt: skip
    return prefix


@dataclass(frozen=True)
class Naming:
    """How one model's C is named. `prefix`: the API (prefix_run, PREFIX_ARENA_BYTES, prefix.h);
    `ns`: every other global symbol; `ec_dir`: the folder of its internal headers and runtime."""

    prefix: str = DEFAULT_PREFIX
    ns: str = "ec_"
    ec_dir: str = "ec"

    @classmethod
    def for_build(cls, prefix: str = DEFAULT_PREFIX) -> Naming:
        """A firmware build: the default keeps today's names; a named one is namespaced."""
        check_prefix(prefix)
        if prefix == DEFAULT_PREFIX:
            return cls()
        return cls(prefix, f"{prefix}_ec_", "ec")

    @classmethod
    def for_export(cls, prefix: str = DEFAULT_PREFIX) -> Naming:
        """A library for another program: internals always namespaced, in a folder of their own
        (`kws_ec/`), so two exports can even share a source folder."""
        check_prefix(prefix)
        return cls(prefix, f"{prefix}_ec_", f"{prefix}_ec")

    @property
    def upper(self) -> str:
        """The macro prefix: KWS_ARENA_BYTES."""
        return self.prefix.upper()

    @property
    def header(self) -> str:
        return f"{self.prefix}.h"

    @property
    def sources(self) -> dict[str, str]:
        """The model's C files by role (model.c, model_weights.c, model_kernels.c by default)."""
        return {"model": f"{self.prefix}.c", "weights": f"{self.prefix}_weights.c",
                "kernels": f"{self.prefix}_kernels.c"}  # fmt: skip

    @property
    def namespaced(self) -> bool:
        """Whether the internals are renamed (ec/ec_names.h maps the runtime's globals)."""
        return self.ns != "ec_"

    @property
    def region_section(self) -> str:
        """The model region's sections (--model-region): .ec_model.header / .weights by default."""
        return f".{self.ns}model"

    def symbol(self, internal: str) -> str:
        """An internal symbol edgecomp names `ec_...` (a micro-kernel) in this namespace."""
        return self.ns + internal.removeprefix("ec_")

    def runtime_source(self, name: str) -> str:
        """The runtime file `name` as this model's library holds it: kws_ec_runtime.c in an export
        (unique basenames, for build systems that put objects by basename), as is in a build."""
        return self.symbol(name) if self.ec_dir != "ec" else name

    def aliases(self, tvm_kernels: list[str] = ()) -> list[tuple[str, str]]:
        """(global symbol, this model's name for it) for ec/ec_names.h: the runtime's, and TVM's
        kernels (`tvm_kernels`: TVM calls them __tvm_ffi_<ns>name; these become <ns>name), so every
        global symbol of a named model starts with its prefix; none by default."""
        if not self.namespaced:
            return []
        runtime = [(s, self.ns + s.removeprefix("ec_").lstrip("_")) for s in RUNTIME_SYMBOLS]
        tvm_prefix = f"__tvm_ffi_{self.ns}"
        return runtime + [(k, self.ns + k.removeprefix(tvm_prefix)) for k in tvm_kernels if k.startswith(tvm_prefix)]

    def api_aliases(self, quantized_inputs: list[bool], quantized_outputs: list[bool]) -> list[tuple[str, str]]:
        """(the harness's name, this model's) for every name of the API (ec/ec_api.h): the harnesses
        are written against model_... / MODEL_...; none when the prefix is `model`. Per-tensor
        scale and zero-point macros exist only for quantized tensors, so only those are aliased."""
        if self.prefix == DEFAULT_PREFIX:
            return []
        macros = list(API_MACROS)
        for kind, quantized in (("INPUT", quantized_inputs), ("OUTPUT", quantized_outputs)):
            for i, q in enumerate(quantized):
                macros += [f"{kind}_{i}_{m}" for m in ("SIZE", "BYTES", *(("SCALE", "ZERO_POINT") if q else ()))]
        return [(f"model_{f}", f"{self.prefix}_{f}") for f in API_FUNCTIONS] + [
            (f"MODEL_{m}", f"{self.upper}_{m}") for m in macros
        ]


# The API every model's header declares (templates/model.h.j2), as suffixes of its prefix.
API_FUNCTIONS = ("run", "input", "output", "invoke", "step", "arena", "init", "arena_bytes", "inputs", "outputs",
                 "tensor_info", "verify", "weights_sha256", "step_ticks", "region", "region_header")  # fmt: skip
API_MACROS = ("NUM_INPUTS", "NUM_OUTPUTS", "ARENA_BYTES", "ARENA_ALIGN", "ARENA_CALLER", "MACS", "PARAMS",
              "NUM_STEPS", "INTEGRITY", "WEIGHTS_SHA256", "EXPECTED_SHA256", "PER_LAYER", "REGION_ORIGIN",
              "REGION_FORMAT")  # fmt: skip
