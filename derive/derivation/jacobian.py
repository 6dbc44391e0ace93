"""Stage 2b — the state-to-state Jacobian ∂sᵗ/∂rᵗ⁻¹ of one step, derived symbolically.

Convention (numerator layout): for states s and r of size N the block

    J_{s r} = ∂sᵗ/∂rᵗ⁻¹,    (J_{s r})_{kl} = ∂s_kᵗ / ∂r_lᵗ⁻¹        (N × N),

so a perturbation of the old state moves the new one by J_{s r} · d rᵗ⁻¹. Back-propagation
applies its transpose, the *backward map*

    δrᵗ⁻¹ = Σ_s J_{s r}ᵀ · δsᵗ     (plus the flows of rᵗ⁻¹ that leave the recurrence).

For the Elman RNN yᵗ = tanh(W xᵗ + R yᵗ⁻¹ + b) the Jacobian is diag(1 − (yᵗ)²) · R and
the backward map is Rᵀ · diag(1 − (yᵗ)²) — the form the seed article insists on.

Derivation: forward mode over the step graph. Every node v of step t gets ∂vᵗ/∂rᵗ⁻¹ for
each state r as a sum of *chains* diag(a) · F₁ · F₂ ⋯, each Fⱼ a matrix parameter
(from a projection `P @ w`) or an inner diag(·) (from an element-wise derivative taken
after a matrix); a state read as rᵗ⁻¹ starts with the identity, inputs with zero.

* a projection P @ wᵗ⁺ᵏ of node v contributes P · ∂wᵗ⁺ᵏ/∂rᵗ⁻¹;
* the element-wise part e of v contributes diag(∂e/∂wᵗ⁺ᵏ) · ∂wᵗ⁺ᵏ/∂rᵗ⁻¹ for every value
  it reads (SymPy differentiates; activations are written from stored outputs, so
  σ'(f̄ᵗ) = fᵗ(1 − fᵗ)).

Chains with the same factors after their leading diag are summed into one term, so a
block reads like the article's ∂cᵗ/∂cᵗ⁻¹ = diag(fᵗ + cᵗ⁻¹⊙fᵗ⊙(1 − fᵗ)⊙p_f + …).
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy as sp

from derive.cell import symbols as S
from derive.errors import UserError
from derive.derivation.backward import Derivation

#: one factor after the leading diag: a matrix parameter's name, or an inner diag(expr)
Factor = "str | sp.Expr"


@dataclass(frozen=True)
class ChainTerm:
    """diag(coefficient) · factors[0] · factors[1] ⋯ (a str factor is a matrix parameter,
    an expression factor an inner diag(·)). No factors: the term is diag(coefficient)."""

    coefficient: sp.Expr
    factors: tuple = ()

    @property
    def matrices(self) -> tuple[str, ...]:
        return tuple(f for f in self.factors if isinstance(f, str))


@dataclass(frozen=True)
class Block:
    """J_{s r} = ∂sᵗ/∂rᵗ⁻¹ as a sum of chain terms (empty: the block is zero)."""

    state: str          # s, at step t
    previous: str       # r, at step t-1
    terms: tuple[ChainTerm, ...]

    @property
    def is_zero(self) -> bool:
        return not self.terms


@dataclass(frozen=True)
class Jacobian:
    """Every block ∂sᵗ/∂rᵗ⁻¹ of a cell, in the order of its states (rows s, columns r)."""

    states: tuple[str, ...]
    blocks: dict[tuple[str, str], Block]

    def block(self, state: str, previous: str) -> Block:
        return self.blocks[(state, previous)]


def reductions(cell) -> list[str]:
    """The nodes of `cell` that reduce over the hidden units (a mean): their blocks are
    not diagonal-plus-matrix chains, and `jacobian` refuses them."""
    return [n.name for n in cell.nodes.values() if n.elementwise.has(S.Mean)]


def jacobian(d: Derivation) -> Jacobian:
    """Derive ∂sᵗ/∂rᵗ⁻¹ for every pair of states of the cell of `d`."""
    cell = d.cell
    for name in reductions(cell)[:1]:
        raise UserError(f"{cell.display_path}: node {name!r} reduces over the hidden units "
                        f"(mean), which couples every unit of a row: derive jacobian does "
                        f"not derive such blocks yet")
    stored = d.activations.stored
    # chains of each node of step t: {state r: [(coefficient, factors)]}
    chains: dict[tuple[str, int], dict[str, list[tuple[sp.Expr, tuple]]]] = {
        (r, -1): {r: [(sp.S.One, ())]} for r in cell.states}

    def of(name: str, shift: int):
        return chains.get((name, shift), {})   # inputs (and anything constant): zero

    for node in cell.nodes.values():
        out: dict[str, list[tuple[sp.Expr, tuple]]] = {}
        for proj in node.projections:
            for r, terms in of(proj.operand, proj.shift).items():
                for coeff, factors in terms:
                    inner = factors if coeff == 1 else (coeff,) + factors
                    out.setdefault(r, []).append((sp.S.One, (proj.matrix,) + inner))
        for name, shift in sorted(node.references(), key=lambda ref: (ref[1], ref[0])):
            partial = stored(sp.diff(node.elementwise, S.value(name, shift)))
            if partial == 0:
                continue
            for r, terms in of(name, shift).items():
                for coeff, factors in terms:
                    out.setdefault(r, []).append((partial * coeff, factors))
        chains[(node.name, 0)] = {r: _collect(terms) for r, terms in out.items() if terms}
    blocks = {}
    for s in cell.states:
        for r in cell.states:
            terms = sorted(chains[(s, 0)].get(r, []), key=lambda cf: _order(cell, cf[1]))
            blocks[(s, r)] = Block(s, r, tuple(ChainTerm(c, f) for c, f in terms))
    return Jacobian(tuple(cell.states), blocks)


def _order(cell, factors: tuple) -> tuple:
    """Print order of chains: the pure diag first, then by the spec's order of matrices."""
    position = {p: k for k, p in enumerate(cell.parameters)}
    return (len(factors), [position[f] for f in factors if isinstance(f, str)])


def _collect(terms):
    """Sum the coefficients of chains with the same factors; drop zero terms."""
    summed: dict[tuple, sp.Expr] = {}
    for coeff, factors in terms:
        summed[factors] = summed.get(factors, sp.S.Zero) + coeff
    out = []
    for factors, coeff in summed.items():
        coeff = sp.factor_terms(coeff)
        if coeff != 0:
            out.append((coeff, factors))
    return out
