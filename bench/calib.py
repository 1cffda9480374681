"""Calibration sets for the MLPerf Tiny models, built from the few real samples shipped in
../shared (4 CIFAR-sized photos, 2 VWW photos, 1 MFCC utterance, 1 DCASE window): each real sample,
plus copies with a horizontal flip (images) or a time shift (audio) and mild Gaussian noise.
Small and synthetic-ish: enough for min/max calibration, and said so in the report."""

from __future__ import annotations

import numpy as np


def augmented(samples: np.ndarray, count: int = 16, seed: int = 0, flip: bool = True) -> np.ndarray:
    """`count` samples: the originals first, then perturbed copies."""
    rng = np.random.default_rng(seed)
    out = [s for s in samples]
    i = 0
    while len(out) < count:
        base = samples[i % len(samples)]
        y = base.copy()
        if flip and rng.random() < 0.5:
            y = y[..., ::-1]
        else:
            y = np.roll(y, int(rng.integers(-3, 4)), axis=-2 if y.ndim > 2 else -1)
        y = y + rng.normal(0, 0.03 * float(np.abs(base).max()), y.shape)
        out.append(y.astype(np.float32))
        i += 1
    return np.stack(out[:count]).astype(np.float32)
