"""Kernel sources of a cell (Cython kernel, NumPy reference), rendered from its plan.

`sources(d)` maps a file name inside generated/<cell>/ to its text; `derive generate`
writes whatever it returns beside the documents. The plan (`derive.kernel.plan`) decides
what is computed, stored and fused; this module only prints it:

* `CythonPrinter` — SymPy's C99 printer adapted to the Cython loop bodies: symbols are
  the plan's identifiers, read as `ptr[_j]` through row pointers; numbers are cast to
  the fused type (`<floating>0.5`, so float32 stays float32 and vectorizes); functions
  are fused inline helpers (`_tanh` → tanhf/tanh) that gcc vectorizes with libmvec.
* `NumpyPrinter` — the same expressions over whole (B, N) arrays.

Both modules carry the plan's layout as a constant (`LAYOUT`), so loading a built
kernel needs neither SymPy nor the derivation.
"""


from __future__ import annotations

import pprint

import sympy as sp

from derive.kernel.abi import (
    KERNEL_API,  # the calling convention between modules and runtime
)
from derive.kernel.plan import Plan, Program
from derive.kernel.plan import plan as make_plan
from derive.printing.code import CTYPES, CythonPrinter, NumpyPrinter
from derive.printing.templates import environment, header_lines

# --- what the templates receive ----------------------------------------------------------

def _size(plan: Plan, size: str) -> str:
    return "M" if size == "M" else "N"


def _layout_text(p: Plan) -> str:
    return pprint.pformat(p.layout(), width=92, sort_dicts=False)


def _docstring(p: Plan) -> list[str]:
    cell = p.cell
    lines = [f"{cell.title} ({cell.name}): forward and backward (BPTT) kernels.", ""]
    lines.append("Forward, one step (the spec):")
    for n, node in cell.nodes.items():
        lines.append(f"    {n}[t] = {node.text}")
    lines += ["", "Backward, one step (derived; deltas at t+1 arrive through the carries):"]
    d_lines = [v for k, v in p.equations.items() if k.startswith("d") and k[1:] in cell.nodes]
    lines += [f"    {v}" for v in d_lines]
    return lines


def _operand_doc(p: Plan) -> list[dict]:
    out = []
    for k, o in enumerate(p.operands):
        out.append({"index": k, "name": o.name, "kind": o.kind, "size": _size(p, o.size),
                    "rows": f"{len(o.blocks)} * N", "k": len(o.blocks),
                    "matrices": " ".join(o.matrices), "group": o.group,
                    "nodes": " ".join(b.node for b in o.blocks)})
    return out


def _statement_lines(program: Program, printer, comment_prefix="# ") -> list[dict]:
    out = []
    for st in program.statements:
        out.append({"target": printer.plan.access[st.target].ident,
                    "code": printer.doprint(st.expr),
                    "comment": st.comment})
    return out


def kernel_context(p: Plan) -> dict:
    """Everything templates/kernel.pyx.j2 lays out, as plain strings and lists."""
    acc = p.access
    ops = _operand_doc(p)
    op_index = {o.name: k for k, o in enumerate(p.operands)}
    st_index = {s: k for k, s in enumerate(p.states)}
    stored_index = {s.name: k for k, s in enumerate(p.stored)}
    vec_index = {v: k for k, v in enumerate(p.vectors)}
    out_index = {o: k for k, o in enumerate(p.outputs)}

    # --- forward step: pointer parameters, row pointers, reads
    f_reads: dict[sp.Symbol, str] = {}
    f_rows: list[tuple[str, str]] = []
    for sym in sorted(p.forward.reads, key=lambda s: acc[s].ident):
        a = acc[sym]
        if a.kind == "proj":
            o = p.operand(a.array)
            f_rows.append((a.ident, f"_G_{a.array} + _b * {len(o.blocks)} * N + {a.index} * N"))
            f_reads[sym] = f"{a.ident}[_j]"
        elif a.kind == "prev":
            f_rows.append((a.ident, f"_P_{a.array} + _b * N"))
            f_reads[sym] = f"{a.ident}[_j]"
        elif a.kind == "vector":
            f_reads[sym] = f"_V_{a.array}[_j]"
        else:  # pragma: no cover
            raise AssertionError(f"forward reads {a}")
    f_writes, f_statements = {}, {}
    for ctype in CTYPES:
        fprint = CythonPrinter(p, f_reads, ctype)
        f_statements[ctype] = _statement_lines(p.forward, fprint)
        f_writes[ctype] = []
        for w in p.forward.writes:
            target = "_S_" if w.kind == "state" else "_A_"
            f_writes[ctype].append({"code": f"{target}{w.array}[_o + _j] = "
                                            f"{fprint.doprint(w.symbol)}",
                                    "comment": w.comment})
    f_locals = sorted({acc[st.target].ident for st in p.forward.statements})
    forward_step = {
        "proj": [{"name": o.name, "k": len(o.blocks)} for o in p.operands],
        "prev": [s for s in p.states if any(acc[r].kind == "prev" and acc[r].array == s
                                            for r in p.forward.reads)],
        "rows": f_rows, "locals": f_locals,
        "statements": f_statements,
        "writes": f_writes,
    }

    # --- backward step
    b_reads: dict[sp.Symbol, str] = {}
    b_rows: list[tuple[str, str]] = []
    {s: next((sym for sym, a in acc.items() if a.kind == "value" and
                           a.array == s), None) for s in p.states}
    stored_syms = {st.symbol: st for st in p.stored}
    b_params = {"value": [], "prev": [], "stored": [], "incoming": [], "carry": []}
    for sym in sorted(p.backward.reads, key=lambda s: acc[s].ident):
        a = acc[sym]
        if a.kind == "value" and a.array in p.states:
            b_rows.append((a.ident, f"_S_{a.array} + _b * N"))
            b_params["value"].append(a.array)
        elif sym in stored_syms:
            b_rows.append((a.ident, f"_A_{stored_syms[sym].name} + _b * N"))
            b_params["stored"].append(stored_syms[sym].name)
        elif a.kind == "prev":
            b_rows.append((a.ident, f"_P_{a.array} + _b * N"))
            b_params["prev"].append(a.array)
        elif a.kind == "vector":
            b_reads[sym] = f"_V_{a.array}[_j]"
            continue
        elif a.kind == "incoming":
            b_rows.append((a.ident, f"_D_{a.array} + _b * N"))
            b_params["incoming"].append(a.array)
        elif a.kind == "carry":
            b_params["carry"].append(a.array)
            b_reads[sym] = f"_C_{a.array}[_o + _j]"
            continue
        else:  # pragma: no cover
            raise AssertionError(f"backward reads {a}")
        b_reads.setdefault(sym, f"{a.ident}[_j]")
    b_writes, b_statements = {}, {}
    for ctype in CTYPES:
        bprint = CythonPrinter(p, b_reads, ctype)
        b_statements[ctype] = _statement_lines(p.backward, bprint)
        b_writes[ctype] = []
        for w in p.backward.writes:
            val = bprint.doprint(w.symbol)
            if w.kind == "dG":
                g = p.groups[int(w.array)]
                code = f"_dG{w.array}[_b * {len(g.nodes)} * N + {w.index} * N + _j] = {val}"
            elif w.kind == "carry":
                code = f"_C_{w.array}[_o + _j] = {val}"
            elif w.kind == "acc":
                code = f"_acc_{w.array}[_j] += {val}"
            else:  # pragma: no cover
                raise AssertionError(w)
            b_writes[ctype].append({"code": code, "comment": w.comment})
    carry_written = [w.array for w in p.backward.writes if w.kind == "carry"]
    b_locals = sorted({acc[st.target].ident for st in p.backward.statements})
    backward_step = {
        "rows": b_rows, "locals": b_locals,
        "values": sorted(set(b_params["value"]), key=st_index.get),
        "prev": sorted(set(b_params["prev"]), key=st_index.get),
        "stored": sorted(set(b_params["stored"]), key=stored_index.get),
        "incoming": sorted(set(b_params["incoming"]), key=out_index.get),
        "carry": sorted(set(b_params["carry"]) | set(carry_written), key=st_index.get),
        "statements": b_statements,
        "writes": b_writes,
    }
    vec_reads = sorted({acc[s].array for s in p.forward.reads | p.backward.reads
                        if acc[s].kind == "vector"}, key=vec_index.get)
    return {
        "plan": p, "cell": p.cell, "operands": ops, "states": list(p.states),
        "outputs": list(p.outputs), "stored": [s.name for s in p.stored],
        "vectors": list(p.vectors), "vector_reads": vec_reads,
        "groups": [{"index": g.index, "k": len(g.nodes), "nodes": " ".join(g.nodes),
                    "operands": " ".join(g.operands)} for g in p.groups],
        "state_operands": [o for o in ops if o["kind"] == "state"],
        "input_operand": ops[0],
        "carry_beta": {s: (1 if p.carry_set[s] else 0) for s in p.states},
        "op_index": op_index, "state_index": st_index, "stored_index": stored_index,
        "vec_index": vec_index, "out_index": out_index,
        "forward_step": forward_step, "backward_step": backward_step,
        "layout": _layout_text(p), "doc": _docstring(p), "kernel_api": KERNEL_API,
        "max_k": max(len(o.blocks) for o in p.operands),
        "dtypes": [("float", "f32"), ("double", "f64")],
    }


def reference_context(p: Plan) -> dict:
    """Everything templates/reference.py.j2 lays out."""
    acc = p.access
    printer = NumpyPrinter(p)
    stored_syms = {st.symbol: st for st in p.stored}
    f_setup = []
    for sym in sorted(p.forward.reads, key=lambda s: acc[s].ident):
        a = acc[sym]
        if a.kind == "proj":
            o = p.operand(a.array)
            at = "[t]" if o.kind == "input" else ""
            f_setup.append((a.ident, f"_G_{a.array}{at}[:, {a.index} * N:{a.index + 1} * N]"))
        elif a.kind == "prev":
            f_setup.append((a.ident, f"_S_{a.array}[t]"))
        elif a.kind == "vector":
            f_setup.append((a.ident, f"_V_{a.array}"))
    f_writes = []
    for w in p.forward.writes:
        arr = f"_S_{w.array}[t + 1]" if w.kind == "state" else f"_A_{w.array}[t]"
        f_writes.append({"code": f"{arr} = {printer.doprint(w.symbol)}", "comment": w.comment})
    b_setup = []
    for sym in sorted(p.backward.reads, key=lambda s: acc[s].ident):
        a = acc[sym]
        if a.kind == "value" and a.array in p.states:
            b_setup.append((a.ident, f"_S_{a.array}[t + 1]"))
        elif sym in stored_syms:
            b_setup.append((a.ident, f"_A_{stored_syms[sym].name}[t]"))
        elif a.kind == "prev":
            b_setup.append((a.ident, f"_S_{a.array}[t]"))
        elif a.kind == "vector":
            b_setup.append((a.ident, f"_V_{a.array}"))
        elif a.kind == "incoming":
            b_setup.append((a.ident, f"_dY_{a.array}[t]"))
        elif a.kind == "carry":
            b_setup.append((a.ident, f"_C_{a.array}"))
    b_writes = []
    for w in p.backward.writes:
        val = printer.doprint(w.symbol)
        if w.kind == "dG":
            code = f"_dG{w.array}[t, :, {w.index} * N:{w.index + 1} * N] = {val}"
        elif w.kind == "carry":
            code = f"_C_{w.array}[...] = {val}"
        else:
            code = f"_acc_{w.array} += _batch_sum({val}, B)"
        b_writes.append({"code": code, "comment": w.comment})
    return {
        "plan": p, "cell": p.cell, "operands": _operand_doc(p), "states": list(p.states),
        "outputs": list(p.outputs), "stored": [s.name for s in p.stored],
        "vectors": list(p.vectors),
        "groups": [{"index": g.index, "k": len(g.nodes), "nodes": " ".join(g.nodes),
                    "operands": " ".join(g.operands)} for g in p.groups],
        "carry_beta": {s: (1 if p.carry_set[s] else 0) for s in p.states},
        "forward": {"setup": f_setup, "statements": _statement_lines(p.forward, printer),
                    "writes": f_writes},
        "backward": {"setup": b_setup, "statements": _statement_lines(p.backward, printer),
                     "writes": b_writes},
        "layout": _layout_text(p), "doc": _docstring(p), "kernel_api": KERNEL_API,
    }


def sources(d) -> dict[str, str]:
    """{"kernel.pyx": ..., "reference.py": ...} for the derivation `d`."""
    p = make_plan(d)
    env = environment()
    out = {}
    for name, template, context in (("kernel.pyx", "kernel.pyx.j2", kernel_context(p)),
                                    ("reference.py", "reference.py.j2", reference_context(p))):
        context = dict(context, header=header_lines(p.cell, template))
        out[name] = env.get_template(template).render(**context)
    return out


def kernel_source(d) -> str:
    """The Cython source of a cell's kernel (a derivation, cell name or spec path)."""
    p = make_plan(d)
    context = dict(kernel_context(p), header=header_lines(p.cell, "kernel.pyx.j2"))
    return environment().get_template("kernel.pyx.j2").render(**context)


def reference_source(d) -> str:
    """The NumPy reference module of a cell."""
    p = make_plan(d)
    context = dict(reference_context(p), header=header_lines(p.cell, "reference.py.j2"))
    return environment().get_template("reference.py.j2").render(**context)
