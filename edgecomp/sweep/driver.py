"""`edgecomp sweep` from start to end: check every input before the first build, plan the points,
skip those already finished, run the rest on an executor, store each row as it arrives, then
mark the Pareto fronts and write the reports."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from edgecomp.errors import UserError
from edgecomp.sweep.grid import Config, load_grid
from edgecomp.sweep.pareto import mark_fronts
from edgecomp.sweep.points import DataRef, Point, make_point, needs_calib
from edgecomp.sweep.store import ResultStore


@dataclass
class SweepResult:
    rows: list[dict]  # one per point, in plan order (model, target, configuration)
    ran: int  # points measured by this run
    reused: int  # points whose finished row was already stored
    seconds: float
    files: list[Path] = field(default_factory=list)

    @property
    def mismatches(self) -> list[dict]:
        return [r for r in self.rows if r["status"] == "mismatch"]


def assign_data(items: list[str] | None, names: list[str], option: str) -> dict[str, Path | None]:
    """--calib / --eval values -> a path per model: one PATH for every model, or MODEL=PATH items
    (MODEL: the model file's stem)."""
    out: dict[str, Path | None] = dict.fromkeys(names)
    for item in items or []:
        name, sep, path = item.partition("=")
        if not sep:
            if len(items) > 1:
                raise UserError(f"{option}: several values need the MODEL=PATH form (models: {', '.join(names)})")
            return dict.fromkeys(names, Path(item))
        if name not in out:
            raise UserError(f"{option} {item}: no model named '{name}' in the sweep ({', '.join(names)})")
        out[name] = Path(path)
    return out


def plan(models: list[Path], targets: list[str], configs: list[Config], calib: dict[str, Path | None],
         eval_data: dict[str, Path | None]) -> list[Point]:  # fmt: skip
    """Every point, after checking the models, targets and data files (UserError otherwise)."""
    from edgecomp.frontend import load_model
    from edgecomp.io import load_dataset
    from edgecomp.pipeline import io_specs
    from edgecomp.targets import load_target

    names = [Path(m).stem for m in models]
    if len(set(names)) != len(names):
        raise UserError(f"models must have different file names (rows are named by them): {', '.join(names)}")
    loaded_targets = []
    for t in targets:
        target = load_target(t)
        if target.kind == "mcu" and not target.has_qemu:
            raise UserError(f"target {target.name} is a board without a QEMU machine: a sweep profiles in QEMU "
                            "or on the host")  # fmt: skip
        loaded_targets.append((t, target))
    if len({t.name for _, t in loaded_targets}) != len(loaded_targets):
        raise UserError(f"targets given twice: {', '.join(targets)}")
    points = []
    for path, name in zip(models, names, strict=True):
        if Path(path).suffix == ".tflite":
            raise UserError(f"{path}: a sweep compresses float ONNX models; a .tflite model is built as it is")
        specs = io_specs(load_model(path))
        refs = {}
        for option, given in (("--calib", calib[name]), ("--eval", eval_data[name])):
            if given is not None:
                load_dataset(given, specs)  # bad data fails here, not in every point
                refs[option] = DataRef.of(given)
        if "--calib" not in refs:
            need = [c.label for c in configs if needs_calib(c)]
            if need:
                raise UserError(f"configurations {', '.join(need)} need calibration data for {name}: "
                                f"--calib DATA (or --calib {name}=DATA)")  # fmt: skip
        model = DataRef.of(path)
        for t, target in loaded_targets:
            for config in configs:
                points.append(make_point(name, model, target, t, config, refs.get("--calib"), refs.get("--eval")))
    return points


def run_sweep(models: list[Path], targets: list[str], grid: Path, outdir: Path, executor,
              calib: list[str] | None = None, eval_data: list[str] | None = None, timeout: float = 60.0,
              log=print, show_progress: bool = False) -> SweepResult:  # fmt: skip
    """Measure every point not yet finished in `outdir` on `executor`, then report all of them."""
    from edgecomp.sweep import report

    t0 = time.monotonic()
    configs = load_grid(grid)
    names = [Path(m).stem for m in models]
    points = plan(models, targets, configs, assign_data(calib, names, "--calib"),
                  assign_data(eval_data, names, "--eval"))  # fmt: skip
    outdir = Path(outdir).resolve()
    store = ResultStore(outdir)
    rows = {p.key: store.finished(p.key) for p in points}
    todo = [p for p in points if rows[p.key] is None]
    log(f"{len(points)} points ({len(models)} model(s) x {len(targets)} target(s) x {len(configs)} "
        f"configuration(s)): {len(points) - len(todo)} already done, {len(todo)} to run on {executor.name}")  # fmt: skip
    if todo:
        measured = executor.run(todo, outdir, timeout)
        with report.progress(len(todo), show_progress) as advance:
            for row in measured:
                store.save(row)
                rows[row["key"]] = row
                advance(row)
    ordered = [rows[p.key] for p in points]
    mark_fronts(ordered)
    result = SweepResult(ordered, len(todo), len(points) - len(todo), time.monotonic() - t0)
    meta = {
        "models": {p.model_name: {"sha256": p.model.digest, "accuracy_samples": p.eval_source} for p in points},
        "targets": list(dict.fromkeys(p.target_name for p in points)),
        "configurations": [c.label for c in configs],
        "executor": executor.name,
        "points": len(points),
        "ran": result.ran,
        "reused": result.reused,
        "seconds": round(result.seconds, 2),
    }
    result.files = report.write_reports(outdir, ordered, meta, log)
    return result
