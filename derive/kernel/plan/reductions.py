"""Pass — reductions: the row means of a step (mean(v) of layer normalisation).

mean(e) averages e over the N (or P) entries of one batch row and broadcasts the
result back to every entry. A thread that owns batch rows [b0, b1) can make it
without waiting for any other thread, but not inside the element-wise loop that
computes e: the mean is known only once the whole row of e is. So a mean is a phase
boundary, like the product of a node of the same step:

    phase p          e computed entry by entry, written into the scratch E (B, N)
    between          R[b] = Σⱼ E[b, j] / N for the thread's rows (one vectorised sum)
    phases > p       read mean(e) as R[b], one scalar per row

The *level* of an expression is the first phase in which it can be computed: the
latest phase of the values it reads, and one more than the level of the argument of
each mean in it (nested means: one more level each). A node is in the phase of its
level (or later, when it multiplies a node of the same step); the forward's means are
made after the phase of their argument's level. The backward's means (the adjoint of
a forward mean, mean(K) of deltas of the same step) are made alike between backward
phases: `Means.level` with the backward's own levels (see `Backward.stages`).

Equal means (the same argument after substitution) are made once.
"""

from __future__ import annotations

from typing import Callable

import sympy as sp

from derive.cell import symbols as S
from derive.kernel.plan.model import Kind, Reduction, Ref
from derive.kernel.plan.symbols import Symbols


def level(expr: sp.Expr, phase_of: Callable[[sp.Symbol], int],
          memo: dict | None = None) -> int:
    """The first phase in which `expr` can be computed: the latest `phase_of` of its
    symbols, one more than the level of each mean's argument."""
    memo = {} if memo is None else memo
    if expr in memo:
        return memo[expr]
    out = max((phase_of(s) for s in expr.free_symbols), default=0)
    for m in expr.atoms(S.Mean):
        out = max(out, level(m.args[0], phase_of, memo) + 1)
    memo[expr] = out
    return out


def node_level(node, phase: dict[str, int]) -> int:
    """The level of a node's element-wise part in the cell's own symbols (`phase`: the
    phases of the nodes before it)."""
    def phase_of(sym):
        r = S.ref(sym)
        return phase.get(r.name, 0) if r and r.kind == "value" and r.shift == 0 else 0
    return level(node.elementwise, phase_of)


class Means:
    """The reductions of one pass (prefix "f": forward, "b": backward).

    `replace(expr)` reads every mean of expr as the symbol of its reduction (made on
    first sight, inner means first), whose phase is the level of its argument;
    `level(expr)` is the level of an expression whose means are replaced, with
    `phase_of` for every other symbol. `size_of(expr)`: the size (N or P) of a row of
    the values expr reads.
    """

    def __init__(self, prefix: str, symbols: Symbols, phase_of: Callable[[sp.Symbol], int],
                 size_of: Callable[[sp.Expr], str]):
        self.prefix, self.symbols = prefix, symbols
        self._phase_of, self._size_of = phase_of, size_of
        self._by_expr: dict[sp.Expr, Reduction] = {}
        self._by_mean: dict[sp.Symbol, Reduction] = {}

    @property
    def reductions(self) -> tuple[Reduction, ...]:
        return tuple(self._by_expr.values())

    def phase_of(self, sym: sp.Symbol) -> int:
        r = self._by_mean.get(sym)
        return r.phase + 1 if r is not None else self._phase_of(sym)

    def level(self, expr: sp.Expr) -> int:
        return max((self.phase_of(s) for s in expr.free_symbols), default=0)

    def replace(self, expr: sp.Expr) -> sp.Expr:
        if not expr.has(S.Mean):
            return expr
        mapping: dict[sp.Expr, sp.Symbol] = {}
        for m in sorted(expr.atoms(S.Mean), key=lambda m: (sp.count_ops(m),
                                                           sp.default_sort_key(m))):
            mapping[m] = self._reduction(m.args[0].xreplace(mapping)).mean
        return expr.xreplace(mapping)

    def _reduction(self, arg: sp.Expr) -> Reduction:
        if arg not in self._by_expr:
            name = f"{self.prefix}{len(self._by_expr)}"
            r = Reduction(name, self.symbols.new(Ref(Kind.MEAN, name), f"mean_{name}"),
                          self.symbols.temp(f"reduced_{name}"), arg, self.level(arg),
                          self._size_of(arg))
            self._by_expr[arg] = r
            self._by_mean[r.mean] = r
        return self._by_expr[arg]
