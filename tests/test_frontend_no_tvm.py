"""The front end and the commands that need no compiler (ops, analyze) do not import TVM; the
front end's table of compiled ops is TVM's importer table plus edgecomp's rewrites."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "tiny_cnn.onnx"

PROBE = """
import sys
from edgecomp.frontend import load_model
from edgecomp.frontend.ops import ops_table
from edgecomp.pipeline import float_model_of
from edgecomp.lower.kernels.dense import TILE_ROWS
load_model(sys.argv[1])
float_model_of(sys.argv[1])
ops_table()
loaded = sorted(m for m in sys.modules if m == "tvm" or m.startswith("tvm."))
print(len(loaded))
"""


def test_front_end_and_passes_do_not_import_tvm():
    proc = subprocess.run([sys.executable, "-c", PROBE, str(EXAMPLE)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "0", "TVM was imported by the front end or the graph passes"


def test_compiled_op_table_matches_tvm_importer():
    from edgecomp.frontend.op_table import COMPILED_OPS
    from edgecomp.lower.legalize import REWRITTEN_OPS
    from edgecomp.lower.relax_import import importer_ops

    assert set(importer_ops()) | REWRITTEN_OPS == COMPILED_OPS
