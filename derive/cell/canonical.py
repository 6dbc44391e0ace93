"""The one canonical form of expressions over a cell's vocabulary.

An *activation node* is a node that is one function of one argument and nothing else,
like iᵗ = σ(īᵗ) or zᵗ = tanh(z̄ᵗ). The forward pass stores its output, so wherever the
function of that argument appears, at any step t+k, it is the stored value:

    σ(īᵗ⁺ᵏ) → iᵗ⁺ᵏ,   hence dsigmoid(īᵗ⁺ᵏ) = σ(īᵗ⁺ᵏ)(1 − σ(īᵗ⁺ᵏ)) → iᵗ⁺ᵏ(1 − iᵗ⁺ᵏ).

`Activations` is that map (`stored`) and its inverse (`of`, `unstored`), for every k.
`canonical` is the normal form in which two spellings of the same expression compare
equal: activations as stored outputs, powers x**(k/2) as sqrt(x)**k, matrix products
and means distributed over sums and scalar factors (A(u + 2v) → Au + 2·Av), everything
multiplied out. The derivation writes its
partial derivatives with `stored`; the verifier compares both sides of a hand derivation
in `canonical` form.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import sympy as sp

from derive.cell import symbols as S

if TYPE_CHECKING:
    from derive.cell.spec import Cell


class Activations:
    """The map f(v̄ᵗ⁺ᵏ) ↔ vᵗ⁺ᵏ of one cell's activation nodes, at every step k."""

    def __init__(self, cell: Cell):
        #: node name -> its expression at step t, f(v̄ᵗ); only arguments that change with t
        self.nodes: dict[str, sp.Expr] = {}
        for node in cell.nodes.values():
            e = node.elementwise
            if (not node.projections and isinstance(e, sp.Function) and len(e.args) == 1
                    and any(S.ref(s) is not None and S.ref(s).kind == "value"
                            for s in e.free_symbols)):
                self.nodes[node.name] = e
        #: nodes whose values are equal across the hidden units of a row (a mean, and
        #: element-wise functions of such nodes and numbers only: no parameter vector)
        constants: set[str] = set()
        for node in cell.nodes.values():
            if not node.projections and S.row_constant(node.elementwise, frozenset(constants)):
                constants.add(node.name)
        self.constants = frozenset(constants)
        self._table: dict[sp.Expr, sp.Symbol] = {}
        self._covered: set[int] = set()

    def _cover(self, shifts: range) -> dict[sp.Expr, sp.Symbol]:
        for k in set(shifts) - self._covered:
            for name, e in self.nodes.items():
                self._table[S.shift_time(e, k)] = S.value(name, k)
            self._covered.add(k)
        return self._table

    def stored(self, expr: sp.Expr) -> sp.Expr:
        """Every activation of a pre-activation written as the stored output (σ(f̄ᵗ) → fᵗ)."""
        shifts = [r.shift for s in expr.free_symbols
                  if (r := S.ref(s)) is not None and r.shift is not None]
        if not shifts or not self.nodes:
            return expr
        # f(v̄ᵗ⁺ᵏ) reads steps k and k-1 (a state): cover one step past the latest
        return expr.xreplace(self._cover(range(min(shifts), max(shifts) + 2)))

    def of(self, sym: sp.Basic) -> sp.Expr | None:
        """f(v̄ᵗ⁺ᵏ) for the stored output vᵗ⁺ᵏ of an activation node, else None."""
        r = S.ref(sym)
        if r is None or r.kind != "value" or r.name not in self.nodes:
            return None
        return S.shift_time(self.nodes[r.name], r.shift)

    def unstored(self, expr: sp.Expr) -> sp.Expr:
        """Every stored output of an activation node written as the activation (fᵗ → σ(f̄ᵗ))."""
        sub = {s: a for s in expr.free_symbols if (a := self.of(s)) is not None}
        return expr.xreplace(sub) if sub else expr


def canonical(expr: sp.Expr, activations: Activations) -> sp.Expr:
    """The canonical form: stored outputs, matrix products distributed, multiplied out."""
    expr = S.half_powers(activations.stored(expr))
    expr = S.distribute_linear(sp.expand(activations.stored(expr)), activations.constants)
    if expr.has(S.Mean):  # a distributed mean can be a node's: mean(v - mu) → mean(v) - mu
        expr = activations.stored(expr)
    return sp.expand(expr)
