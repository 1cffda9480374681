"""Serial harness: one framed protocol to a board, to QEMU (socket://) and to the host build (pipes)."""

from edgecomp.harness.session import InferenceResult, Session, open_session

__all__ = ["InferenceResult", "Session", "open_session"]
