"""Static memory planning: every intermediate tensor and kernel scratch buffer gets an arena offset.

A buffer lives from the step that writes it to the last step that reads it (inclusive), so a
kernel's outputs never overlap its own inputs. Model inputs live in the arena too (written before
step 0, dead after their last reader, as in TFLite Micro), and model outputs stay live to the end. Buffers are placed largest first at the lowest
offset that does not collide with an already placed buffer whose lifetime overlaps (the greedy
by-size strategy TFLite Micro's GreedyMemoryPlanner uses).
"""

from __future__ import annotations

from dataclasses import dataclass

from edgecomp.lower.model import LoweredModel

ALIGN = 16


@dataclass(frozen=True)
class Buffer:
    name: str
    size: int
    first: int  # step that writes it
    last: int  # last step that reads it


@dataclass(frozen=True)
class ArenaPlan:
    offsets: dict[str, int]
    buffers: tuple[Buffer, ...]
    arena_bytes: int
    unshared_bytes: int  # what the buffers would take without reuse

    def as_dict(self) -> dict:
        return {
            "arena_bytes": self.arena_bytes,
            "unshared_bytes": self.unshared_bytes,
            "buffers": [
                {"name": b.name, "offset": self.offsets[b.name], "bytes": b.size, "live": [b.first, b.last]}
                for b in sorted(self.buffers, key=lambda b: (b.first, b.name))
            ],
        }


def _align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def workspace_name(step: int) -> str:
    return f"ws{step}"


def arena_buffers(model: LoweredModel) -> list[Buffer]:
    """Intermediates and per-call workspaces of `model`, with their lifetimes in steps."""
    first: dict[str, int] = {name: -1 for name in model.inputs}
    last: dict[str, int] = {name: -1 for name in model.inputs}
    for step, call in enumerate(model.calls):
        for name in call.outputs:
            first.setdefault(name, step)
            last.setdefault(name, step)
        for name in call.inputs:
            last[name] = step
    for name in model.outputs:
        last[name] = len(model.calls)
    buffers = [
        Buffer(name, model.tensors[name].nbytes, first[name], last[name])
        for name in first
        if model.tensors[name].kind != "const"
    ]
    buffers += [
        Buffer(workspace_name(step), call.workspace_bytes, step, step)
        for step, call in enumerate(model.calls)
        if call.workspace_bytes
    ]
    return buffers


def plan_arena(buffers: list[Buffer]) -> ArenaPlan:
    """Place `buffers` in one arena; deterministic for the same input."""
    placed: list[tuple[int, int, Buffer]] = []  # (offset, end, buffer)
    offsets: dict[str, int] = {}
    for buf in sorted(buffers, key=lambda b: (-b.size, b.first, b.name)):
        size = _align(buf.size)
        conflicts = sorted(
            (off, end) for off, end, other in placed if not (other.last < buf.first or buf.last < other.first)
        )
        offset = 0
        for off, end in conflicts:
            if offset + size <= off:
                break
            offset = max(offset, end)
        placed.append((offset, offset + size, buf))
        offsets[buf.name] = offset
    arena = max((end for _, end, _ in placed), default=0)
    return ArenaPlan(offsets, tuple(buffers), arena, sum(_align(b.size) for b in buffers))
