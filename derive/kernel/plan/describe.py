"""The plan as readable text (`derive plan CELL`): the stage between derivation and code."""

from __future__ import annotations

import sympy as sp

from derive.kernel.plan.model import Plan, Program
from derive.printing.text import text


def describe(p: Plan) -> str:
    """Operands and groups, the arrays of a call, and both step programs with their CSE
    temporaries, symbols by their identifiers (meanings listed under `symbols`)."""
    lines = [f"plan of {p.cell.name} ({p.cell.title})", "", "operands:"]
    for o in p.operands:
        blocks = ", ".join(f"{b.matrix}→{b.node}" for b in o.blocks)
        lines.append(f"  {o.name} ({o.role.value}, {o.size}): {blocks}; group {o.group}")
    lines += ["", "groups (dG buffers):"]
    lines += [f"  dG{g.index}: deltas of {' '.join(g.nodes)}; operands {' '.join(g.operands)}"
              for g in p.groups]
    lines += ["", "buffers (the arrays of a kernel call):"]
    lines += [f"  {b.storage.argument + f'[{b.index}]':<8} {b.field:<14} "
              f"({', '.join(b.shape)}{',' if len(b.shape) == 1 else ''})" for b in p.buffers]
    if p.reductions:
        lines += ["", "reductions (row means over the hidden units: E written by a phase, "
                      "R = its row means, read by the later phases as one scalar per row):"]
        for r in p.reductions:
            when = (f"backward phase {len(p.backward) - 1 - r.phase}" if r.backward
                    else f"forward phase {r.phase}")
            lines.append(f"  {r.mean.name} = mean({text(r.expr)}) over the {r.size} entries "
                         f"of a row; argument written by {when}")
    lines += ["", "symbols:"]
    for sym in sorted({s for prog in p.forward + p.backward for s in _symbols(prog)},
                      key=lambda s: s.name):
        ref = p.refs[sym]
        what = ref.kind.value + (f" {ref.name}" if ref.name else "")
        lines.append(f"  {sym.name:<14} {what}" + (f" block {ref.block}" if ref.block else ""))
    many = p.phases > 1
    steps = [(f"forward step{f', phase {k}' if many else ''}", prog)
             for k, prog in enumerate(p.forward)]
    steps += [(f"backward step{f', phase {p.phases - 1 - k}' if many else ''}", prog)
              for k, prog in enumerate(p.backward)]
    for title, prog in steps:
        lines += ["", f"{title}:"] + _program(prog)
    return "\n".join(lines) + "\n"


def _symbols(prog: Program) -> set[sp.Symbol]:
    out = set(prog.reads) | {s.target for s in prog.statements}
    return {s for s in out if not s.name.startswith("_")}


def _program(prog: Program) -> list[str]:
    lines = []
    for st in prog.statements:
        if st.comment:
            lines.append(f"  # {st.comment}")
        lines.append(f"  {st.target.name} = {text(st.expr)}")
    for w in prog.writes:
        op = "+=" if w.accumulates else "="
        block = f" block {w.block}" if w.block else ""
        lines.append(f"  -> {w.buffer.field}{block} {op} {w.value.name}")
    return lines
