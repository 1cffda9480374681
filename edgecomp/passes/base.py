"""The one interface of graph passes: a pass is a function `model (, options) -> PassResult`, the
transformed model (a new ModelProto; the input is never changed) and a JSON-able report of what it
did. Each pass's docstring says what it preserves."""

from __future__ import annotations

from typing import NamedTuple

import onnx


class PassResult(NamedTuple):
    model: onnx.ModelProto
    report: dict
