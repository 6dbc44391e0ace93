"""What verifying equations of one cell needs: the derived truth of a target, the canonical
form across steps, and random unrolled sequences to evaluate both sides on.

**The canonical form across steps.** The derived right side of a target (its structured
form, shifted to the target's step) and the hand-written one are each brought to one
form: every delta is expanded, step by step, down to forward values, the external
gradients Δ and, at the last step S that either side mentions, the gradient carried into
each state from later steps (written ``carry_c[t+1]``: everything that reaches cˢ from
step S+1 on); then the cell's canonical form applies (`derive.cell.canonical`:
activations of pre-activations are stored outputs, σ(f̄ᵗ) = fᵗ, so
``dsigmoid(f_bar[t])`` = ``f[t]*(1-f[t])`` and ``dtanh(c[t])`` = ``1-tanh(c[t])**2``;
matrix products are distributed over sums; everything is multiplied out). Two sides are
symbolically equal when their canonical difference is 0.

**The numeric worlds.** The cell unrolled over a short random sequence (real N×M and N×N
matrices, N = 3, M = 2, batch 2, a non-zero initial state, random Δ), every value and
delta computed by `derive.numeric`.
"""

from __future__ import annotations

from functools import lru_cache

import sympy as sp

from derive import numeric
from derive.cell import symbols as S
from derive.cell.canonical import Activations, canonical
from derive.cell.spec import Cell, load_cell
from derive.derivation import Derivation, derive
from derive.verification.notation import Target

SIZES = dict(B=2, N=3, M=2)   # the sizes of the numeric worlds


class Context:
    """Everything about one cell that verifying its equations needs (cached per cell)."""

    def __init__(self, cell: Cell):
        self.cell = cell
        self.d: Derivation = derive(cell)
        self.activations: Activations = self.d.activations
        self.closed, self.carried = self._closed_forms()
        self._memo: dict = {}
        self._worlds: dict = {}

    # the canonical form across steps ----------------------------------------------------
    def _closed_forms(self):
        """δvᵗ for every node and input in forward values, Δᵗ and carry_s[t]."""
        d, cell = self.d, self.cell
        closed: dict[str, sp.Expr] = {}
        carried: dict[str, sp.Expr] = {}
        for n in list(reversed(list(cell.nodes))) + list(cell.inputs):
            flows = d.raw[n].flows
            same = sp.Add(*[f.term for f in flows if f.shift == 0])
            later = [f.term for f in flows if f.shift == 1]
            e = same.xreplace({S.delta(u): closed[u] for u in closed})
            if later:
                carried[n] = sp.Add(*later)
                e = e + S.carried(n, 0)
            closed[n] = e
        return closed, carried

    def _delta(self, name: str, step: int, last: int) -> sp.Expr:
        key = (name, step, last)
        got = self._memo.get(key)
        if got is None:
            e = S.shift_time(self.closed[name], step)
            if step < last:
                sub = {}
                for state, flows in self.carried.items():
                    sym = S.carried(state, step)
                    if sym in e.free_symbols:
                        sub[sym] = self.replace_deltas(S.shift_time(flows, step), last)
                e = e.xreplace(sub)
            self._memo[key] = got = e
        return got

    def replace_deltas(self, expr: sp.Expr, last: int) -> sp.Expr:
        sub = {}
        for sym in expr.free_symbols:
            r = S.ref(sym)
            if r is not None and r.kind == "delta":
                sub[sym] = self._delta(r.name, r.shift, last)
        return expr.xreplace(sub)

    def prepare(self, expr: sp.Expr) -> sp.Expr:
        """The cell's canonical form (`derive.cell.canonical`): stored outputs for
        activations, matrix products distributed, multiplied out."""
        return canonical(expr, self.activations)

    def canonical(self, expr: sp.Expr, last: int) -> sp.Expr:
        """Deltas expanded down to values, Δ and carry_s[t+last], then `prepare`d; see the
        module docstring."""
        return self.prepare(self.replace_deltas(expr, last))

    def forward_reduced(self, expr: sp.Expr, lowest: int) -> sp.Expr:
        """Element-wise nodes (not activations, not projections) written by their forward
        definitions at every step above `lowest`: cᵗ → zᵗiᵗ + cᵗ⁻¹fᵗ; inside a mean at
        every step (mean(dᵗ) → mean(vᵗ − μᵗ) for d = v − μ, which is 0 for μ = mean(v))."""
        defs = {}
        for node in self.cell.nodes.values():
            e = node.elementwise
            if node.projections or (isinstance(e, sp.Function) and len(e.args) == 1):
                continue
            defs[node.name] = self.activations.stored(e)
        expr = self._by_definitions(expr, defs, lowest)
        if expr.has(S.Mean):
            expr = expr.replace(lambda e: isinstance(e, S.Mean), lambda m: S.Mean(
                self._by_definitions(m.args[0], defs, -S.MAX_SHIFT - 2)))
        return expr

    def _by_definitions(self, expr: sp.Expr, defs: dict[str, sp.Expr], lowest: int):
        for _ in range(4 * len(self.cell.nodes) + 4):
            sub = {}
            for sym in expr.free_symbols:
                r = S.ref(sym)
                if r is not None and r.kind == "value" and r.name in defs and r.shift > lowest:
                    sub[sym] = self.activations.stored(S.shift_time(defs[r.name], r.shift))
            if not sub:
                break
            expr = expr.xreplace(sub)
        return expr

    # structured expansion (for naming wrong terms) --------------------------------------
    def expand_once(self, sym: sp.Symbol) -> sp.Expr:
        """A delta in terms of its consumers' deltas (one level of the derivation)."""
        r = S.ref(sym)
        nd = self.d.deltas.get(r.name) or self.d.raw[r.name]
        return S.shift_time(nd.structured, r.shift)

    def reaches(self, sym: sp.Symbol, targets: set[sp.Symbol]) -> bool:
        """Whether expanding `sym` (repeatedly) produces one of `targets`."""
        if not targets:
            return False
        limit = max(S.ref(t).shift for t in targets)
        seen, todo = set(), [sym]
        while todo:
            s = todo.pop()
            if s in seen or S.ref(s).shift > limit or len(seen) > 200:
                continue
            seen.add(s)
            for nxt in self.expand_once(s).free_symbols:
                r = S.ref(nxt)
                if r is not None and r.kind == "delta":
                    if nxt in targets:
                        return True
                    todo.append(nxt)
        return False

    # numeric worlds ----------------------------------------------------------------------
    def world(self, seed: int, T: int) -> numeric.Env:
        """A random unrolled sequence of T steps (sizes `SIZES`), values and deltas computed."""
        key = (seed, T)
        env = self._worlds.get(key)
        if env is None:
            problem = numeric.random_problem(self.cell, T=T, seed=seed, **SIZES)
            env = numeric.forward(problem)
            numeric.backward(self.d, problem, env)
            self._worlds[key] = env
        return env


@lru_cache(maxsize=16)
def _context_for(name: str, source_hash: str) -> Context:
    return Context(load_cell(name))


def context(cell) -> Context:
    """The context of a cell (a Cell, shipped name or spec path); shipped ones are cached."""
    cell = load_cell(cell)
    if cell.shipped:
        return _context_for(cell.name, cell.hash)
    return Context(cell)


def truth(ctx: Context, target: Target) -> tuple[sp.Expr, list[tuple[sp.Expr, str]]]:
    """(derived right side, [(flow term, flow label)]) for the target, unshifted for
    parameters (their shift is found later)."""
    d, cell = ctx.d, ctx.cell
    if target.kind == "node":
        nd = d.deltas.get(target.name) or d.raw[target.name]
        k = target.shift
        start = f"{target.name}[{S.time_label(k)}]"
        pieces = []
        for f in nd.flows:
            if f.external:
                single = len(cell.outputs) == 1
                label = f"the external gradient {S.incoming(target.name, k, single=single).name}"
            else:
                hops = [f"{n}[{S.time_label(k)}]" for n in f.path]
                hops.append(f"{f.consumer}[{S.time_label(k + f.shift)}]")
                via = f" ({f.matrix}.T)" if f.matrix else ""
                label = f"the path from {start} through {' -> '.join(hops)}{via}"
            pieces.append((S.shift_time(f.term, k), label))
        return S.shift_time(nd.structured, k), pieces
    if target.kind == "param":
        g = d.params[target.name]
        pieces = [(term, f"the term of d{target.name} through {node}[t]")
                  for node, term in g.contributions]
        return g.step, pieces
    state = target.name
    pieces = []
    for f in d.deltas[state].flows:
        if f.shift == 1 and not f.external:
            hops = [f"{f.consumer}[t]"]
            via = f" ({f.matrix}.T)" if f.matrix else ""
            pieces.append((S.shift_time(f.term, -1),
                           f"the path from the initial {state} through {hops[0]}{via}"))
    return d.initial[state], pieces
