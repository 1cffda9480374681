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


def c_identifier(name: str, used: set[str]) -> str:
    """A valid, unique C identifier for a model name (added to `used`)."""
    ident = re.sub(r"\W", "_", name, flags=re.ASCII) or "t"
    if ident[0].isdigit() or ident in C_KEYWORDS or ident.startswith("_"):
        ident = "v_" + ident
    base, n = ident, 1
    while ident in used:
        n += 1
        ident = f"{base}_{n}"
    used.add(ident)
    return ident


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
    else:
        text = flat.astype(np.int64).astype(str)
    items = text.tolist()
    return [", ".join(items[i : i + per_line]) for i in range(0, len(items), per_line)]
