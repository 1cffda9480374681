"""One sweep point: build, profile on the target, measure accuracy — and never raise: a point
that fails is a row with its reason, so one bad point never ends a sweep.

Profiling is one inference on the device (QEMU, or the host executable): instructions, flash,
RAM and peak stack, with that output checked against the build's reference. Accuracy over all the
evaluation samples comes from the host-side reference of the build, not from one device run per
sample: for a quantized build the integer reference, bit-exact with the device (the check above
holds it to that); for a float build onnxruntime on the model as compiled, which the device
matches within the float tolerance.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from edgecomp.errors import DoesNotFitError, EdgecompError, UserError
from edgecomp.io import load_dataset, random_sample
from edgecomp.pipeline import build, build_inputs_key, float_model_of, io_specs
from edgecomp.quant.accuracy import sqnr_db
from edgecomp.runner import profile_record, run_samples
from edgecomp.sweep.points import RANDOM_SAMPLES, Point
from edgecomp.targets import load_target
from edgecomp.verify import Reference, check_outputs, device_value, float_outputs

FLOAT_TOLERANCE = 1e-4  # max abs error / max |reference| of a float build's device output (as `run`)

# status: ok (measured); failed (cannot be built as asked: does not fit, unsupported, bad
# combination; the same next time); error (tool, device or internal failure: measured again on
# the next run); mismatch (the device's output differs from the reference the accuracy comes from).
FINAL_STATUSES = ("ok", "failed", "mismatch")


def run_point(point: Point, workdir: Path, timeout: float = 60.0) -> dict:
    """The point's row. Builds go to workdir/builds/<build key>: the same build is reused by any
    point (or sweep) that needs it."""
    row = _blank_row(point)
    t0 = time.monotonic()
    try:
        _measure(point, Path(workdir), timeout, row)
    except DoesNotFitError as exc:
        row.update(status="failed", fits=False, reason=str(exc))
    except UserError as exc:
        row.update(status="failed", reason=str(exc))
    except EdgecompError as exc:
        row.update(status="error", reason=str(exc))
    except Exception as exc:  # an edgecomp bug: a row saying so, not the end of the sweep
        row.update(status="error", reason=f"internal error: {type(exc).__name__}: {exc}")
    row["seconds"] = round(time.monotonic() - t0, 2)
    return row


def error_row(point: Point, reason: str) -> dict:
    """The row of a point whose run itself failed (its worker died, its task was lost)."""
    row = _blank_row(point)
    row.update(status="error", reason=reason)
    return row


def _blank_row(point: Point) -> dict:
    return {
        "key": point.key,
        "model": point.model_name,
        "target": point.target_name,
        "config": point.config.label,
        "options": point.config.swept,
        "status": None,
        "reason": "",
        "fits": None,
        "instructions": None,
        "host_ns": None,
        "clock_hz": None,
        "latency_ms": None,
        "flash_bytes": None,
        "ram_bytes": None,
        "stack_bytes": None,
        "ram_with_stack_bytes": None,
        "arena_bytes": None,
        "weights_bytes": None,
        "macs": None,
        "params": None,
        "accuracy_metric": None,
        "accuracy": None,
        "sqnr_db": None,
        "argmax_agreement": None,
        "top1": None,
        "float_top1": None,
        "samples": None,
        "eval_source": point.eval_source,
        "device_check": None,
        "build_cached": None,
        "seconds": None,
    }


def _measure(point: Point, workdir: Path, timeout: float, row: dict) -> None:
    target = load_target(point.target)
    options = point.config.options
    calib = point.calib.path if point.calib else None
    outdir = workdir / "builds" / build_inputs_key(point.model.path, target, options, calib)[:20]
    result = build(point.model.path, target, outdir, options, reuse=True, log=lambda *_: None, calib=calib)
    rep = result.report
    row["build_cached"] = result.cached
    for key in ("macs", "params", "weights_bytes", "arena_bytes", "flash_bytes", "ram_bytes"):
        row[key] = rep.get(key)
    if "fits" in rep:  # firmware: the linker's figures against the part's budget
        row["fits"], row["reason"] = _fits(rep)

    reference = float_model_of(point.model.path)  # the unpruned float model, as every build starts
    samples, labels = _samples(point, io_specs(reference))

    first = [device_value(x, e) for x, e in zip(samples[0], rep["inputs"], strict=True)]
    run = run_samples(result, [first], timeout=timeout)[0]
    record = profile_record(result, run, on_board=False)
    row["instructions"], row["host_ns"] = record["instructions"], record["host_ns"]
    row["stack_bytes"] = record["stack_bytes"]
    if row["ram_bytes"] is not None and row["stack_bytes"] is not None:
        row["ram_with_stack_bytes"] = row["ram_bytes"] + row["stack_bytes"]
    if record["instructions"] is not None and target.latency_clock_hz:
        row["clock_hz"] = target.latency_clock_hz
        row["latency_ms"] = round(1000 * record["instructions"] / target.latency_clock_hz, 4)
    elif record["host_ns"] is not None:
        row["latency_ms"] = round(record["host_ns"] / 1e6, 4)
    check = check_outputs(result, [first], [run.outputs], FLOAT_TOLERANCE)
    if result.quantized:
        row["device_check"] = "bit-exact" if check.ok else "differs"
    else:
        row["device_check"] = f"rel. error {check.figures['rel_error']:.1e}"

    got = np.stack([o[0] for o in float_outputs(result, samples)])
    ref = Reference(reference)
    want = np.stack([ref.run(s)[0] for s in samples])
    row.update(_accuracy(want, got, labels))
    row["status"] = "ok" if check.ok else "mismatch"
    if not check.ok:
        row["reason"] = f"device output vs the build's reference: {check.failure}"


def _fits(rep: dict) -> tuple[bool, str]:
    f = rep["fits"]
    problems = []
    if f["flash_ok"] is False:
        problems.append(f"flash {rep['flash_bytes']:,} B > budget {f['flash_budget']:,} B")
    if f["ram_ok"] is False:
        ram = rep["ram_bytes"] + rep["stack_reserved_bytes"]
        problems.append(f"RAM {ram:,} B (with the reserved stack) > budget {f['ram_budget']:,} B")
    return not problems, ("does not fit: " + "; ".join(problems)) if problems else ""


def _samples(point: Point, specs: list[dict]) -> tuple[list[list[np.ndarray]], np.ndarray | None]:
    """The accuracy samples (float, as the float model takes them) and their labels, if any."""
    if point.samples is None:
        return [random_sample(specs, seed) for seed in range(RANDOM_SAMPLES)], None
    return load_dataset(point.samples.path, specs)


def _accuracy(want: np.ndarray, got: np.ndarray, labels: np.ndarray | None) -> dict:
    """The point's outputs against the float model's on the same samples (first output)."""
    n = len(want)
    top_want, top_got = want.reshape(n, -1).argmax(axis=1), got.reshape(n, -1).argmax(axis=1)
    sqnr = sqnr_db(want, got)
    out = {
        "samples": n,
        "sqnr_db": round(sqnr, 2) if np.isfinite(sqnr) else ("inf" if sqnr > 0 else "-inf"),
        "argmax_agreement": round(float(np.mean(top_want == top_got)), 4),
        "accuracy_metric": "sqnr_db",
    }
    if labels is not None:
        y = np.asarray(labels).reshape(-1)
        out["top1"] = round(float(np.mean(top_got == y)), 4)
        out["float_top1"] = round(float(np.mean(top_want == y)), 4)
        out["accuracy_metric"] = "top1"
    out["accuracy"] = out[out["accuracy_metric"]]
    return out
