"""A sweep point: one model, one target, one configuration, and the data it is measured on.

Its key hashes everything its row depends on — the model's bytes, the target file, the
normalized build options, the calibration and evaluation data, edgecomp itself (version and
sources) — so a row is reused exactly when rebuilding would give the same row, wherever it ran.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from edgecomp.pipeline import hash_files, source_digest
from edgecomp.sweep.grid import Config
from edgecomp.targets import Target

ROW_FORMAT = 1  # bump when a row's fields change meaning: older rows are then measured again
RANDOM_SAMPLES = 8  # evaluation samples when there is neither --eval nor --calib


@dataclass(frozen=True)
class DataRef:
    """An input file (or folder of .npy) and the digest of its content."""

    path: Path
    digest: str

    @classmethod
    def of(cls, path: Path) -> DataRef:
        h = hashlib.sha256()
        hash_files(h, [path])
        return cls(Path(path).resolve(), h.hexdigest())


@dataclass(frozen=True)
class Point:
    model_name: str  # the model file's stem: what rows and charts call it
    model: DataRef
    target: str  # a target name or .toml path, as load_target takes it
    target_name: str
    config: Config
    calib: DataRef | None  # given to the build only when the configuration needs it
    samples: DataRef | None  # what accuracy is measured on: --eval, else --calib; None: random inputs
    eval_source: str  # "eval", "calib" or "random"
    key: str


def needs_calib(config: Config) -> bool:
    """Whether the build uses calibration data: quantization, or activation-ranked pruning."""
    o = config.options
    return bool(o.quantize) or (o.prune is not None and o.prune_importance == "activation")


def make_point(model_name: str, model: DataRef, target: Target, target_arg: str, config: Config,
               calib: DataRef | None, eval_data: DataRef | None) -> Point:  # fmt: skip
    """The point, keyed (see the module's docstring). Calibration data is part of it only when
    the build uses it, so float points are shared between sweeps with different calibration."""
    build_calib = calib if needs_calib(config) else None
    samples = eval_data if eval_data is not None else calib
    source = "eval" if eval_data is not None else ("calib" if calib is not None else "random")
    h = hashlib.sha256()
    for part in (
        f"edgecomp-sweep-point/{ROW_FORMAT}",
        source_digest(),
        model_name,  # rows carry it
        model.digest,
        target.name,
        hashlib.sha256(target.source.read_bytes()).hexdigest(),
        json.dumps(config.options.as_dict(), sort_keys=True),
        build_calib.digest if build_calib else "-",
        f"{source}:{samples.digest}" if samples else f"random:{RANDOM_SAMPLES}",
    ):
        h.update(part.encode())
        h.update(b"\0")
    return Point(model_name, model, target_arg, target.name, config, build_calib, samples, source, h.hexdigest())
