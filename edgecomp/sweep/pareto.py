"""Pareto fronts of a sweep: per model, the points no other point beats on accuracy and a cost
(instructions, flash, RAM with stack) at once. Only deployable points compete: measured (status
ok) and within the target's budget."""

from __future__ import annotations

# front name -> the row's cost field (lower is better); accuracy is higher-better.
COSTS = {"instructions": "instructions", "flash": "flash_bytes", "ram": "ram_with_stack_bytes"}


def number(value) -> float | None:
    """A row's figure as a float ("inf" for outputs identical to the float model's)."""
    if value is None:
        return None
    return float(value)


def non_dominated(points: list[tuple[float, float]]) -> list[bool]:
    """For (accuracy, cost) pairs: True where no other pair has accuracy >= and cost <= with one
    of them strictly better (equal pairs are both on the front). One pass in cost order: a point
    is dominated by a cheaper point at least as accurate, or an equally cheap more accurate one."""
    keep = [False] * len(points)
    order = sorted(range(len(points)), key=lambda i: points[i][1])
    best_cheaper = float("-inf")
    i = 0
    while i < len(order):
        j = i
        while j < len(order) and points[order[j]][1] == points[order[i]][1]:
            j += 1
        same_cost = [order[k] for k in range(i, j)]
        best_here = max(points[k][0] for k in same_cost)
        for k in same_cost:
            keep[k] = not (best_cheaper >= points[k][0] or best_here > points[k][0])
        best_cheaper = max(best_cheaper, best_here)
        i = j
    return keep


def eligible(row: dict) -> bool:
    """Whether a row competes: measured, fits (or has no budget: the host), has an accuracy."""
    return row.get("status") == "ok" and row.get("fits") is not False and row.get("accuracy") is not None


def mark_fronts(rows: list[dict]) -> None:
    """Set row["pareto"] = {front: bool} on every row, fronts taken per model across targets
    and configurations."""
    for row in rows:
        row["pareto"] = dict.fromkeys(COSTS, False)
    for model in dict.fromkeys(r["model"] for r in rows):
        group = [r for r in rows if r["model"] == model and eligible(r)]
        for front, field in COSTS.items():
            members = [r for r in group if r.get(field) is not None]
            flags = non_dominated([(number(r["accuracy"]), float(r[field])) for r in members])
            for r, flag in zip(members, flags, strict=True):
                r["pareto"][front] = flag
