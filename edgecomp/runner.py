"""Run a build's samples through the harness and turn device figures into a profile record."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgecomp.harness import InferenceResult, open_session
from edgecomp.pipeline import BuildResult


def run_samples(result: BuildResult, samples: list[list[np.ndarray]], port: str | None = None,
                baud: int = 115200, timeout: float = 5.0, verify: bool = False) -> list[InferenceResult]:  # fmt: skip
    """One inference per sample on the build's device (host process, QEMU or the board on `port`);
    with `verify`, the firmware's weights check runs once more after them (`result.integrity`)."""
    runs, _ = _session(result, samples, port, baud, timeout, verify)
    return runs


def _session(result: BuildResult, samples, port, baud, timeout, verify: bool):
    outs = result.report["outputs"]
    with open_session(result.target, result.outdir, port=port, baud=baud, timeout=timeout) as session:
        runs = [session.infer(s, [np.dtype(o["dtype"]) for o in outs], [tuple(o["shape"]) for o in outs])
                for s in samples]  # fmt: skip
        check = session.verify() if verify and session.info().integrity else None
    return runs, check


def integrity_cost(result: BuildResult, port: str | None = None, baud: int = 115200, timeout: float = 5.0) -> dict:
    """What the firmware's weights check costs, measured on the device: its SHA-256 over the
    weights run once more (as at boot); instructions in QEMU, timer ticks (cycles) on a board."""
    with open_session(result.target, result.outdir, port=port, baud=baud, timeout=timeout) as session:
        info = session.info()
        if not info.integrity:
            return {"enabled": False}
        check = session.verify()
    as_run = InferenceResult([], check.ticks, None, info.timer, info.clock_hz)
    return {"enabled": True, "ok": check.ok, "instructions": as_run.instructions if not port else None,
            "cycles": check.ticks if port else None}  # fmt: skip


def profile(result: BuildResult, sample: list[np.ndarray], port: str | None = None, baud: int = 115200,
            timeout: float = 5.0, log=print) -> dict:  # fmt: skip
    """`edgecomp profile`: the same input run twice — the first inference after start-up (cold caches
    and branch predictors on a board) and the second (warm); the record reports the warm one and
    both figures. A model quantized here also gets its unquantized build's flash/RAM beside it."""
    from edgecomp.pipeline import BuildOptions, build

    (cold, warm), check = _session(result, [sample, sample], port, baud, timeout, verify=True)
    record = profile_record(result, warm, on_board=bool(port), cold=cold)
    if check is not None:  # what the weights check costs at boot
        record["integrity_check"] = {"ok": check.ok, "weights_sha256": check.computed,
                                     "instructions": warm.ticks_to_instructions(check.ticks) if not port else None,
                                     "cycles": check.ticks if port else None}  # fmt: skip
    if result.float_model is not None:
        # The same model unquantized, built (or reused) beside it.
        opts = result.report["options"]
        options = BuildOptions(input_shapes=opts["input_shapes"], freeze=opts.get("freeze", {}),
                               keep_inputs=tuple(opts.get("keep_inputs", ())), fit_check=False,
                               extra_cflags=opts["extra_cflags"])  # fmt: skip
        fb = build(Path(result.report["model"]), result.target, result.outdir.with_name(result.outdir.name + "-float"),
                   options, reuse=True, log=log).report  # fmt: skip
        record["float"] = {k: fb.get(k) for k in ("flash_bytes", "ram_bytes", "arena_bytes", "weights_bytes")}
    return record


def profile_record(result: BuildResult, run: InferenceResult, on_board: bool,
                   cold: InferenceResult | None = None) -> dict:  # fmt: skip
    """The `profile` JSON: measured figures from the device (`run`, and the first inference after
    start-up `cold` if given) plus the build's static figures and provenance."""
    rep = result.report
    record = {
        "model": rep["model"],
        "target": rep["target"]["name"],
        "device": "board"
        if on_board
        else ("qemu" if rep["target"]["kind"] == "mcu" else rep["target"]["kind"]),
        "instructions": run.instructions if not on_board else None,
        "cycles": run.ticks if on_board and run.timer in ("systick", "dwt") else None,
        "host_ns": run.ticks if run.timer == "none" else None,
        "clock_hz": run.clock_hz if run.timer != "none" else None,
        "flash_bytes": rep.get("flash_bytes"),
        "ram_bytes": rep.get("ram_bytes"),
        "arena_bytes": rep["arena_bytes"],
        "stack_bytes": run.stack_bytes,
        "macs": rep["macs"],
        "params": rep["params"],
        "weights_bytes": rep["weights_bytes"],
        "compile_time_s": rep["compile_time_s"],
        "layers": rep["layers"],
    }
    if run.step_ticks:
        # --per-layer: each step's measured ticks (and instructions under QEMU) beside its MACs.
        record["layers"] = [
            {**layer, "ticks": t, "instructions": run.ticks_to_instructions(t) if not on_board else None,
             "cycles": t if on_board else None}
            for layer, t in zip(rep["layers"], run.step_ticks, strict=True)
        ]  # fmt: skip
    if on_board and record["cycles"] and run.clock_hz:
        record["latency_ms"] = round(1000 * record["cycles"] / run.clock_hz, 4)
    if cold is not None:
        record["cold"] = {"instructions": cold.instructions if not on_board else None,
                          "cycles": cold.ticks if on_board and cold.timer in ("systick", "dwt") else None}  # fmt: skip
    record["toolchain"] = rep.get("toolchain")
    record["core_clock_hz"] = rep.get("core_clock_hz")
    record["caches"] = rep.get("caches")
    if record["instructions"] and rep["macs"]:
        record["instructions_per_mac"] = round(record["instructions"] / rep["macs"], 3)
    return record
