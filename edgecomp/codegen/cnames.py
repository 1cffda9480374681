"""C identifiers and literals for names and data that come from a model."""

from __future__ import annotations

import re

import numpy as np

C_KEYWORDS = frozenset(
    [
        "auto",
        "break",
        "case",
        "char",
        "const",
        "continue",
        "default",
        "do",
        "double",
        "else",
        "enum",
        "extern",
        "float",
        "for",
        "goto",
        "if",
        "inline",
        "int",
        "long",
        "register",
        "restrict",
        "return",
        "short",
        "signed",
        "sizeof",
        "static",
        "struct",
        "switch",
        "typedef",
        "union",
        "unsigned",
        "void",
        "volatile",
        "while",
        "_Bool",
        "_Complex",
        "_Imaginary",
    ]
)

C_TYPES = {
    "float32": "float",
    "float64": "double",
    "int8": "int8_t",
    "uint8": "uint8_t",
    "int16": "int16_t",
    "uint16": "uint16_t",
    "int32": "int32_t",
    "uint32": "uint32_t",
    "int64": "int64_t",
    "uint64": "uint64_t",
    "bool": "int8_t",
}
# DLPack type codes: 0 int, 1 uint, 2 float.
DL_CODES = {"float": 2, "int": 0, "uint": 1, "bool": 1}


# Names the generated C uses itself where a model's names also appear: model_run()'s locals and
# the library functions it calls, the parameters of TVM's packed functions (their locals are
# named after these), and the prefixes of edgecomp's and TVM's own symbols and macros.
C_RESERVED = frozenset({"rc", "memcpy", "memset", "NULL", "self_handle", "args", "num_args", "result"})
C_RESERVED_PREFIXES = ("ec_", "EC_", "model_", "MODEL_", "tvm", "TVM", "DL", "kDL")


def c_identifier(name: str, used: set[str]) -> str:
    """A valid, unique C identifier for a model name (added to `used`).

    Every character outside [A-Za-z0-9_] becomes '_' (so 'gpu_0/data_0', 'input:0', 'x.1', names
    with spaces, quotes or non-ASCII letters all map to plain identifiers); a leading digit or
    underscore, a C keyword or a name the generated C uses itself gets a 'v_' prefix; a name that
    maps onto one already in `used` gets a numeric suffix. This is the one sanitiser: edgecomp's
    C (codegen/render.py) and the names handed to TVM (lower/lowering.py) both come from it."""
    ident = re.sub(r"\W", "_", name, flags=re.ASCII) or "t"
    if (ident[0].isdigit() or ident in C_KEYWORDS or ident.startswith("_") or ident in C_RESERVED
            or ident.startswith(C_RESERVED_PREFIXES)):  # fmt: skip
        ident = "v_" + ident
    base, n = ident, 1
    while ident in used:
        n += 1
        ident = f"{base}_{n}"
    used.add(ident)
    return ident


def c_string(text: str) -> str:
    """`text` as a C string literal (quotes included) that holds exactly its UTF-8 bytes: quotes,
    backslashes and '?' (trigraphs) escaped, control and non-ASCII bytes as 3-digit octal escapes."""
    out = []
    for b in text.encode("utf-8"):
        ch = chr(b)
        if ch in '"\\?':
            out.append("\\" + ch)
        elif 0x20 <= b < 0x7F:
            out.append(ch)
        else:
            out.append(f"\\{b:03o}")
    return '"' + "".join(out) + '"'


def c_comment(text: str) -> str:
    """`text` safe inside a /* */ comment, otherwise as the model spells it: '*/' and '/*' are
    broken apart, '??' (a trigraph start) too, control characters shown as escapes."""
    text = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)
    while "*/" in text or "/*" in text or "??" in text:
        text = text.replace("*/", "* /").replace("/*", "/ *").replace("??", "? ?")
    return text


def c_type(dtype: str) -> str:
    return C_TYPES[dtype]


def dl_type(dtype: str) -> tuple[int, int]:
    """(DLPack type code, bits) of a numpy dtype name."""
    dt = np.dtype(dtype)
    kind = "bool" if dt == np.bool_ else {"f": "float", "i": "int", "u": "uint"}[dt.kind]
    return DL_CODES[kind], 8 if kind == "bool" else dt.itemsize * 8


def c_literals(data: np.ndarray, per_line: int = 8) -> list[str]:
    """Lines of comma-separated C literals that reproduce `data` exactly (row-major)."""
    flat = data.reshape(-1)
    if flat.dtype.kind == "f":
        # %.9g round-trips float32; integers stay plain (an int literal converts exactly).
        text = np.char.mod("%.9g", flat.astype(np.float64))
        text = np.where(np.isnan(flat), "NAN", text)
        text = np.where(np.isposinf(flat), "INFINITY", text)
        text = np.where(np.isneginf(flat), "-INFINITY", text)
        suffix = "f" if flat.dtype == np.float32 else ""
        text = np.array([t + suffix if ("." in t or "e" in t) else t for t in text.tolist()])
    elif flat.dtype == np.uint64:
        text = np.char.add(flat.astype(str), "u")
    else:
        text = flat.astype(np.int64).astype(str)
        # -9223372036854775808 is minus a constant too large for any signed type: a warning in C.
        text = np.where(flat.astype(np.int64) == np.iinfo(np.int64).min, "INT64_MIN", text)
    items = text.tolist()
    return [", ".join(items[i : i + per_line]) for i in range(0, len(items), per_line)]
