"""A sweep's finished points: one JSON file per point key in DIR/points/, written as each point
finishes (atomically), so an interrupted sweep resumes and a rerun skips what is done."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from edgecomp.sweep.run import FINAL_STATUSES


class ResultStore:
    def __init__(self, outdir: Path) -> None:
        self.folder = Path(outdir) / "points"
        self.folder.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.folder / f"{key}.json"

    def load(self, key: str) -> dict | None:
        """The stored row of point `key`, or None (missing, or unreadable: measured again)."""
        try:
            row = json.loads(self._path(key).read_text())
        except (OSError, ValueError):
            return None
        return row if isinstance(row, dict) and row.get("key") == key else None

    def finished(self, key: str) -> dict | None:
        """The stored row if it is final; a tool or device error is measured again."""
        row = self.load(key)
        return row if row is not None and row.get("status") in FINAL_STATUSES else None

    def save(self, row: dict) -> None:
        fd, tmp = tempfile.mkstemp(prefix=".point.", dir=self.folder)
        with os.fdopen(fd, "w") as f:
            json.dump(row, f, indent=1)
        os.replace(tmp, self._path(row["key"]))
