"""Reading user input tensors (.npy / .npz) and writing outputs, with the model's shapes in mind."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgecomp.errors import UserError


def load_samples(path: Path, inputs: list[dict]) -> list[list[np.ndarray]]:
    """Read `path` and return a list of samples, each a list of arrays in model-input order.

    An input may hold one sample (the model's shape), or N samples: N in the batch dimension of a
    batch-1 shape, or one extra leading dimension N.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"input file not found: {path}")
    return _samples(_read(path), path, inputs)


def _samples(
    loaded: np.ndarray | dict[str, np.ndarray], path: Path, inputs: list[dict]
) -> list[list[np.ndarray]]:
    """load_samples on what _read returned."""
    if isinstance(loaded, dict):
        arrays = loaded
        if len(inputs) == 1 and len(arrays) == 1:
            arrays = {inputs[0]["name"]: next(iter(arrays.values()))}
        missing = [i["name"] for i in inputs if i["name"] not in arrays]
        if missing:
            raise UserError(f"{path} has no array for input(s) {missing}; it holds {sorted(arrays)}")
        per_input = [arrays[i["name"]] for i in inputs]
    else:
        if len(inputs) != 1:
            names = [i["name"] for i in inputs]
            raise UserError(
                f"the model has {len(inputs)} inputs {names}: pass a .npz with one array per name"
            )
        per_input = [loaded]

    per_input = [to_model_dtype(arr, spec) for arr, spec in zip(per_input, inputs, strict=True)]
    split = [_split(arr, tuple(spec["shape"]), spec["name"], np.dtype(spec["dtype"]))
             for arr, spec in zip(per_input, inputs, strict=True)]  # fmt: skip
    counts = {len(s) for s in split}
    if len(counts) != 1:
        raise UserError(f"inputs hold different numbers of samples: {[len(s) for s in split]}")
    if counts == {0}:
        raise UserError(f"{path} holds no samples")
    return [list(sample) for sample in zip(*split, strict=True)]


def to_model_dtype(arr: np.ndarray, spec: dict) -> np.ndarray:
    """Integer data for an integer input is range-checked; float data for a quantized input (one
    with a scale) is quantized as the model's QuantizeLinear would."""
    dtype = np.dtype(spec["dtype"])
    if dtype.kind not in "iub":
        return arr
    if np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_:
        if dtype.kind in "iu":
            info = np.iinfo(dtype)
            if arr.size and (arr.min() < info.min or arr.max() > info.max):
                raise UserError(
                    f"input '{spec['name']}' holds values outside {dtype} [{info.min}, {info.max}]"
                )
        return arr
    if "scale" not in spec:
        raise UserError(f"input '{spec['name']}' is {dtype}; the data holds {arr.dtype}")
    info = np.iinfo(dtype)
    v = arr.astype(np.float32) / np.float32(spec["scale"])
    if spec.get("rounding") == "half_away":  # a TFLite model's input: its QUANTIZE's roundf
        q = np.copysign(np.floor(np.abs(v).astype(np.float64) + 0.5), v)
    else:
        q = np.rint(v)
    return np.clip(q + spec["zero_point"], info.min, info.max).astype(dtype)


def _read(path: Path) -> np.ndarray | dict[str, np.ndarray]:
    """The array of a .npy, or every array of a .npz; a one-line UserError for anything else
    (truncated, not NumPy, pickled objects, a zip that is not an .npz...)."""
    kind = "npz" if path.suffix == ".npz" else "npy"
    try:
        if kind == "npz":
            with np.load(path, allow_pickle=False) as z:
                if not hasattr(z, "files"):
                    raise ValueError("not a zip of arrays")
                return {k: z[k] for k in z.files}
        arr = np.load(path, allow_pickle=False)
        if not isinstance(arr, np.ndarray):
            raise ValueError("not a single array")
        return arr
    except Exception as exc:  # numpy and zipfile raise many kinds for malformed files
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UserError(f"cannot read {path} as a NumPy .{kind} file: {reason}") from exc


def _split(arr: np.ndarray, shape: tuple[int, ...], name: str, dtype: np.dtype) -> list[np.ndarray]:
    if not np.issubdtype(arr.dtype, np.number):
        raise UserError(f"input '{name}' has dtype {arr.dtype}, expected numbers")
    arr = arr.astype(dtype, copy=False)
    if arr.shape == shape:
        return [arr]
    if arr.ndim == len(shape) + 1 and arr.shape[1:] == shape:
        return [a for a in arr]
    if shape and shape[0] == 1 and arr.ndim == len(shape) and arr.shape[1:] == shape[1:]:
        return [a[None] for a in arr]
    raise UserError(
        f"input '{name}' has shape {list(arr.shape)}; the model takes {list(shape)} (or N samples of it)"
    )


def save_outputs(path: Path, names: list[str], per_sample: list[list[np.ndarray]]) -> None:
    """Write the outputs of every sample stacked along a new leading axis (.npy: the first output)."""
    stacked = [
        np.stack([s[i] for s in per_sample]) if len(per_sample) > 1 else per_sample[0][i]
        for i in range(len(names))
    ]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npz":
        np.savez(path, **dict(zip(names, stacked, strict=True)))
    else:
        np.save(path, stacked[0])


def load_calibration(path: Path, inputs: list[dict]) -> list[list[np.ndarray]]:
    """Calibration samples from a .npy (leading batch dimension), a .npz (its `x` array, its only
    array, or one array per input name) or a folder of .npy files."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.npy"))
        if not files:
            raise UserError(f"calibration folder {path} holds no .npy files")
        return [s for f in files for s in load_samples(f, inputs)]
    if path.suffix == ".npz" and path.is_file():
        return _npz_samples(_read(path), path, inputs)
    return load_samples(path, inputs)


def _npz_samples(arrays: dict[str, np.ndarray], path: Path, inputs: list[dict]) -> list[list[np.ndarray]]:
    """A single-input model's samples from an .npz's `x` array (leading batch dimension), or as
    load_samples reads an .npz."""
    if len(inputs) == 1 and "x" in arrays:
        spec = inputs[0]
        return [[s] for s in _split(arrays["x"], tuple(spec["shape"]), spec["name"], np.dtype(spec["dtype"]))]
    return _samples(arrays, path, inputs)


def load_eval(
    path: Path, inputs: list[dict], option: str = "--eval"
) -> tuple[list[list[np.ndarray]], np.ndarray | None]:
    """Evaluation (or training) data: a .npz with `x` (samples) and optional labels `y` (one per
    sample); `option` names the command-line option in errors."""
    path = Path(path)
    if path.suffix != ".npz" or not path.is_file():
        raise UserError(
            f"{option} needs an existing .npz file with arrays x (inputs) and optional y (labels): {path}"
        )
    arrays = _read(path)
    samples = _npz_samples(arrays, path, inputs)
    labels = arrays.get("y")
    if labels is not None and len(labels) != len(samples):
        raise UserError(f"{path}: {len(labels)} labels for {len(samples)} samples")
    return samples, labels


def load_dataset(path: Path, inputs: list[dict]) -> tuple[list[list[np.ndarray]], np.ndarray | None]:
    """Samples with optional labels: a .npz with `x` and optional `y` (as --eval), or anything
    --calib takes (.npy, .npz, a folder of .npy), unlabelled."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"data file not found: {path}")
    if path.suffix == ".npz" and path.is_file():
        arrays = _read(path)
        if "x" in arrays:
            return load_eval(path, inputs)
    return load_calibration(path, inputs), None


def random_sample(entries: list[dict], seed: int = 0) -> list[np.ndarray]:
    """Seeded random inputs for report.json input `entries`: standard normal floats, integers over
    their type's whole range, booleans."""
    rng = np.random.default_rng(seed)
    sample = []
    for entry in entries:
        dtype = np.dtype(entry["dtype"])
        if dtype == np.bool_:
            sample.append(rng.integers(0, 2, entry["shape"]).astype(dtype))
        elif dtype.kind in "iu":
            info = np.iinfo(dtype)
            sample.append(rng.integers(info.min, info.max, entry["shape"], dtype=dtype, endpoint=True))
        else:
            sample.append(rng.standard_normal(entry["shape"]).astype(dtype))
    return sample
