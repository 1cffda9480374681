"""The grid file of `edgecomp sweep`: which build options to combine.

A TOML file of lists, one per `build` option (spelled as on the command line, `dead-channels` or
`dead_channels`); every combination is one configuration. `[[grid]]` tables give several such
grids whose configurations are pooled (e.g. float points without quantization options):

    quantize = ["fp32", "int8", "int16x8"]
    prune = ["none", "channels=0.25", "channels=0.5"]

Values are checked against the options `build` takes (options.CHOICES, parse_prune), so a typo
fails before any build starts. Options without effect on a configuration (the quantization
options of a float one) are dropped, and configurations that become equal are one.
"""

from __future__ import annotations

import itertools
import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path

from edgecomp.errors import UserError
from edgecomp.options import CHOICES, BuildOptions, parse_patch, parse_prune

# grid key -> BuildOptions field: the build options a sweep combines.
SWEEPABLE = {
    "quantize": "quantize",
    "calib-method": "calib_method",
    "io": "io",
    "kernels": "kernels",
    "prune": "prune",
    "prune-importance": "prune_importance",
    "dead-channels": "dead_channels",
    "cflags": "extra_cflags",
    "patch": "patch",
    "optimize": "optimize",
}
# The other BuildOptions fields, and why a grid does not take them.
NOT_SWEPT = {
    "input_shapes": "the model's input shapes are not a compression option",
    "fit_check": "every point is built without the fit check and its row says whether it fits",
    "per_layer": "points are profiled as deployed, without per-layer timers",
    "sanitize": "sanitizer builds are for the host target's checks, not for deployment",
    "freeze": "inputs made constants change the model, not how it is compressed",
    "keep_inputs": "inputs kept as inputs change the model, not how it is compressed",
    "integrity": "points are built as deployed, with the weights check at boot (the default)",
    "model_region": "where the weights sit in flash is a deployment choice, not a compression option",
    "sign": "signing changes no figure a sweep measures",
    "sign_version": "signing changes no figure a sweep measures",
    "max_ram": "a RAM budget is a constraint, not an option: sweep patch = [...] and read the RAM column",
    "max_flash": "a flash budget is a constraint, not an option: sweep quantize = [...] and read the flash column",
    "narrow_records": "which layers keep int8 weight records is what --max-flash chooses for a budget, not a grid value",
    "name": "a symbol prefix changes no figure a sweep measures",
    "arena": "points are profiled with edgecomp's firmware, which owns the arena",
    "harness": "points are profiled over edgecomp's own protocol",
    "mlperf_model": "points are profiled over edgecomp's own protocol",
    "weight_bits": "per-layer widths are what --quantize mixed chooses for a flash budget, not a grid value",
    "act_bits": "per-layer widths are what --quantize mixed chooses for a flash budget, not a grid value",
}
NONE_VALUES = {"quantize": ("none", "fp32", "float"), "io": ("none",), "prune": ("none",)}
QUANTIZED_ONLY = ("calib_method", "dead_channels", "io", "patch", "optimize")  # no effect on a float configuration
DEFAULTS = BuildOptions(fit_check=False)


@dataclass(frozen=True)
class Config:
    """One combination of options: what a point builds with, on every model and target."""

    options: BuildOptions
    label: str  # short and unique: "fp32", "int8 prune=channels=0.5 dead-channels=none"

    @property
    def swept(self) -> dict:
        """The sweepable options' values (every one, defaults included), for rows."""
        values = self.options.as_dict()
        return {f: values[f] for f in SWEEPABLE.values()}


def load_grid(path: Path) -> list[Config]:
    """The configurations of a grid file, in file order; a one-line UserError for a bad file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"grid file not found: {path}")
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UserError(f"cannot read grid file {path}: {exc}") from exc
    return parse_grid(raw, path)


def parse_grid(raw: dict, path: Path) -> list[Config]:
    """Configurations from a parsed grid file (`path` names it in errors, and relative per-layer
    pruning files are found beside it)."""
    if "grid" in raw:
        extra = sorted(k for k in raw if k != "grid")
        if extra:
            raise UserError(f"{path}: options {extra} outside the [[grid]] tables; put them in one")
        tables = raw["grid"]
        if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
            raise UserError(f"{path}: 'grid' must be [[grid]] tables of option lists")
    else:
        tables = [raw]
    configs: dict[str, Config] = {}
    for i, table in enumerate(tables):
        where = f"{path}" + (f" [[grid]] #{i + 1}" if "grid" in raw else "")
        for config in _combinations(table, where, path.parent):
            configs.setdefault(_identity(config), config)
    if not configs:
        raise UserError(f"{path}: the grid is empty; give lists of build options, e.g. quantize = [\"fp32\", \"int8\"]")
    return list(configs.values())


def _combinations(table: dict, where: str, base: Path) -> list[Config]:
    axes: list[tuple[str, list]] = []
    for key, values in table.items():
        field = _field(key, where)
        if not isinstance(values, list):
            values = [values]
        if not values:
            raise UserError(f"{where}: option '{key}' has no values")
        axes.append((field, [_value(field, key, v, where, base) for v in values]))
    if not axes:
        return []
    configs = []
    for combo in itertools.product(*(values for _, values in axes)):
        options = _normalized(replace(DEFAULTS, **dict(zip((f for f, _ in axes), combo, strict=True))))
        configs.append(Config(options, _label(options)))
    return configs


def _field(key: str, where: str) -> str:
    name = key.replace("_", "-")
    if name in SWEEPABLE:
        return SWEEPABLE[name]
    field = key.replace("-", "_")
    if field in NOT_SWEPT:
        raise UserError(f"{where}: option '{key}' cannot be swept: {NOT_SWEPT[field]}")
    raise UserError(f"{where}: unknown option '{key}'; a grid combines {', '.join(SWEEPABLE)}")


def _value(field: str, key: str, value, where: str, base: Path):
    if not isinstance(value, str):
        raise UserError(f"{where}: option '{key}' takes strings, not {value!r}")
    if value in NONE_VALUES.get(field, ()):
        return None
    if field == "quantize" and value == "mixed":
        raise UserError(f"{where}: quantize = mixed needs a flash budget (edgecomp build --quantize mixed "
                        "--max-flash SIZE); a grid sweeps int8, int16x8 or w4a8")  # fmt: skip
    if field == "patch":
        try:
            parse_patch(value)
        except UserError as exc:
            raise UserError(f"{where}: {exc}") from None
        return value
    if field in CHOICES:
        if value not in CHOICES[field]:
            allowed = [*CHOICES[field], *NONE_VALUES.get(field, ())]
            raise UserError(f"{where}: '{key}' cannot be '{value}'; use one of {', '.join(allowed)}")
        return value
    if field == "prune":
        try:
            spec = parse_prune(value)
        except UserError as exc:
            raise UserError(f"{where}: prune value '{value}': {exc} (or 'none')") from None
        parts = []
        for kind in ("channels", "sparsity"):  # one spelling per meaning: "channels=0.50" is "channels=0.5"
            if kind not in spec:
                continue
            ratio = spec[kind]
            if isinstance(ratio, str):  # per-layer ratios: a JSON file, found beside the grid file
                file = Path(ratio) if Path(ratio).is_absolute() else (base / ratio).resolve()
                if not file.is_file():
                    raise UserError(f"{where}: prune value '{value}': per-layer ratios file {file} not found")
                parts.append(f"{kind}={file}")
            else:
                parts.append(f"{kind}={ratio:g}")
        return ",".join(parts)
    return value  # extra_cflags: any string


def _normalized(options: BuildOptions) -> BuildOptions:
    """Options with no effect on this configuration back to their defaults (so equal builds are
    one configuration)."""
    if options.quantize is None:
        options = replace(options, **{f: getattr(DEFAULTS, f) for f in QUANTIZED_ONLY})
    if options.kernels == "tvm":  # TVM's kernels have no weight records to choose
        options = replace(options, optimize=DEFAULTS.optimize)
    if options.prune is None or "channels" not in parse_prune(options.prune):
        options = replace(options, prune_importance=DEFAULTS.prune_importance)
    return options


def _identity(config: Config) -> str:
    return repr(sorted(config.swept.items(), key=lambda kv: kv[0]))


def _label(options: BuildOptions) -> str:
    parts = [options.quantize or "fp32"]
    values = options.as_dict()
    for key, field in SWEEPABLE.items():
        if field != "quantize" and values[field] != getattr(DEFAULTS, field):
            parts.append(f"{key}={values[field]}")
    return " ".join(parts)


def sweepable_fields() -> set[str]:
    """Every BuildOptions field is sweepable or has a reason not to be (a test holds this)."""
    return {f.name for f in fields(BuildOptions)} - set(NOT_SWEPT)
