"""Pass 6 — storage: the arrays of a kernel call, and what the forward stores for the
backward.

*Auxiliary* values are functions of forward values that the backward needs (like
tanh(cᵗ), or a mean of forward values): they are stored by the forward, never
recomputed. The forward stores every node the backward reads (states live in S
anyway), every output that is not a state, and in a multi-phase cell every node that
outlives its phase (node operands, nodes a later phase reads). The reductions' scratch
(E and R per mean) is the kernel's, not an argument.
"""

from __future__ import annotations

import sympy as sp

from derive.cell import symbols as S
from derive.kernel.plan.model import (
    Buffer,
    Group,
    Kind,
    Operand,
    Program,
    Reduction,
    Ref,
    Role,
    Statement,
    Storage,
    Stored,
)
from derive.kernel.plan.operands import input_sizes
from derive.kernel.plan.symbols import Symbols

#: functions of the element-wise programs (applied to one vector) whose values the
#: forward stores when the backward reads them; `S.step` (relu' = [v > 0]) is not one:
#: the backward computes it from the value it reads, as cheap as loading it
FUNCTIONS = (S.sigmoid, sp.tanh, sp.exp, sp.log, S.relu, S.softplus, S.sqrt)


def make_buffer(storage: Storage, name: str, index: int, blocks: int = 1,
                size: str = "M", per_step: bool = True, rows: str = "N") -> Buffer:
    """A Buffer with its shape spelled out (k = blocks, `size` the length of an operand
    for WEIGHTS, `rows` the size of a block: N or P); without its time axis unless
    per_step (the projections of a state operand: one step at a time)."""
    dims = storage.value[1] if per_step else storage.value[1][1:]
    width = f"{blocks} * {rows}" if blocks > 1 else rows
    spelled = {"k * N": width, "N": rows, "size": size}
    shape = tuple(spelled.get(d, d) for d in dims)
    return Buffer(storage, name, index, shape, blocks, rows)


def auxiliaries(statements: list[Statement], symbols: Symbols) -> dict[sp.Expr, sp.Symbol]:
    """An AUX symbol for every function call of the backward statements, and for every
    mean of forward values in them (the forward made it: stored, not made again)."""
    aux: dict[sp.Expr, sp.Symbol] = {}
    forward = (Kind.VALUE, Kind.PREVIOUS, Kind.VECTOR)
    for st in statements:
        means = [m for m in st.expr.atoms(S.Mean)
                 if all(s in symbols.refs and symbols.refs[s].kind in forward
                        for s in m.free_symbols)]
        for f in sorted(st.expr.atoms(*FUNCTIONS) | set(means), key=sp.default_sort_key):
            if f not in aux:
                ref = symbols.refs.get(f.args[0])
                of = f"_{f.args[0].name}" if ref and ref.kind in (Kind.VALUE,
                                                                   Kind.PREVIOUS) else "_aux"
                aux[f] = symbols.new(Ref(Kind.AUX), f"{type(f).__name__.lower()}{of}")
    return aux


def stored_values(cell, values: dict[str, sp.Symbol], aux: dict[sp.Expr, sp.Symbol],
                  backward: tuple[Program, ...], symbols: Symbols,
                  kept: set[str]) -> tuple[Stored, ...]:
    """The nodes and auxiliary values the backward reads (and non-state outputs, and
    the nodes `kept` across phases)."""
    reads = frozenset().union(*(b.reads for b in backward))
    out = [Stored(n, values[n]) for n in cell.nodes
           if n not in cell.states and (values[n] in reads or n in cell.outputs
                                        or n in kept)]
    for expr, sym in sorted(aux.items(), key=lambda kv: kv[1].name):
        if sym in reads:
            symbols.refs[sym] = Ref(Kind.AUX, sym.name)
            out.append(Stored(sym.name, sym, expr))
    return tuple(out)


def fixed_buffers(cell, operands: tuple[Operand, ...], groups: tuple[Group, ...],
                  vectors: tuple[str, ...]) -> tuple[Buffer, ...]:
    """Every array of the calling convention except the stored values A."""
    out = []
    for k, (x, size) in enumerate(input_sizes(cell).items()):
        out += [make_buffer(Storage.INPUT, x, k, size=size, rows=size),
                make_buffer(Storage.INPUT_GRADIENT, x, k, size=size, rows=size)]
    for k, o in enumerate(operands):
        out += [make_buffer(Storage.WEIGHTS, o.name, k, o.k, o.size, rows=o.rows),
                make_buffer(Storage.WEIGHT_GRADIENT, o.name, k, o.k, o.size, rows=o.rows),
                make_buffer(Storage.PROJECTION, o.name, k, o.k,
                            per_step=o.role is Role.INPUT, rows=o.rows)]
    for k, v in enumerate(vectors):
        out += [make_buffer(Storage.VECTOR, v, k), make_buffer(Storage.ACCUMULATOR, v, k)]
    for k, s in enumerate(cell.states):
        out += [make_buffer(Storage.STATE, s, k, rows=cell.size(s)),
                make_buffer(Storage.CARRY, s, k, rows=cell.size(s))]
    out += [make_buffer(Storage.INCOMING, o, k, rows=cell.size(o))
            for k, o in enumerate(cell.outputs)]
    out += [make_buffer(Storage.DELTAS, " ".join(g.nodes), g.index, len(g.nodes),
                        rows=cell.size(g.nodes[0])) for g in groups]
    out += [make_buffer(Storage.ADJOINT, o.name, k, rows=cell.size(o.name)) for k, o in
            enumerate(o for o in operands if o.role is Role.NODE)]
    return tuple(out)


def reduction_buffers(reductions: tuple[Reduction, ...]) -> tuple[Buffer, ...]:
    """The scratch of each reduction: E (B, size), the values it averages, and R (B,),
    their row means."""
    return tuple(make_buffer(storage, r.name, k, rows=r.size)
                 for k, r in enumerate(reductions) for storage in (Storage.REDUCED,
                                                                    Storage.MEANS))


def all_buffers(fixed: tuple[Buffer, ...], stored: tuple[Stored, ...],
                sizes: dict[str, str]) -> tuple[Buffer, ...]:
    """The arrays in the order of the calling convention (by argument, then index);
    sizes: the size of each stored value's rows."""
    order = list(Storage)
    out = list(fixed) + [make_buffer(Storage.STORED, s.name, k, rows=sizes[s.name])
                         for k, s in enumerate(stored)]
    scratch = (Storage.REDUCED, Storage.MEANS)   # the forward's reductions first
    return tuple(sorted(out, key=lambda b: (order.index(b.storage),
                                            b.storage in scratch and b.name[0] != "f",
                                            b.index)))
