"""Static memory planning: every intermediate tensor and kernel scratch buffer gets an arena offset.

A buffer lives from the step that writes it to the last step that reads it (inclusive), so a
kernel's outputs never overlap its own inputs. Model inputs live in the arena too (written before
step 0, dead after their last reader, as in TFLite Micro), and model outputs stay live to the end. Buffers are placed largest first at the lowest
offset that does not collide with an already placed buffer whose lifetime overlaps (the greedy
by-size strategy TFLite Micro's GreedyMemoryPlanner uses).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from edgecomp.lower.model import LoweredModel
from edgecomp.targets import Target

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
    aliases: dict[str, str] = field(default_factory=dict)  # in-place outputs -> the buffer they share

    def as_dict(self) -> dict:
        return {
            "arena_bytes": self.arena_bytes,
            "unshared_bytes": self.unshared_bytes,
            "buffers": [
                {"name": b.name, "offset": self.offsets[b.name], "bytes": b.size, "live": [b.first, b.last]}
                for b in sorted(self.buffers, key=lambda b: (b.first, b.name))
            ]
            + [
                {"name": out, "offset": self.offsets[out], "in_place_of": root}
                for out, root in self.aliases.items()
            ],
        }


def _align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def workspace_name(step: int) -> str:
    return f"ws{step}"


def plan_model(model: LoweredModel) -> ArenaPlan:
    """The arena plan of `model`: its buffers placed, in-place outputs sharing their input's offset.
    An output much smaller than the input it could overlay (a stride-2 depthwise layer's) keeps that
    input's whole buffer alive as long as it lives, which can raise a later peak: the plan is made
    with and without those aliases, and the smaller arena kept (the first on a tie)."""
    plans = [plan_arena(*arena_buffers(model, shrinking)) for shrinking in SHRINKING_ALIASES]
    return min(plans, key=lambda p: p.arena_bytes)


# The plans plan_model compares: with the aliases of outputs at most half their input's size, without.
SHRINKING_ALIASES = (True, False)


def arena_buffers(model: LoweredModel, shrinking: bool = True) -> tuple[list[Buffer], dict[str, str]]:
    """Intermediates and per-call workspaces of `model` with their lifetimes in steps, and the
    outputs that share an input's buffer (see _inplace_aliases; `shrinking` False: not those at most
    half their input's size)."""
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
    alias = _inplace_aliases(model, last, shrinking)
    for out, root in alias.items():  # the root's buffer lives on as the output
        last[root] = max(last[root], last[out])
    buffers = [
        Buffer(name, model.tensors[name].nbytes, first[name], last[name])
        for name in first
        if model.tensors[name].kind != "const" and name not in alias
    ]
    buffers += [
        Buffer(workspace_name(step), call.workspace_bytes, step, step)
        for step, call in enumerate(model.calls)
        if call.workspace_bytes
    ]
    return buffers, alias


def _inplace_aliases(model: LoweredModel, last: dict[str, int], shrinking: bool = True) -> dict[str, str]:
    """Outputs that take over an input's buffer: a kernel that allows it (inplace: elementwise
    kernels, pointwise and depthwise convolutions that write each output after reading what it
    overlays), an input at least as large that this step reads for the last time and that is an
    intermediate (model inputs stay intact for another model_invoke). Maps output -> the buffer it
    shares."""
    alias: dict[str, str] = {}
    for step, call in enumerate(model.calls):
        if call.micro is None or len(call.outputs) != 1:
            continue
        out = call.outputs[0]
        for i in call.micro.inplace:
            src = call.inputs[i]
            t = model.tensors[src]
            shared = call.inputs.count(src) == 1  # read through no other argument
            if (
                t.kind == "intermediate"
                and shared
                and last[src] == step
                and model.tensors[out].nbytes <= t.nbytes
                and (shrinking or 2 * model.tensors[out].nbytes > t.nbytes)
            ):
                alias[out] = alias.get(src, src)
                break
    return alias


def plan_arena(buffers: list[Buffer], alias: dict[str, str] | None = None) -> ArenaPlan:
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
    for out, root in (alias or {}).items():
        offsets[out] = offsets[root]
    arena = max((end for _, end, _ in placed), default=0)
    return ArenaPlan(offsets, tuple(buffers), arena, sum(_align(b.size) for b in buffers), dict(alias or {}))


# Internal flash kept for code, vectors and small constants when weights go to external flash;
# internal RAM kept for .data/.bss other than the arena when the arena goes to external RAM.
CODE_RESERVE_BYTES = 256 * 1024
RAM_RESERVE_BYTES = 16 * 1024


def place_external(target: Target, weights_bytes: int, arena_bytes: int) -> tuple[bool, bool]:
    """(weights in external flash, arena in external RAM) for a target that declares external
    memory: each only when it would not fit the chip (its budget less a reserve), so a model that
    fits keeps the faster internal memories."""
    if not target.external:
        return False, False
    flash, ram, stack = target.flash_budget, target.ram_budget, target.memory.get("stack_bytes", 0)
    weights_out = bool(flash) and weights_bytes > flash - CODE_RESERVE_BYTES
    arena_out = bool(ram) and arena_bytes + stack > ram - RAM_RESERVE_BYTES
    return weights_out, arena_out
