"""ONNX ModelProto -> LoweredModel: import, fuse, schedule each kernel, emit C."""

from __future__ import annotations

import hashlib
import re
from dataclasses import replace

import numpy as np
import onnx
import tvm
from tvm import relax, tirx
from tvm.ir.expr import GenericConst as _CONST

from edgecomp.codegen.cnames import c_identifier
from edgecomp.errors import ToolError, UnsupportedModelError
from edgecomp.lower.model import Call, LoweredModel, MicroKernel, Tensor
from edgecomp.lower.qops import int_graph_to_relax
from edgecomp.lower.relax_import import fuse, import_and_fuse
from edgecomp.lower.schedule import schedule_for_mcu, tir_macs
from edgecomp.quant.ir import IntGraph

SYMBOL_PREFIX = "ec_"
WORKSPACE_ALIGN = 16

_TVM_PREAMBLE = re.compile(r'^(#define TVM_EXPORTS|#include "tvm/.*")\n', re.M)
_FUNC_DEF = re.compile(
    r"^TVM_DLL int32_t __tvm_ffi_(\w+)\(void\* self_handle, void\* args, int32_t num_args, void\* result\) \{$",
    re.M,
)
# The packed preamble unpacks every tensor's data, shape and strides pointers and the device id
# whether or not the scheduled body uses them (a kernel reading an empty tensor uses none); mark
# them used so the generated C is warning-free under -Wall -Wextra.
_UNPACKED_FIELD = re.compile(
    r"^(\s+)[\w ]+\*? (\w+) = .*\(\(DLTensor\*\)\w+\)\[0\]\.(?:data|shape|strides|device\.device_id)\)+;$",
    re.M,
)
_WS_ALLOC = re.compile(r"TVMBackendAllocWorkspace\(\d+, \w+, \(uint64_t\)(\d+)ULL")


def _lower_fabs(call):
    """T.fabs (TVM's float->int Cast emits it in its finiteness test) as C's fabsf/fabs: TVM's C
    back end has no lowering rule for it."""
    return tirx.call_pure_extern(str(call.ty), "fabsf" if str(call.ty) == "float32" else "fabs", call.args[0])


tirx.register_intrin_lowering("tirx.fabs", target="c", f=_lower_fabs, level=99)


def lower_model(model: onnx.ModelProto | None, graph: IntGraph | None = None, kernels: str = "auto",
                features: frozenset[str] = frozenset(), symbol_prefix: str = SYMBOL_PREFIX,
                narrow: frozenset[str] = frozenset(), optimize: str = "balanced") -> LoweredModel:  # fmt: skip
    """Lower a checked, static-shape model to C kernels plus a call sequence.

    A quantized build passes its integer graph (`graph`, with the I/O it compiles: float edges or
    the integer tensors); `model` (None for a TFLite model) then only gives the input and output
    names, else the graph's own names are used. kernels="auto"
    lets the micro-kernel variants (kernels/) that the target's ISA `features` allow take the ops
    they cover; "tvm" keeps TVM's kernels for every op. `narrow`: layers (by output tensor) whose
    kernels keep int8 weight records (BuildOptions.narrow_records); `optimize`: which weight records
    the others keep (BuildOptions.optimize, kernels.OPTIMIZE). TVM names its kernels
    `__tvm_ffi_<symbol_prefix><kernel>`: a model built with --name has its own namespace
    (codegen/naming.py), so two models' kernels link into one program.
    """
    chosen: dict[str, MicroKernel] = {}
    if graph is not None:
        mod, chosen, sources = int_graph_to_relax(graph, features if kernels == "auto" else None, narrow, optimize)
        mod, sources = fuse(mod, sources)
    else:
        renamed, original = with_c_names(model)
        mod, sources, chosen = import_and_fuse(renamed, features if kernels == "auto" else None)
        sources = {var: original.get(name, name) for var, name in sources.items()}
    if model is not None:
        inits = {i.name for i in model.graph.initializer}
        names = ([i.name for i in model.graph.input if i.name not in inits], [o.name for o in model.graph.output])
    else:
        names = (list(graph.inputs), list(graph.outputs))
    tensors, all_calls, inputs, outputs, copies, computes = _walk_main(mod, *names, sources)
    micro = {**chosen, **copies}
    # Kernels specialised identically (the patches of patch-based execution, repeated blocks) are one.
    first: dict[tuple, str] = {}
    same = {sym: first.setdefault((k.template, k.params, k.scratch_bytes, k.inplace), sym) for sym, k in micro.items()}
    all_calls = [replace(c, kernel=same.get(c.kernel, c.kernel)) for c in all_calls]
    # A call whose outputs are all empty (a zero-size Slice...) has nothing to do.
    all_calls = [c for c in all_calls if any(tensors[o].size for o in c.outputs)]
    micro_calls = {i: micro[c.kernel] for i, c in enumerate(all_calls) if c.kernel in micro}
    calls = [c for c in all_calls if c.kernel not in micro]
    kernel_names = sorted({c.kernel for c in calls})
    funcs = {}
    macs = {}
    for name in kernel_names:
        func = mod[name]
        macs[name] = tir_macs(func)
        funcs[symbol_prefix + name] = schedule_for_mcu(func, vector="neon" in features).with_attr(
            "global_symbol", symbol_prefix + name
        )
    source = _emit_c(tvm.IRModule(funcs))
    workspace = _workspace_per_function(source)
    calls = tuple(
        Call(c.kernel, c.kernel, c.inputs, c.outputs, micro_calls[i].scratch_bytes, micro_calls[i].macs,
             micro_calls[i])
        if i in micro_calls
        else Call(
            kernel=c.kernel,
            symbol=f"__tvm_ffi_{symbol_prefix}{c.kernel}",
            inputs=c.inputs,
            outputs=c.outputs,
            workspace_bytes=workspace.get(symbol_prefix + c.kernel, 0),
            macs=macs[c.kernel],
        )
        for i, c in enumerate(all_calls)
    )  # fmt: skip
    qparams = {}
    if graph is not None:
        for onnx_name, int_name in zip(inputs + outputs, graph.inputs + graph.outputs, strict=True):
            t = graph.tensors[int_name]
            if t.dtype != "float32":
                qparams[onnx_name] = (t.scale, t.zero_point)
    return LoweredModel(kernels_c=source, tensors=tensors, calls=calls, inputs=inputs, outputs=outputs,
                        qparams=qparams, sources=computes)  # fmt: skip


def with_c_names(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, str]]:
    """A copy of `model` whose every tensor name is a valid, unique C identifier (c_identifier),
    and the original name of each (by new name).

    TVM names the parameters and locals of the C it generates after the Relax variables, that is
    after the ONNX names ('gpu_0/data_0' gave `void* gpu_0/data_0 = ...`). The call sequence keeps
    the model's own names for its inputs and outputs (lower_model passes them to _walk_main), so
    report.json and model.h show those; model.c names them through c_identifier and c_string."""
    used: set[str] = set()
    rename: dict[str, str] = {}

    def safe(name: str) -> str:
        if name and name not in rename:
            rename[name] = c_identifier(name, used)
        return rename.get(name, name)

    model = onnx.ModelProto.FromString(model.SerializeToString())
    _rename_graph(model.graph, safe)
    return model, {new: old for old, new in rename.items()}


def _rename_graph(graph: onnx.GraphProto, safe) -> None:
    """Apply `safe` to every tensor name of `graph` and of its nodes' subgraphs."""
    for v in [*graph.input, *graph.output, *graph.value_info, *graph.initializer]:
        v.name = safe(v.name)
    for node in graph.node:
        for i, name in enumerate(node.input):
            node.input[i] = safe(name)
        for i, name in enumerate(node.output):
            node.output[i] = safe(name)
        for attr in node.attribute:
            for g in [attr.g] if attr.HasField("g") else list(attr.graphs):
                _rename_graph(g, safe)


def _emit_c(mod: tvm.IRModule) -> str:
    try:
        with tvm.transform.PassContext(opt_level=3, config={"tirx.disable_assert": True}):
            lib = tvm.tirx.build(mod, target="c")
    except Exception as exc:
        raise ToolError(f"TVM failed to generate C: {str(exc).strip().splitlines()[-1][:300]}") from exc
    source = _TVM_PREAMBLE.sub("", lib.inspect_source())
    source = _UNPACKED_FIELD.sub(lambda m: f"{m.group(0)} (void){m.group(2)};", source)
    # The packed signature's bookkeeping parameters are unused in kernels that need no workspace.
    return _FUNC_DEF.sub(
        lambda m: m.group(0) + "\n  (void)self_handle; (void)args; (void)num_args; (void)result;", source
    )


def _workspace_per_function(source: str) -> dict[str, int]:
    """Bytes of TVMBackendAllocWorkspace scratch each function holds at its peak.

    TVM allocates a function's workspace buffers at entry and frees them in reverse order at exit,
    so the peak is the sum of its requests, each rounded up to the allocator's alignment.
    """
    result: dict[str, int] = {}
    matches = list(_FUNC_DEF.finditer(source))
    for i, m in enumerate(matches):
        body = source[m.end() : matches[i + 1].start() if i + 1 < len(matches) else len(source)]
        sizes = [int(s) for s in _WS_ALLOC.findall(body)]
        result[m.group(1)] = sum(-(-s // WORKSPACE_ALIGN) * WORKSPACE_ALIGN for s in sizes)
    return result


def _sinfo_tensors(sinfo) -> list[tuple[tuple[int, ...], str]]:
    """(shape, dtype) of each tensor in a Relax type (a tensor, or a tuple of them)."""
    if isinstance(sinfo, relax.TupleType):
        return [t for f in sinfo.fields for t in _sinfo_tensors(f)]
    if not isinstance(sinfo, relax.TensorType) or sinfo.shape is None:
        raise UnsupportedModelError(f"after lowering, a value has no static tensor shape: {sinfo}")
    try:
        shape = tuple(int(v) for v in sinfo.shape.values)
    except (TypeError, AttributeError) as exc:
        raise UnsupportedModelError(f"after lowering, a tensor has a symbolic shape: {sinfo.shape}") from exc
    return [(shape, str(sinfo.dtype))]


def _walk_main(mod: tvm.IRModule, onnx_inputs: list[str], onnx_outputs: list[str], sources: dict):
    """Turn Relax main's dataflow into tensors and a call sequence (model inputs and outputs named
    `onnx_inputs`, `onnx_outputs`), and the model tensor each intermediate holds (from `sources`,
    by binding variable)."""
    main = mod["main"]
    tensors: dict[str, Tensor] = {}
    env: dict = {}  # relax Var -> list of tensor names (several for a tuple)
    if len(onnx_inputs) != len(main.params):
        raise UnsupportedModelError(
            f"TVM's import has {len(main.params)} inputs but the model has {len(onnx_inputs)}"
        )
    inputs = []
    copies: dict[str, MicroKernel] = {}
    for param, name in zip(main.params, onnx_inputs, strict=True):
        ((shape, dtype),) = _sinfo_tensors(param.ty)
        tensors[name] = Tensor(name, shape, dtype, "input")
        env[param] = [name]
        inputs.append(name)

    consts: dict = {}
    io_names = set(onnx_inputs) | set(onnx_outputs)

    def fresh(prefix: str, k: int) -> str:
        """t<k> / c<k>, unless the model names an input or output so (then a suffix)."""
        name = f"{prefix}{k}"
        while name in io_names or name in tensors:
            name += "_"
        return name

    by_content: dict[tuple, str] = {}  # equal constants are stored once

    def arg_names(expr) -> list[str]:
        if isinstance(expr, _CONST):
            if expr not in consts:
                data = np.ascontiguousarray(expr.value.numpy())
                key = (str(data.dtype), data.shape, hashlib.sha256(data.tobytes()).digest())
                if key not in by_content:
                    name = fresh("c", len(by_content))
                    by_content[key] = name
                    tensors[name] = Tensor(name, tuple(data.shape), str(data.dtype), "const", data)
                consts[expr] = by_content[key]
            return [consts[expr]]
        if isinstance(expr, relax.Var) and expr in env:
            return env[expr]
        raise UnsupportedModelError(f"after lowering, an argument is not a tensor: {expr}")

    calls: list[Call] = []
    computes: dict[str, str] = {}
    body = main.body
    for block in body.blocks:
        for binding in block.bindings:
            value = binding.value
            if isinstance(value, relax.Call) and (
                value.op.same_as(tvm.ir.Op.get("relax.call_tir"))
                or value.op.same_as(tvm.ir.Op.get("relax.call_dps_packed"))
            ):
                callee = value.args[0]
                kernel = callee.global_symbol if isinstance(callee, relax.ExternFunc) else callee.name_hint
                if len(value.args) > 2:
                    raise UnsupportedModelError(f"kernel {kernel} needs symbolic shape arguments")
                ins = [n for a in value.args[1].fields for n in arg_names(a)]
                outs = []
                for shape, dtype in _sinfo_tensors(value.ty_args[0]):
                    name = fresh("t", len([t for t in tensors.values() if t.kind == "intermediate"]))
                    tensors[name] = Tensor(name, shape, dtype, "intermediate")
                    outs.append(name)
                env[binding.var] = outs
                calls.append(Call(kernel, "", tuple(ins), tuple(outs), 0, 0))
                if len(outs) == 1 and binding.var in sources:
                    computes[outs[0]] = sources[binding.var]
            elif isinstance(value, relax.TupleGetItem):
                env[binding.var] = [arg_names(value.tuple_value)[value.index]]
                if binding.var in sources:
                    computes.setdefault(env[binding.var][0], sources[binding.var])
            elif isinstance(value, relax.Var | _CONST):
                env[binding.var] = arg_names(value)
            elif isinstance(value, relax.Tuple):
                env[binding.var] = [n for f in value.fields for n in arg_names(f)]
            else:
                op = getattr(getattr(value, "op", None), "name", type(value).__name__)
                raise UnsupportedModelError(
                    f"after lowering, '{op}' is not a TIR kernel call; cannot compile it"
                )
    result = body.body
    out_names = [
        n for f in (result.fields if isinstance(result, relax.Tuple) else [result]) for n in arg_names(f)
    ]
    if len(out_names) != len(onnx_outputs):
        raise UnsupportedModelError(
            f"TVM's import has {len(out_names)} outputs but the model has {len(onnx_outputs)}"
        )
    # Rename the tensors that are model outputs to the ONNX output names. An output that is an
    # input, a constant or another output (an identity op, folded away) gets a copy kernel.
    rename = {}
    for internal, name in zip(out_names, onnx_outputs, strict=True):
        t = tensors[internal]
        if t.kind != "intermediate" or internal in rename:
            kernel = f"{SYMBOL_PREFIX}copy_{len(copies)}"
            copies[kernel] = MicroKernel(kernel, "kernels/copy.c.j2", (("bytes", t.nbytes),), 0, 0)
            copy = fresh("t", len([t for t in tensors.values() if t.kind == "intermediate"]))
            tensors[copy] = Tensor(copy, t.shape, t.dtype, "intermediate")
            calls.append(Call(kernel, "", (internal,), (copy,), 0, 0))
            internal = copy
        rename[internal] = name
    tensors = {
        rename.get(k, k): (Tensor(rename[k], t.shape, t.dtype, "output") if k in rename else t)
        for k, t in tensors.items()
    }
    calls = [
        Call(
            c.kernel,
            c.symbol,
            tuple(rename.get(n, n) for n in c.inputs),
            tuple(rename.get(n, n) for n in c.outputs),
            0,
            0,
        )
        for c in calls
    ]
    computes = {rename.get(k, k): v for k, v in computes.items()}
    return tensors, calls, tuple(inputs), tuple(onnx_outputs), copies, computes
