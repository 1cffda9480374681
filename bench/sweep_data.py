"""Calibration and evaluation data for sweeping the MLPerf Tiny models (docs/sweep.md), from the
few real samples in ../shared (bench/calib.py's augmentation): per model, <name>-calib.npy (16
samples, seed 0) and <name>-eval.npz (x: 32 samples, seed 1; no labels: there is no labelled test
set offline, so a sweep scores SQNR and argmax agreement against the float model). Prints the
sweep command.

    python bench/sweep_data.py [OUT_DIR] [--models ../shared/models/mlperf-tiny]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from calib import augmented  # noqa: E402
from run import DEFAULT_MODELS, MODELS  # noqa: E402

from edgecomp.frontend import load_model  # noqa: E402


def write(models: Path, out: Path) -> list[str]:
    """Write the files; return the sweep's --calib/--eval arguments."""
    out.mkdir(parents=True, exist_ok=True)
    args = []
    for name, sample in MODELS.items():
        model = load_model(models / f"{name}.onnx")
        shape = tuple(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim)
        real = np.load(models / f"{sample}.npy").astype(np.float32).reshape((-1, *shape))
        flip = len(shape) == 4 and shape[1] == 3  # photos: horizontal flips; audio: time shifts
        np.save(out / f"{name}-calib.npy", augmented(real, 16, seed=0, flip=flip))
        np.savez(out / f"{name}-eval.npz", x=augmented(real, 32, seed=1, flip=flip))
        args += [f"--calib {name}={out / f'{name}-calib.npy'}", f"--eval {name}={out / f'{name}-eval.npz'}"]
    return args


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, nargs="?", default=Path("build/sweep-data"))
    ap.add_argument("--models", type=Path, default=DEFAULT_MODELS)
    args = ap.parse_args()
    if not args.models.is_dir():
        print(f"sweep_data: model folder {args.models} not found (pass --models)", file=sys.stderr)
        return 2
    data = write(args.models, args.out)
    models = " ".join(str(args.models / f"{n}.onnx") for n in MODELS)
    print(f"edgecomp sweep {models} \\\n  --targets cortex-m4,cortex-m7,cortex-m55 --grid bench/sweep-mlperf.toml \\\n  "
          + " \\\n  ".join(data) + " \\\n  -o build/sweep-mlperf -j 2")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
