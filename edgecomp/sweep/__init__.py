"""`edgecomp sweep`: design-space exploration over compression options x targets.

grid.py (the grid file) -> points.py (points and their keys) -> executors.py (local pool or Ray)
running run.py (one point: build, profile, accuracy) -> store.py (rows by key: resume) ->
pareto.py (fronts) -> report.py (json, csv, table, PNG, HTML); driver.py strings them together.
"""

from edgecomp.sweep.driver import SweepResult, run_sweep
from edgecomp.sweep.executors import LocalExecutor, RayExecutor

__all__ = ["LocalExecutor", "RayExecutor", "SweepResult", "run_sweep"]
