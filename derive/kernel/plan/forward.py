"""Pass 2 — forward allocation, and the forward program of one step.

Allocation gives every value a step reads or computes its program symbol: the blocks
of the projection results, the states at t-1, the inputs at t (read where a node uses
one element-wise), the vector parameters and the node values at t. The forward program of each phase computes the nodes of that phase after
the projections, in spec order, then the auxiliary values the backward reads (in the
phase of the latest node they read), and writes the new states and the stored values
it computed. A later phase reads an earlier phase's values from their arrays (the
plan stores every node a later phase reads).
"""

from __future__ import annotations

import sympy as sp

from derive.cell import symbols as S
from derive.kernel.plan.model import (
    Buffer,
    Kind,
    Operand,
    Program,
    Ref,
    Statement,
    Storage,
    Stored,
    Write,
)
from derive.kernel.plan.symbols import Symbols
from derive.printing.text import text


class Allocation:
    """The program symbols of one step's forward values.

    subs: derivation symbol -> program symbol (states at t-1, inputs at t, parameters,
    node values);
    values: node -> its symbol at t; projections: node -> the projection blocks it sums.
    """

    def __init__(self, cell, operands: tuple[Operand, ...], vectors: tuple[str, ...],
                 symbols: Symbols):
        self.projections: dict[str, list[sp.Symbol]] = {n: [] for n in cell.nodes}
        for o in operands:
            for k, b in enumerate(o.blocks):
                sym = symbols.of(Ref(Kind.PROJECTION, o.name, k), f"{b.matrix}_{o.name}")
                self.projections[b.node].append(sym)
        self.subs: dict[sp.Symbol, sp.Symbol] = {}
        for s in cell.states:
            self.subs[S.value(s, -1)] = symbols.of(Ref(Kind.PREVIOUS, s), f"{s}_prev")
        for x in cell.inputs:       # read by the programs where x is used element-wise
            self.subs[S.value(x, 0)] = symbols.of(Ref(Kind.INPUT, x), x)
        for v in vectors:
            self.subs[S.param(v)] = symbols.of(Ref(Kind.VECTOR, v), v)
        self.values = {n: symbols.of(Ref(Kind.VALUE, n), n) for n in cell.nodes}
        self.subs.update({S.value(n, 0): sym for n, sym in self.values.items()})
        self._back = {sym: key for key, sym in self.subs.items()}

    def notation(self, expr: sp.Expr) -> str:
        """A program expression in the derivation's notation (c[t], c[t-1], p_i)."""
        return text(expr.xreplace({s: self._back[s] for s in expr.free_symbols
                                   if s in self._back}))


def forward_programs(cell, alloc: Allocation, stored: tuple[Stored, ...],
                     buffers: dict[tuple[Storage, str], Buffer],
                     phase: dict[str, int]) -> tuple[tuple[Program, ...], dict]:
    """Per phase: its nodes (spec order), then its auxiliary values; writes: its states,
    its stored values."""
    count = max(phase.values()) + 1
    statements: list[list[Statement]] = [[] for _ in range(count)]
    writes: list[list[Write]] = [[] for _ in range(count)]
    comments = {}
    of_value = {alloc.values[n]: phase[n] for n in cell.nodes}
    for n, node in cell.nodes.items():
        expr = node.elementwise.xreplace(alloc.subs) + sp.Add(*alloc.projections[n])
        comments[n] = f"{n}[t] = {node.text}"
        statements[phase[n]].append(Statement(alloc.values[n], expr, comments[n]))
    for s in cell.states:
        writes[phase[s]].append(Write(buffers[Storage.STATE, s], alloc.values[s], 0, f"{s}[t]"))
    for st in stored:
        reads = st.expr.free_symbols if st.is_aux else {st.symbol}
        k = max((of_value[s] for s in reads if s in of_value), default=0)
        if st.is_aux:
            statements[k].append(Statement(st.symbol, st.expr, f"{st.name} = "
                                           f"{alloc.notation(st.expr)} (stored for the "
                                           f"backward pass)"))
        writes[k].append(Write(buffers[Storage.STORED, st.name], st.symbol, 0, st.name))
    return tuple(Program(tuple(a), tuple(b)) for a, b in zip(statements, writes)), comments
