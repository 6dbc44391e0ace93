"""Kernel sources of a cell (Cython kernel, NumPy reference): the lowered kernel in syntax.

`sources(d)` maps a file name inside generated/<cell>/ to its text; `derive generate`
writes whatever it returns beside the documents. The plan (`derive.kernel.plan`) decides
what is computed, stored and fused, the lowering (`derive.kernel.lower`) which function
gets which array; this module only maps both to syntax, with the printers of
`derive.printing.code`:

* Cython: symbols read through row pointers (`c_prev[_j]`), arrays the step writes in
  place (`_C_c[_o + _j]`); numbers cast to the C type (`<float>0.5`), functions the
  inline helpers of templates/support/kernel.pyx (`_tanh` → tanhf/tanh).
* NumPy: the same programs over whole (B, N) arrays.

Terms are printed in the order their names take in the equation above them (the spec's
order for the forward). The static parts of a kernel (element-wise functions, BLAS,
the register-blocked small product, argument checks) are the checked-in support files
templates/support/*, inlined into every kernel.
"""

from __future__ import annotations

import pprint
import re

import sympy as sp

from derive.files import template_dir
from derive.kernel.abi import KERNEL_API
from derive.kernel.lower import (
    ENTRY_ARRAYS,
    FINISH_PARTS,
    FINISH_ROWS,
    TILES,
    Call,
    Kernel,
    Phase,
    Place,
    Pointer,
    StepFunction,
    Task,
    lower,
    stepped_input_gradients,
)
from derive.kernel.plan import Kind, Plan, Program, Role, Storage
from derive.kernel.plan import plan as make_plan
from derive.printing.code import CythonPrinter, NumpyPrinter, ordered
from derive.printing.templates import environment, header_lines

#: the support files inlined into every kernel module (templates/support/)
SUPPORT = ("kernel.pyx", "small_gemm.h", "row_means.h")


def support_text(name: str) -> str:
    return (template_dir() / "support" / name).read_text("utf-8").rstrip("\n")


# --- shared: docstring, layout, term order ----------------------------------------------

def _layout_text(p: Plan) -> str:
    return pprint.pformat(p.layout(), width=92, sort_dicts=False)


def _docstring(p: Plan) -> list[str]:
    cell = p.cell
    lines = [f"{cell.title} ({cell.name}): forward and backward (BPTT) kernels.", ""]
    lines.append("Forward, one step (the spec):")
    lines += [f"    {n}[t] = {node.text}" for n, node in cell.nodes.items()]
    lines += ["", "Backward, one step (derived; deltas at t+1 arrive through the carries):"]
    lines += [f"    {p.equations['d' + n]}" for n in cell.nodes if "d" + n in p.equations]
    return lines


def _notation(p: Plan, sym: sp.Symbol) -> str:
    """The name a program symbol has in the equations (W_z for W_z @ x, dc for δc)."""
    ref = p.refs[sym]
    if ref.kind is Kind.PROJECTION:
        return p.operand(ref.name).blocks[ref.block].matrix
    if ref.kind is Kind.DELTA:
        return "d" + ref.name
    if ref.kind is Kind.INCOMING:
        return "Delta"
    if ref.kind is Kind.AUX:
        return type(next(s.expr for s in p.stored if s.symbol == sym)).__name__
    return ref.name


def _ranks(p: Plan, program: Program) -> list[dict]:
    """For each statement, the rank of each symbol: where its name first appears in the
    right side of the statement's equation (a temporary ranks as its first symbol)."""
    out, temps = [], {}
    for st in program.statements:
        words = re.findall(r"[A-Za-z_][A-Za-z0-9_]*", st.comment.split("=", 1)[-1])
        rank = {}
        for sym in st.expr.free_symbols:
            if sym in temps:
                rank[sym] = temps[sym]
            elif p.refs[sym].kind is not Kind.TEMP and _notation(p, sym) in words:
                rank[sym] = words.index(_notation(p, sym))
        out.append(rank)
        if not st.comment:      # a CSE temporary: ranked by its own first symbol
            temps[st.target] = min(rank.values(), default=len(words) + 1000)
    return out


def _statements(p: Plan, program: Program, printer) -> list[dict]:
    return [{"target": st.target.name, "code": printer.doprint(ordered(st.expr, rank)),
             "comment": st.comment}
            for st, rank in zip(program.statements, _ranks(p, program))]


# --- Cython -----------------------------------------------------------------------------

def _pointer(ptr: Pointer, ctype: str) -> str:
    base = "part" if ptr.partial else f"<{ctype}*>p.{ptr.field}"
    at = f"{base} + {ptr.offset}" if ptr.offset else base
    return f"({at} if p.{ptr.field} != NULL else NULL)" if ptr.optional else at


def _call(call: Call, ctype: str, suffix: str) -> str:
    name = f"{call.function}_{suffix}" if call.typed else call.function
    args = [_pointer(a, ctype) if isinstance(a, Pointer) else a for a in call.args]
    return f"{name}({', '.join(args)})"


def _task(task: Task, ctype: str, suffix: str) -> dict:
    return {"rows": task.rows, "call": _call(task.call, ctype, suffix),
            "comment": task.comment}


def _element(place: Place) -> str:
    """Element _j of a place's row, through the step function's parameter."""
    b = place.param.buffer
    if not b.rows:
        return f"_{place.param.name}[_j]"
    row = "_o" if b.blocks == 1 else f"_b * {b.blocks} * N"
    block = f" + {place.block} * N" if place.block > 1 else " + N" if place.block else ""
    return f"_{place.param.name}[{row}{block} + _j]"


def _row_pointer(place: Place) -> str:
    b = place.param.buffer
    row = "_b * N" if b.blocks == 1 else f"_b * {b.blocks} * N"
    block = f" + {place.block} * N" if place.block > 1 else " + N" if place.block else ""
    return f"_{place.param.name} + {row}{block}"


def _step(p: Plan, f: StepFunction, ctype: str, suffix: str) -> dict:
    """One step function for one C type: signature, call, row pointers, the row means it
    reads (a scalar per row), body."""
    rows = f.rows
    reads = {s: f"{s.name}[_j]" for s, _ in rows}
    reads.update({s: s.name for s, _ in f.scalars})
    reads.update({s: _element(pl) for s, pl in f.reads.items() if s not in reads})
    printer = CythonPrinter(reads, ctype)
    writes = []
    for w, place in zip(f.program.writes, f.writes):
        op = "+=" if w.accumulates else "="
        code = f"{_element(place)} {op} {printer.doprint(w.value)}"
        if place.param.argument.optional:      # NULL: nobody wants this input gradient
            code = f"if _{place.param.name} != NULL: {code}"
        writes.append(code)
    return {
        "name": f"_{f.name}_step_{suffix}",
        "size": f.size,
        "params": [f"{ctype}_rp _{q.name}" for q in f.params],
        "arguments": [f"_{q.name}={_pointer(q.argument, ctype)}" for q in f.params],
        "rows": [(s.name, _row_pointer(pl)) for s, pl in rows],
        "scalars": [(s.name, f"_{pl.param.name}[_b]") for s, pl in f.scalars],
        "locals": [s.name for s in f.locals],
        "statements": _statements(p, f.program, printer),
        "writes": writes,
    }


def _phase(p: Plan, phase: Phase, ctype: str, suffix: str) -> dict:
    """One phase for one C type: the products before it, its step function."""
    return {"calls": [(_call(c, ctype, suffix), c.comment) for c in phase.calls],
            "step": _step(p, phase.step, ctype, suffix)}


def _dims(n: int) -> str:
    return ", ".join([":"] * (n - 1) + ["::1"])


def _entry(p: Plan, entry: str) -> dict:
    """The arrays of forward() or backward(): checks, typed views, struct fields."""
    arguments, written = ENTRY_ARRAYS[entry]
    checks, views = [], []
    for storage in arguments:
        arrays = p.arrays(storage)
        shapes = ", ".join(f"({', '.join(b.shape)}{',' if len(b.shape) == 1 else ''})"
                           for b in arrays)
        checks.append(f'_check("{storage.argument}", {storage.argument}, [{shapes}])')
        const = "" if storage in written else "const "
        for b in arrays:
            views.append({"field": b.field, "comment": b.name,
                          "view": f"{const}floating[{_dims(len(b.shape))}]",
                          "source": f"{storage.argument}[{b.index}]",
                          "first": ", ".join(["0"] * len(b.shape)),
                          "wanted": (_wanted(("dX", b.index))
                                     if storage is Storage.INPUT_GRADIENT else "")})
    return {"checks": checks, "views": views}


def _wanted(gradient: tuple[str, int]) -> str:
    """The backward's flag for a product after the loop (see the template's docstring)."""
    kind, k = gradient
    return f"want_{kind} is None or want_{kind}[{k}]"


def _carry_check(p: Plan) -> str:
    """The check of C_in, the carries' initial values: one (B, N) array per carry."""
    shapes = ", ".join(f"({', '.join(b.shape)})" for b in p.arrays(Storage.CARRY))
    return f'_check("C_in", C_in, [{shapes}])'


def _second(p: Plan) -> dict | None:
    """For a cell with a second node size P: the states a call reads N and P from."""
    sizes = [b.size for b in p.arrays(Storage.STATE)]
    if "P" not in sizes:
        return None
    return {"n": sizes.index("N"), "p": sizes.index("P")}


def _widths(p: Plan) -> list[tuple[str, int]]:
    """The sizes of the inputs of size M (M, or M_<input> each), with their input's
    index: a call reads them from the inputs' arrays."""
    return [(p.input_size(x), k) for k, x in enumerate(p.inputs)
            if p.input_size(x) not in ("N", "P")]


def _sizes_of_call(p: Plan) -> list[str]:
    """The sizes of a call, in the order of the struct of the arrays: T, B, M…, N(, P)."""
    return ["T", "B", *(w for w, _ in _widths(p)), "N"] + (["P"] if _second(p) else [])


def _reduction_scratch(p: Plan, backward: bool) -> list[tuple[str, str, str]]:
    """The scratch of one pass's reductions: (field, elements, what) per array."""
    out = []
    for r in p.reductions:
        if r.backward == backward:
            out += [(p.buffer(Storage.REDUCED, r.name).field, f"B * {r.size}",
                     f"the values {r.mean.name} averages, per row"),
                    (p.buffer(Storage.MEANS, r.name).field, "B", f"{r.mean.name}, per row")]
    return out


def kernel_context(p: Plan) -> dict:
    """Everything templates/kernel.pyx.j2 lays out, as plain strings and lists."""
    k: Kernel = lower(p)
    per_type = []
    for tiles in TILES:
        ct, sx = tiles[0].ctype, tiles[0].suffix
        per_type.append({
            "ctype": ct, "suffix": sx,
            "forward": [_phase(p, ph, ct, sx) for ph in k.forward],
            "backward": [_phase(p, ph, ct, sx) for ph in k.backward],
            "prepare": [_task(t, ct, sx) for t in k.prepare],
            "pack_forward": [_call(c, ct, sx) for c in k.pack_forward],
            "pack_backward": [_call(c, ct, sx) for c in k.pack_backward],
            "per_step_backward": [(_call(c, ct, sx), c.comment) for c in k.per_step_backward],
            "finish": [_task(t, ct, sx) for t in k.finish],
        })
    fields = [(b.field, b.storage.name.lower().replace("_", " ") + f" {b.name}")
              for b in p.buffers] + [(f, "packed panels (per-step products)")
                                     for f, _, _ in k.panels_forward]
    return {
        "header_doc": _docstring(p), "kernel_api": KERNEL_API, "layout": _layout_text(p),
        "support": support_text("kernel.pyx"), "small_gemm": support_text("small_gemm.h"),
        "tiles": TILES, "types": per_type, "fields": fields,
        "forward": _entry(p, "forward"), "backward": _entry(p, "backward"),
        "panels_forward": k.panels_forward, "panels_backward": k.panels_backward,
        "scratch": [(b.field, b.size) for b in p.arrays(Storage.ADJOINT)],
        "scratch_forward": _reduction_scratch(p, False),
        "scratch_backward": _reduction_scratch(p, True),
        "row_means": support_text("row_means.h") if p.reductions else "",
        "second": _second(p),
        "accumulators": [(b.field, "parts" + {0: "", 1: " + N"}.get(b.index, f" + {b.index} * N"))
                         for b in p.arrays(Storage.ACCUMULATOR)],
        "carries": [b.field for b in p.arrays(Storage.CARRY)],
        "vectors": len(p.vectors), "finish_tasks": len(k.finish),
        "finish_parts": FINISH_PARTS, "finish_rows": FINISH_ROWS,
        "finish_wanted": [(_wanted(t.gradient), t.rows) for t in k.finish],
        "carry_check": _carry_check(p), "weights": len(p.operands),
        "max_k": max((o.k for o in p.operands), default=1), "phases": p.phases,
        "backward_phases": len(p.backward),
        "sizes": _sizes_of_call(p), "widths": _widths(p), "inputs": len(p.inputs),
        "unpack": ", ".join(f"{d} = p.{d}" for d in ["N", *(w for w, _ in _widths(p)),
                                                     "T", "B"] + (["P"] if _second(p) else [])),
    }


# --- NumPy ------------------------------------------------------------------------------

def _numpy_place(place: Place) -> str:
    """A place as a whole-batch NumPy array expression."""
    b, step = place.param.buffer, place.param.step
    name = f"_{b.field}"
    if b.storage is Storage.STATE:
        name += "[t]" if step.value == "t-1" else "[t + 1]"
    elif b.per_step:
        name += "[t]"
    if b.storage is Storage.DELTAS or (b.storage is Storage.PROJECTION):
        k, n = place.block, b.size
        start = {0: "", 1: n}.get(k, f"{k} * {n}")
        name += f"[:, {start}:{n if k == 0 else f'{k + 1} * {n}'}]"
    return name


def _numpy_program(p: Plan, f: StepFunction) -> dict:
    printer = NumpyPrinter()
    setup = [(s.name, _numpy_place(pl)) for s, pl in sorted(f.reads.items(),
                                                              key=lambda kv: kv[0].name)]
    writes = []
    for w, place in zip(f.program.writes, f.writes):
        value = printer.doprint(w.value)
        if w.accumulates:
            writes.append(f"_{w.buffer.field} += _batch_sum({value}, B)")
        elif w.buffer.storage is Storage.CARRY:
            writes.append(f"_{w.buffer.field}[...] = {value}")
        elif w.buffer.storage is Storage.INPUT_GRADIENT:
            writes.append(f"if want_dX[{w.buffer.index}]: "
                          f"{_numpy_place(place)} = {value}")
        else:
            writes.append(f"{_numpy_place(place)} = {value}")
    return {"setup": setup, "statements": _statements(p, f.program, printer),
            "writes": writes}


def _entry_arrays(p: Plan, entry: str) -> list[tuple]:
    return [(b.field, b.storage.argument, b.index, b.name) for storage in ENTRY_ARRAYS[entry][0]
            for b in p.arrays(storage)]


def _numpy_phases(p: Plan, phases: tuple[Phase, ...], forward: bool) -> list[dict]:
    """Each phase of one pass as the reference template lays it out: its program and
    the products before it."""
    return [dict(_numpy_program(p, ph.step), products=products)
            for ph, products in zip(phases, _numpy_products(p, phases, forward))]


def _numpy_products(p: Plan, phases: tuple[Phase, ...], forward: bool) -> list[list]:
    """The products before each phase as NumPy lines: (comment, code) per call."""
    dG = {g.index: p.buffer(Storage.DELTAS, " ".join(g.nodes)).field for g in p.groups}
    out = []
    for phase in phases:
        lines = []
        for o, call in zip(phase.operands, phase.calls):
            if not forward:
                code = f"np.matmul(_{dG[o.group]}[t], _W_{o.name}, out=_D_{o.name})"
            elif o.role is Role.STATE:
                code = f"np.matmul(_S_{o.name}[t], _W_{o.name}.T, out=_G_{o.name})"
            else:
                values = (f"_S_{o.name}[t + 1]" if o.name in p.states else f"_A_{o.name}[t]")
                code = f"np.matmul({values}, _W_{o.name}.T, out=_G_{o.name})"
            lines.append((call.comment, code))
        for r, call in zip(phase.reductions, phase.calls[len(phase.calls)
                                                         - len(phase.reductions):]):
            lines.append((call.comment, f"_R_{r.name} = np.mean(_E_{r.name}, axis=-1, "
                                        f"keepdims=True)"))
        out.append(lines)
    return out


def reference_context(p: Plan) -> dict:
    """Everything templates/reference.py.j2 lays out."""
    k = lower(p)
    dG = {g.index: p.buffer(Storage.DELTAS, " ".join(g.nodes)).field for g in p.groups}
    recurrent = []
    for o, call in zip(k.state_operands, k.per_step_backward):
        product = f"_{dG[o.group]}[t] @ _W_{o.name}"
        recurrent.append({
            "name": o.name, "nodes": " ".join(o.nodes), "matrices": " ".join(o.matrices),
            "comment": call.comment,
            "carry": (f"_C_{o.name} += {product}" if o.name in p.carried else
                      f"np.matmul(_{dG[o.group]}[t], _W_{o.name}, out=_C_{o.name})")})
    weights, inputs = [], []
    stepped = stepped_input_gradients(p)
    for o in p.operands:
        if o.role is Role.INPUT:
            X = p.buffer(Storage.INPUT, o.name)
            values = f"_{X.field}.reshape(T * B, {o.size})"
            width, dX = f"{o.k} * {o.rows}", f"_d{X.field}"
            product = f"_{dG[o.group]}.reshape(T * B, {width}) @ _W_{o.name}"
            inputs.append({
                "index": X.index,
                "projection": f"np.matmul({values}, _W_{o.name}.T, out=_G_{o.name}"
                              f".reshape(T * B, {width}))",
                "gradient": (f"{dX} += ({product}).reshape(T, B, {o.size})"
                             if o.name in stepped else
                             f"np.matmul({product.split(' @ ')[0]}, _W_{o.name}, "
                             f"out={dX}.reshape(T * B, {o.size}))")})
        elif o.role is Role.STATE:
            values = f"_S_{o.name}[:T].reshape(T * B, {o.size})"
        else:
            values = (f"_S_{o.name}[1:].reshape(T * B, {o.size})" if o.name in p.states
                      else f"_A_{o.name}.reshape(T * B, {o.size})")
        weights.append({"name": o.name, "width": f"{o.k} * {o.rows}", "dG": dG[o.group],
                        "operand_values": values})
    return {
        "doc": _docstring(p), "kernel_api": KERNEL_API, "layout": _layout_text(p),
        "forward_arrays": _entry_arrays(p, "forward"),
        "backward_arrays": _entry_arrays(p, "backward"),
        "accumulators": [b.field for b in p.arrays(Storage.ACCUMULATOR)],
        "carries": [b.field for b in p.arrays(Storage.CARRY)],
        "scratch": [(b.field, b.size) for b in p.arrays(Storage.ADJOINT)],
        "second": _second(p), "widths": _widths(p), "inputs": inputs,
        "recurrent": recurrent, "weights": weights,
        "forward": _numpy_phases(p, k.forward, True),
        "backward": _numpy_phases(p, k.backward, False),
    }


# --- the sources ------------------------------------------------------------------------

def _render(p: Plan, template: str, context: dict) -> str:
    context = dict(context, header=header_lines(p.cell, template))
    return environment().get_template(template).render(**context)


def sources(d) -> dict[str, str]:
    """{"kernel.pyx": ..., "reference.py": ...} for the derivation `d`."""
    p = make_plan(d)
    return {"kernel.pyx": _render(p, "kernel.pyx.j2", kernel_context(p)),
            "reference.py": _render(p, "reference.py.j2", reference_context(p))}


def kernel_source(d) -> str:
    """The Cython source of a cell's kernel (a derivation, cell name or spec path)."""
    p = make_plan(d)
    return _render(p, "kernel.pyx.j2", kernel_context(p))


def reference_source(d) -> str:
    """The NumPy reference module of a cell."""
    p = make_plan(d)
    return _render(p, "reference.py.j2", reference_context(p))
