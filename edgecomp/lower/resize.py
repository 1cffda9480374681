"""ONNX Resize as per-axis tap tables: which input elements, with which weights, make each output.

Resize is separable: the ONNX reference resizes one axis after another, each output element a
weighted sum of a few input elements along that axis (2 for linear, 4 for cubic, more when
antialiasing a downsample; 1 with weight 1 for nearest). For a static shape and constant
scales/sizes those indices and weights are constants, so the op compiles to Gathers, Muls and
Adds that TVM fuses into one kernel per axis: every mode, coordinate transformation, `axes`,
`keep_aspect_ratio_policy`, `exclude_outside` and `antialias` the ONNX spec (opset 19) defines,
computed as onnx.reference computes them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class AxisTaps:
    """out[..., i, ...] = sum_k weights[k, i] * in[..., index[k, i], ...] along `axis`; then
    positions where `extrapolated` is set take the extrapolation value (tf_crop_and_resize)."""

    axis: int
    index: np.ndarray  # int64 [taps, out_len]
    weights: np.ndarray  # float64 [taps, out_len]
    extrapolated: np.ndarray | None  # bool [out_len]

    @property
    def is_selection(self) -> bool:
        """A plain gather: one tap of weight 1 (nearest)."""
        return self.index.shape[0] == 1 and bool(np.all(self.weights == 1.0))


def resize_taps(shape: tuple[int, ...], attrs: dict, roi: np.ndarray | None, scales: np.ndarray | None,
                sizes: np.ndarray | None) -> tuple[list[AxisTaps], tuple[int, ...]]:  # fmt: skip
    """The tap tables of a Resize of an input of `shape`, axis by axis, and the output shape."""
    r = len(shape)
    axes = [a % r for a in attrs.get("axes", range(r))]
    scales_l = None if scales is None or scales.size == 0 else [float(s) for s in scales]
    sizes_l = None if sizes is None or sizes.size == 0 else [int(s) for s in sizes]
    roi_l = None if roi is None or roi.size == 0 else [float(v) for v in roi]
    if len(axes) != r:  # expand per-axis parameters to every axis
        if scales_l is not None:
            full = [1.0] * r
            for i, d in enumerate(axes):
                full[d] = scales_l[i]
            scales_l = full
        if sizes_l is not None:
            full_sizes = list(shape)
            for i, d in enumerate(axes):
                full_sizes[d] = sizes_l[i]
            sizes_l = full_sizes
        if roi_l is not None:
            full_roi = [0.0] * r + [1.0] * r
            for i, d in enumerate(axes):
                full_roi[d], full_roi[r + d] = roi_l[i], roi_l[len(axes) + i]
            roi_l = full_roi
    if sizes_l is not None:
        scales_l = [sizes_l[i] / shape[i] for i in range(r)]
        policy = attrs.get("keep_aspect_ratio_policy", "stretch")
        if policy != "stretch":
            picked = [scales_l[a] for a in axes]
            scale = min(picked) if policy == "not_larger" else max(picked)
            scales_l = [scale if i in axes else 1.0 for i in range(r)]
            sizes_l = [int(scale * shape[i] + 0.5) if i in axes else shape[i] for i in range(r)]
        out = sizes_l
    else:
        assert scales_l is not None
        out = [int(s * n) for s, n in zip(scales_l, shape, strict=True)]
    taps = []
    for a in axes:
        same_roi = roi_l is None or (math.isclose(roi_l[a], 0.0) and math.isclose(roi_l[a + r], 1.0))
        if math.isclose(scales_l[a], 1.0) and out[a] == shape[a] and same_roi:
            continue  # identity along this axis, as the reference skips it
        axis_roi = None if roi_l is None else (roi_l[a], roi_l[a + r])
        taps.append(_axis_taps(a, shape[a], out[a], scales_l[a], attrs, axis_roi))
    return taps, tuple(out)


def _axis_taps(axis: int, n_in: int, n_out: int, scale: float, attrs: dict,
               roi: tuple[float, float] | None) -> AxisTaps:  # fmt: skip
    mode = attrs.get("mode", "nearest")
    ctm = attrs.get("coordinate_transformation_mode", "half_pixel")
    y = np.arange(n_out, dtype=np.float64)
    out_w = scale * n_in
    extrapolated = None
    if ctm == "align_corners":
        x = np.zeros(n_out) if out_w == 1 else y * (n_in - 1) / (out_w - 1)
    elif ctm == "asymmetric":
        x = y / scale
    elif ctm == "tf_crop_and_resize":
        lo, hi = roi if roi is not None else (0.0, 1.0)
        x = (
            np.full(n_out, (hi - lo) * (n_in - 1) / 2)
            if out_w == 1
            else y * (hi - lo) * (n_in - 1) / (out_w - 1)
        )
        x = x + lo * (n_in - 1)
        extrapolated = (x < 0) | (x > n_in - 1)
    elif ctm == "pytorch_half_pixel":
        x = np.full(n_out, -0.5) if out_w == 1 else (y + 0.5) / scale - 0.5
    elif ctm == "half_pixel":
        x = (y + 0.5) / scale - 0.5
    elif ctm == "half_pixel_symmetric":
        offset = n_in / 2 * (1 - n_out / out_w)
        x = offset + (y + 0.5) / scale - 0.5
    else:
        raise ValueError(f"coordinate_transformation_mode '{ctm}' is not defined by ONNX")
    x_int = np.floor(x).astype(np.int64)
    ratios = np.where(x == x_int, 1.0, x - x_int)  # (0, 1]: prefer the left neighbour
    coeffs = np.stack([_coeffs(mode, float(t), scale, attrs) for t in ratios]) if n_out else np.zeros((0, 2))
    n = coeffs.shape[1]
    # The n neighbours nearest x in the edge-padded input, ties to the smaller index.
    pad = math.ceil(n / 2)
    xp = x + pad
    p = np.floor(xp).astype(np.int64)
    frac = xp - p
    if n % 2 == 0:
        start = p + np.where(frac == 0, -(n // 2), -(n // 2) + 1)
    else:
        start = p + np.where(frac <= 0.5, -((n - 1) // 2), -((n - 1) // 2) + 1)
    idx = start[:, None] + np.arange(n)[None, :] - pad
    if attrs.get("exclude_outside", 0):
        coeffs = np.where((idx < 0) | (idx >= n_in), 0.0, coeffs)
        total = coeffs.sum(axis=1, keepdims=True)
        coeffs = coeffs / np.where(total == 0, 1.0, total)
    idx = np.clip(idx, 0, n_in - 1)  # edge padding
    # Merge taps that hit the same element and drop zero weights: a dense row, then its non-zeros.
    dense = np.zeros((n_out, n_in))
    np.add.at(dense, (np.repeat(np.arange(n_out), n), idx.reshape(-1)), coeffs.reshape(-1))
    k = max(1, int((dense != 0).sum(axis=1).max())) if n_out else 1
    index = np.zeros((k, n_out), dtype=np.int64)
    weights = np.zeros((k, n_out))
    for i in range(n_out):
        cols = np.flatnonzero(dense[i])
        index[: len(cols), i], weights[: len(cols), i] = cols, dense[i, cols]
    return AxisTaps(
        axis, index, weights, extrapolated if extrapolated is not None and extrapolated.any() else None
    )


def _coeffs(mode: str, ratio: float, scale: float, attrs: dict) -> np.ndarray:
    antialias = bool(attrs.get("antialias", 0)) and scale < 1.0
    if mode == "nearest":
        if ratio == 1.0:
            return np.array([0.0, 1.0])
        rule = attrs.get("nearest_mode", "round_prefer_floor")
        up = {"round_prefer_floor": ratio > 0.5, "round_prefer_ceil": ratio >= 0.5, "floor": False,
              "ceil": True}[rule]  # fmt: skip
        return np.array([0.0, 1.0]) if up else np.array([1.0, 0.0])
    if mode == "linear":
        if not antialias:
            return np.array([1 - ratio, ratio])
        start = int(np.floor(-1 / scale) + 1)
        args = (np.arange(start, 2 - start) - ratio) * scale
        c = np.clip(1 - np.abs(args), 0, 1)
        return c / c.sum()
    if mode == "cubic":
        a = float(attrs.get("cubic_coeff_a", -0.75))
        if not antialias:
            t = np.array([ratio + 1, ratio, 1 - ratio, 2 - ratio])
        else:
            start = int(np.floor(-2 / scale) + 1)
            t = np.abs(scale * (np.arange(start, 2 - start) - ratio))
        c = np.where(
            t <= 1,
            (a + 2) * t**3 - (a + 3) * t**2 + 1,
            np.where(t < 2, a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a, 0.0),
        )
        return c / c.sum() if antialias else c
    raise ValueError(f"Resize mode '{mode}' is not defined by ONNX")
