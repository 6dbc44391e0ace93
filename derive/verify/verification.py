"""Stage 8 — verify: a hand derivation against the derived truth (`derive verify`).

    v = verify("lstm", "dc[t] = dy[t]*o[t]*dtanh(c[t]) + p_o*do_bar[t] + ...")
    v.equal            # True, False, or None (cannot decide; v.reason says why)
    v.differences      # each wrong term: its flow, a classification, expected and found
    v.counterexample   # values at which the two sides differ, and by how much

The notation of equations is `derive.verify.notation` (text) or `derive.verify.latex` (LaTeX).

**Meaning of "equal".** The derived right side of the target (the structured form,
shifted to the target's step) and the hand-written one are each brought to a canonical
form: every delta is expanded, step by step, down to forward values, the external
gradients Δ and, at the last step S that either side mentions, the gradient carried
into each state from later steps (written ``carry_c[t+1]``: everything that reaches
cˢ from step S+1 on); activations of pre-activations are stored outputs
(σ(f̄ᵗ) = fᵗ, so ``dsigmoid(f_bar[t])`` = ``f[t]*(1-f[t])``, ``dtanh(c[t])`` =
``1-tanh(c[t])**2``); matrix products are distributed over sums; everything is
multiplied out. The sides are symbolically equal when the canonical difference is 0.

The decision is always confirmed numerically in float64: the cell is unrolled over a
short random sequence (real N×M and N×N matrices, N = 3, M = 2, batch 2, a non-zero
initial state, random Δ), every value and delta is computed by `derive.numeric`, and both
sides are evaluated at interior steps of two such sequences. A transpose, or the order of
a matrix product and an element-wise product, cannot hide there. Verdicts:

* **equal** — the canonical difference is 0 (or, failing that, 0 after writing element-wise
  nodes by their forward definitions, like cᵗ = zᵗiᵗ + cᵗ⁻¹fᵗ), and the numbers agree;
* **differs** — the numbers differ (a counterexample is given) and SymPy finds no proof
  of equality, or the right side does not even have the shape of the left;
* **cannot decide** — the two methods disagree, or the expression is too large to
  decide symbolically and agrees numerically; `reason` says which.

Per-step terms of parameter gradients (``dp_f[t] = c[t-1]*df_bar[t]``) are equal up to a
uniform time shift: δP = Σ_t Σ_batch of the term, so ``dR_f[t] = outer(df_bar[t+1], y[t])``
is the derived ``outer(df_bar[t], y[t-1])`` one step later. Initial-state gradients
(``dc0 = ...``) are written at step t = 0, where a state at t−1 is the initial state.

**When it differs**, the wrong terms are found at the structured level: the terms of
both sides are grouped by the delta they carry (and the matrix in front of it); where one
side writes a delta the other expands (``dc[t+1]*i[t+1]*dtanh(z_bar[t+1])`` for
``dz_bar[t+1]``), the expansion is followed until both meet. Each wrong term names its
flow ("the path from c[t] through f_bar[t+1]"), what was expected and what was found,
and one of the `KINDS`.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache

import numpy as np
import sympy as sp

from derive import numeric
from derive.cell import symbols as S
from derive.cell.spec import Cell, load_cell
from derive.derivation import Derivation, derive
from derive.errors import ExpressionError, UserError
from derive.printing.text import format_expression
from derive.verify.notation import (
    MAX_SHIFT,
    Target,
    parse_expression,
    parse_target,
    split_equation,
    top_level_terms,
)

KINDS = ("missing", "extra", "wrong time step", "wrong gate or parameter",
         "wrong coefficient or sign", "missing or doubled activation derivative",
         "wrong matrix order or transpose")

RTOL = 1e-9          # numeric agreement: max|found − expected| ≤ RTOL · max(max|expected|, 1)
SEEDS = (101, 202)   # the random sequences of the numeric confirmation
SIZES = dict(B=2, N=3, M=2)
MAX_CANONICAL_TERMS = 40_000
MAX_PRINTED_TERMS = 400  # terms of a canonical difference written into the result
MAX_EXP_FORM_OPS = 80  # operations of a difference that sp.simplify may try (its time is
                       # unbounded: a 4000-operation exp form did not finish in 10 minutes)


# --- results -----------------------------------------------------------------------------

@dataclass
class Difference:
    """One wrong term: its flow, its kind (one of KINDS), the expected and the found term."""

    flow: str
    kind: str
    expected: str
    found: str
    detail: str = ""


@dataclass
class Counterexample:
    """A point of a random unrolled sequence where the two sides differ.

    `values` holds every symbol either side reads at step `step` (time index t = step),
    as nested lists: vectors are (batch, size) rows, parameters their matrices.
    """

    seed: int
    step: int
    sizes: dict
    values: dict[str, list]
    expected: list
    found: list
    max_abs_difference: float
    relative_difference: float


@dataclass
class Verification:
    """The verdict on one equation, with everything a report needs."""

    cell: str
    equation: str
    target: str
    expected: str = ""
    found: str = ""
    verdict: str = "cannot decide"
    reason: str = ""
    method: str = ""
    differences: list[Difference] = field(default_factory=list)
    difference: str = ""
    canonical_difference: str = ""
    counterexample: Counterexample | None = None
    numeric: dict = field(default_factory=dict)
    shift: int = 0
    seconds: float = 0.0

    @property
    def equal(self) -> bool | None:
        """True (equal), False (differs) or None (cannot decide)."""
        return {"equal": True, "differs": False}.get(self.verdict)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["equal"] = self.equal
        return out

    def report(self) -> str:
        """A human-readable report (what `derive verify` prints)."""
        lines = [f"{self.equation.strip()}"]
        head = f"  {self.verdict.upper()}"
        if self.verdict == "equal":
            head += f" ({self.method})"
        elif self.reason:
            head += f": {self.reason}"
        lines.append(head)
        if self.shift:
            lines.append(f"  (compared with the derived term shifted by {self.shift:+d} step"
                         f"{'s' * (abs(self.shift) != 1)}: the gradient sums over t)")
        if self.verdict != "equal":
            lines.append(f"  derived:  {self.target} = {self.expected}")
            lines.append(f"  yours:    {self.target} = {self.found}")
        for k, diff in enumerate(self.differences, 1):
            lines.append(f"  {k}. {diff.flow}: {diff.kind}")
            if diff.expected:
                lines.append(f"       expected {diff.expected}")
            if diff.found:
                lines.append(f"       found    {diff.found}")
            if diff.detail:
                lines.append(f"       ({diff.detail})")
        if self.difference and self.verdict != "equal":
            lines.append(f"  difference (derived - yours): {self.difference}")
        ce = self.counterexample
        if ce is not None:
            lines.append(f"  counterexample: random sequence seed {ce.seed}, step t = {ce.step}, "
                         f"N = {ce.sizes['N']}, M = {ce.sizes['M']}, batch {ce.sizes['B']}: "
                         f"max |derived - yours| = {ce.max_abs_difference:.3g} "
                         f"(relative {ce.relative_difference:.3g})")
            lines.append(f"    derived = {_short(ce.expected)}")
            lines.append(f"    yours   = {_short(ce.found)}")
            for name, value in ce.values.items():
                lines.append(f"    {name} = {_short(value)}")
        return "\n".join(lines)


def _short(value) -> str:
    return np.array2string(np.asarray(value), precision=4, separator=", ",
                           max_line_width=10_000).replace("\n", "")


# --- the per-cell context: derivation, canonical forms, numeric worlds ----------------------

def _carry(state: str, shift: int) -> sp.Symbol:
    """carry_s[t+k]: the gradient reaching state s at step t+k from steps after it."""
    return S._symbol(f"carry_{state}[{S.time_label(shift)}]", S.Ref("carried", state, shift))


def _shift(expr: sp.Expr, by: int) -> sp.Expr:
    """`S.shift_time` that also moves carried gradients."""
    if by == 0:
        return expr
    mapping = {}
    for sym in expr.free_symbols:
        r = S.ref(sym)
        if r is not None and r.kind == "carried":
            mapping[sym] = _carry(r.name, r.shift + by)
    return S.shift_time(expr.xreplace(mapping) if mapping else expr, by)


class _Context:
    """Everything about one cell that verifying its equations needs (cached per cell)."""

    def __init__(self, cell: Cell):
        self.cell = cell
        self.d: Derivation = derive(cell)
        acts = {}
        for node in cell.nodes.values():
            e = node.elementwise
            if not node.projections and isinstance(e, sp.Function) and len(e.args) == 1:
                for k in range(-MAX_SHIFT - 3, MAX_SHIFT + 4):
                    acts[S.shift_time(e, k)] = S.value(node.name, k)
        self.acts = acts
        self.closed, self.carried = self._closed_forms()
        self._memo: dict = {}
        self._worlds: dict = {}

    # canonical form ------------------------------------------------------------------
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
                e = e + _carry(n, 0)
            closed[n] = e
        return closed, carried

    def _delta(self, name: str, step: int, last: int) -> sp.Expr:
        key = (name, step, last)
        got = self._memo.get(key)
        if got is None:
            e = _shift(self.closed[name], step)
            if step < last:
                sub = {}
                for state, flows in self.carried.items():
                    sym = _carry(state, step)
                    if sym in e.free_symbols:
                        sub[sym] = self._replace_deltas(_shift(flows, step), last)
                e = e.xreplace(sub)
            self._memo[key] = got = e
        return got

    def _replace_deltas(self, expr: sp.Expr, last: int) -> sp.Expr:
        sub = {}
        for sym in expr.free_symbols:
            r = S.ref(sym)
            if r is not None and r.kind == "delta":
                sub[sym] = self._delta(r.name, r.shift, last)
        return expr.xreplace(sub)

    def prepare(self, expr: sp.Expr) -> sp.Expr:
        """Stored outputs for activations, matrix products distributed, multiplied out."""
        return sp.expand(S.distribute_linear(sp.expand(expr.xreplace(self.acts))))

    def canonical(self, expr: sp.Expr, last: int) -> sp.Expr:
        """Deltas expanded down to values, Δ and carry_s[t+last]; see the module docstring."""
        return self.prepare(self._replace_deltas(expr, last))

    def forward_reduced(self, expr: sp.Expr, lowest: int) -> sp.Expr:
        """Element-wise nodes (not activations, not projections) written by their forward
        definitions at every step above `lowest`: cᵗ → zᵗiᵗ + cᵗ⁻¹fᵗ."""
        defs = {}
        for node in self.cell.nodes.values():
            e = node.elementwise
            if node.projections or (isinstance(e, sp.Function) and len(e.args) == 1):
                continue
            defs[node.name] = e.xreplace(self.acts)
        for _ in range(4 * len(self.cell.nodes) + 4):
            sub = {}
            for sym in expr.free_symbols:
                r = S.ref(sym)
                if r is not None and r.kind == "value" and r.name in defs and r.shift > lowest:
                    sub[sym] = S.shift_time(defs[r.name], r.shift).xreplace(self.acts)
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
        key = (seed, T)
        env = self._worlds.get(key)
        if env is None:
            problem = numeric.random_problem(self.cell, T=T, seed=seed, **SIZES)
            env = numeric.forward(problem)
            numeric.backward(self.d, problem, env)
            self._worlds[key] = env
        return env


@lru_cache(maxsize=16)
def _context_for(name: str, source_hash: str) -> _Context:
    return _Context(load_cell(name))


def context(cell) -> _Context:
    cell = load_cell(cell)
    if cell.shipped:
        return _context_for(cell.name, cell.hash)
    return _Context(cell)


# --- the truth for a target ----------------------------------------------------------------

@dataclass
class _Piece:
    """A term of one side at the structured level, with where it comes from."""

    expr: sp.Expr        # one prepared monomial
    origin: str          # how it is written (a flow's term, or the user's own text)
    label: str = ""      # the flow (truth side)


def _truth(ctx: _Context, target: Target) -> tuple[sp.Expr, list[tuple[sp.Expr, str]]]:
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


# --- verification --------------------------------------------------------------------------

def verify(cell, equation: str, latex: bool = False) -> "Verification":
    """Verify one hand-derived equation of `cell` (a Cell, shipped name or spec path).

    Raises `UserError` (an `ExpressionError`) for input that does not follow the notation.
    """
    started = time.perf_counter()
    ctx = context(cell)
    parsed = _parse(ctx.cell, equation, latex)
    result = _Verifier(ctx, equation, *parsed).run()
    result.seconds = round(time.perf_counter() - started, 4)
    return result


def _parse(cell: Cell, equation: str, latex: bool):
    """(target, right side, [(sign·term expr, origin text)]) of an equation."""
    if latex:
        from derive.verify.latex import parse_latex_equation
        target, rhs, terms = parse_latex_equation(cell, equation)
        return target, rhs, terms
    lhs, rhs_text = split_equation(equation)
    target = parse_target(cell, lhs)
    try:
        rhs = parse_expression(cell, rhs_text)
    except ExpressionError as exc:
        if exc.column is None:
            raise
        offset = len(lhs) + 1 + (len(rhs_text) - len(rhs_text.lstrip()))
        raise ExpressionError(exc.detail, text=equation.strip(),
                              column=exc.column + offset - (len(equation) - len(equation.lstrip()))
                              ) from None
    terms = []
    for sign, src in top_level_terms(rhs_text):
        terms.append((sign * parse_expression(cell, src), ("-" if sign < 0 else "") + src))
    return target, rhs, terms


def _shifts(expr: sp.Expr, kinds=("value", "delta", "incoming")) -> list[int]:
    return [r.shift for s in expr.free_symbols for r in [S.ref(s)]
            if r is not None and r.kind in kinds]


class _Verifier:
    def __init__(self, ctx: _Context, equation: str, target: Target, rhs: sp.Expr, terms):
        self.ctx, self.cell = ctx, ctx.cell
        self.equation, self.target, self.rhs, self.terms = equation, target, rhs, terms
        self.result = Verification(ctx.cell.name, equation, target.label)

    def run(self) -> Verification:
        ctx, target, res = self.ctx, self.target, self.result
        truth, flows = _truth(ctx, target)
        self._check_initial_references()
        shift = self._parameter_shift(truth) if target.kind == "param" else 0
        truth = S.shift_time(truth, shift)
        flows = [(S.shift_time(e, shift), label) for e, label in flows]
        res.shift = shift
        res.expected = format_expression(truth, self.cell)
        res.found = format_expression(self.rhs.xreplace(ctx.acts), self.cell)

        shape_problem = self._shape_problem(truth)
        symbolic = self._symbolic(truth)          # True, False or None (too large)
        check = None if shape_problem else self._numeric(truth)
        agree = None if check is None else check["agree"]
        if check is not None:
            res.numeric = {k: v for k, v in check.items() if k != "counterexample"}

        if shape_problem:
            res.verdict, res.reason = "differs", shape_problem
            res.method = "shapes"
        elif symbolic is True and agree:
            res.verdict, res.method = "equal", self._equal_method(check)
        elif symbolic is True and not agree:
            res.verdict = "cannot decide"
            res.reason = ("SymPy finds the sides equal but they differ numerically "
                          f"(max relative difference {check['max_relative']:.2g}); "
                          "please report this equation")
        elif agree is False:
            res.verdict, res.method = "differs", "numeric counterexample; SymPy finds no proof"
        else:  # symbolic False/None and the numbers agree: try harder
            proof = self._harder(truth)
            if proof:
                res.verdict, res.method = "equal", f"{proof}; {self._equal_method(check)}"
            else:
                res.verdict = "cannot decide"
                res.reason = (f"the sides agree numerically at {check['points']} random points "
                              f"(max relative difference {check['max_relative']:.2g}, within "
                              f"the tolerance {RTOL:g}) but "
                              + ("the expression is too large to decide symbolically"
                                 if symbolic is None else
                                 "their symbolic difference (below) is not zero, and neither "
                                 "the forward definitions nor the activations written as "
                                 "exponentials make it zero: it is zero by an identity derive "
                                 "does not apply, or non-zero but below the tolerance"))
        if res.verdict != "equal":
            self._name_differences(truth, flows)
            if res.verdict == "differs" and not res.reason:
                res.reason = self._count_reason()
            if check is not None and not agree:
                res.counterexample = check["counterexample"]
        return res

    def _count_reason(self) -> str:
        n = len(self.result.differences)
        return f"{n} wrong term{'s' * (n != 1)}" if n else "the sides differ"

    @staticmethod
    def _equal_method(check) -> str:
        return (f"symbolically; confirmed numerically at {check['points']} random points, "
                f"max relative difference {check['max_relative']:.1g}")

    # checks ----------------------------------------------------------------------------
    def _check_initial_references(self):
        if self.target.kind != "initial":
            return
        for sym in self.rhs.free_symbols:
            r = S.ref(sym)
            if r is None or r.kind == "param":
                continue
            bad = (r.kind == "value" and (r.shift < -1 or (r.shift == -1 and r.name not in
                                                           self.cell.states))) \
                or (r.kind in ("delta", "incoming") and r.shift < 0)
            if bad:
                states = ", ".join(self.cell.states)
                raise ExpressionError(
                    f"{sym.name} does not exist at t = 0: the right side of {self.target.label} "
                    f"is written at step t = 0, where only the initial state ({states}) is "
                    f"known at t-1")

    def _shape_problem(self, truth) -> str:
        try:
            want = numeric.shape_of(truth, self.cell)
        except numeric.DimensionError:  # pragma: no cover - derived forms always fit
            return ""
        try:
            got = numeric.shape_of(self.rhs, self.cell)
        except numeric.DimensionError as exc:
            return f"the right side does not fit: {exc}"
        if got != want and got != numeric.SCALAR:
            return f"the right side is {got} but {self.target.label} is {want}"
        return ""

    def _last(self, *exprs) -> int:
        shifts = [k for e in exprs for k in _shifts(e, ("delta", "incoming"))]
        return max(shifts) if shifts else 0

    def _symbolic(self, truth) -> bool | None:
        ctx = self.ctx
        last = self._last(truth, self.rhs)
        span = last - min([last] + _shifts(truth, ("delta",)) + _shifts(self.rhs, ("delta",)))
        if span > 3:
            return None
        diff = self._replace(truth - self.rhs, last)
        from derive.verify.notation import expansion_size
        if expansion_size(diff) > MAX_CANONICAL_TERMS:
            return None
        canon = ctx.prepare(diff)
        self.canon_diff = canon
        terms = len(sp.Add.make_args(canon))
        self.result.canonical_difference = (
            "0" if canon == 0 else format_expression(canon, self.cell)
            if terms <= MAX_PRINTED_TERMS else f"({terms} terms, not printed)")
        return canon == 0

    def _replace(self, expr, last):
        return self.ctx._replace_deltas(expr, last)

    def _harder(self, truth) -> str:
        """Proofs that need the forward definitions or exp forms of activations."""
        ctx = self.ctx
        diff = getattr(self, "canon_diff", None)
        if diff is None:
            return ""
        lowest = min([0] + _shifts(diff, ("value",)))
        reduced = ctx.prepare(ctx.forward_reduced(diff, lowest))
        if reduced == 0:
            return "symbolically, using the forward definitions of the element-wise nodes"
        from derive.verify.notation import expansion_size
        if expansion_size(reduced) > 200:
            return ""
        inverse = {v: f for f, v in ctx.acts.items()}
        as_exp = reduced.xreplace(inverse).rewrite(sp.exp)
        if sp.count_ops(as_exp) > MAX_EXP_FORM_OPS:
            return ""
        try:
            if sp.simplify(as_exp) == 0:
                return "symbolically, with the activations written as exponentials"
        except Exception:  # pragma: no cover - SymPy internals
            return ""
        return ""

    # numeric confirmation ----------------------------------------------------------------
    def _numeric(self, truth) -> dict:
        ctx = self.ctx
        everything = _shifts(truth) + _shifts(self.rhs) + [0]
        kmin, kmax = min(everything), max(everything)
        if self.target.kind == "initial":
            steps_for = lambda T: [0]  # noqa: E731
            T = kmax + 3
        else:
            T = (kmax - kmin) + 5
            first = max(0, -kmin)
            steps_for = lambda T: list(range(first, T - 1 - kmax))  # noqa: E731
        with np.errstate(all="ignore"):  # an overflow is a finding, not a warning to print
            return self._compare_numerically(truth, steps_for, T)

    def _compare_numerically(self, truth, steps_for, T) -> dict:
        ctx = self.ctx
        worst = None
        points, max_rel = 0, 0.0
        truth_is_vector = numeric.shape_of(truth, self.cell).kind == "vector"
        for seed in SEEDS:
            env = ctx.world(seed, T)
            for t in steps_for(T):
                want = numeric.evaluate(truth, env, t)
                got = numeric.evaluate(self.rhs, env, t)
                got = np.broadcast_to(got, np.shape(want)) if np.ndim(got) < np.ndim(want) \
                    else got
                scale = max(float(np.max(np.abs(want))), 1.0)
                err = float(np.max(np.abs(got - want)))
                rel = err / scale if np.isfinite(err) and np.isfinite(scale) else np.inf
                points += SIZES["B"] if np.ndim(want) == 2 and not want.shape == got.shape[:0] \
                    and truth_is_vector else 1
                if worst is None or rel > worst[0]:
                    worst = (rel, err, seed, t, want, got, env)
                max_rel = max(max_rel, rel)
        rel, err, seed, t, want, got, env = worst
        agree = max_rel <= RTOL
        counter = None
        if not agree:
            counter = self._counterexample(truth, env, seed, t, want, got, err, rel)
        return {"agree": agree, "points": points, "max_relative": max_rel,
                "seeds": list(SEEDS), "counterexample": counter}

    def _counterexample(self, truth, env, seed, t, want, got, err, rel) -> Counterexample:
        values = {}
        symbols = sorted(truth.free_symbols | self.rhs.free_symbols, key=_symbol_order)
        for sym in symbols:
            values[sym.name] = np.asarray(env.lookup(sym, t), dtype=float).tolist()
        return Counterexample(seed, t, dict(SIZES), values, np.asarray(want).tolist(),
                              np.asarray(got).tolist(), err, rel)

    # parameter terms: the uniform time shift --------------------------------------------
    def _parameter_shift(self, truth) -> int:
        """The shift k with found(t) = derived(t + k), from the deltas both sides carry."""
        votes: dict[int, int] = {}
        mine = {}
        for s in self.rhs.free_symbols:
            r = S.ref(s)
            if r is not None and r.kind in ("delta", "incoming", "value"):
                mine.setdefault((r.kind, r.name), []).append(r.shift)
        for s in truth.free_symbols:
            r = S.ref(s)
            if r is None or (r.kind, r.name) not in mine:
                continue
            weight = 3 if r.kind != "value" else 1
            for k in mine[(r.kind, r.name)]:
                votes[k - r.shift] = votes.get(k - r.shift, 0) + weight
        candidates = sorted(votes, key=lambda k: (-votes[k], abs(k)))
        for k in candidates[:3]:
            shifted = S.shift_time(truth, k)
            last = self._last(shifted, self.rhs)
            if self.ctx.canonical(shifted - self.rhs, last) == 0:
                return k
        return candidates[0] if candidates else 0

    # naming the wrong terms --------------------------------------------------------------
    def _name_differences(self, truth, flows):
        ctx = self.ctx
        expected = [_Piece(m, format_expression(term, self.cell), label)
                    for term, label in flows for m in sp.Add.make_args(ctx.prepare(term))
                    if m != 0]
        found = [_Piece(m, origin) for term, origin in self.terms
                 for m in sp.Add.make_args(ctx.prepare(term)) if m != 0]
        diffs = _Matcher(ctx, expected, found, self.target).run()
        self.result.differences = diffs
        d = ctx.prepare(truth - self.rhs)
        self.result.difference = format_expression(d, self.cell) if d != 0 else "0"


def _symbol_order(sym):
    r = S.ref(sym)
    rank = {"param": 0, "value": 1, "incoming": 2, "delta": 3}.get(r.kind if r else "", 4)
    return (rank, r.shift if r and r.shift is not None else 0, sym.name)


# --- matching terms by the delta they carry -----------------------------------------------

def _key(m: sp.Expr):
    """(carried deltas, operation) of a monomial: the operation is None (element-wise),
    ('T', A) for Aᵀ(...), ('N', A) for A(...), ('outer', position) for outer products."""
    factors = sp.Mul.make_args(m)
    linear = [f for f in factors if isinstance(f, (S.MatVec, S.MatTVec, S.Outer))]
    deltas = tuple(sorted((f for f in factors if _is_delta(f)), key=str))
    if not linear:
        return (deltas, None)
    if len(linear) == 1 and not deltas:
        f = linear[0]
        if isinstance(f, S.Outer):
            for pos, arg in enumerate(f.args):
                inner = tuple(sorted((g for g in sp.Mul.make_args(arg) if _is_delta(g)), key=str))
                if inner:
                    return (inner, ("outer", pos))
            return ((), ("outer", -1))
        inner = tuple(sorted((g for g in sp.Mul.make_args(f.args[1]) if _is_delta(g)), key=str))
        op = "T" if isinstance(f, S.MatTVec) else "N"
        return (inner, (op, f.args[0].name))
    return (deltas, ("other", str(m)))


def _is_delta(f) -> bool:
    r = S.ref(f) if isinstance(f, sp.Symbol) else None
    return r is not None and r.kind in ("delta", "incoming")


def _strip_linear(e: sp.Expr) -> sp.Expr:
    """Drop the matrix of every matrix product (to compare element-wise factors only)."""
    return e.replace(lambda x: isinstance(x, (S.MatVec, S.MatTVec)), lambda x: x.args[1])


class _Matcher:
    def __init__(self, ctx: _Context, expected: list[_Piece], found: list[_Piece], target):
        self.ctx, self.cell, self.target = ctx, ctx.cell, target
        self.expected, self.found = expected, found

    @staticmethod
    def group(pieces):
        out: dict = {}
        for p in pieces:
            out.setdefault(_key(p.expr), []).append(p)
        return out

    def lower(self):
        """Follow expansions where one side writes a delta the other expands."""
        for _ in range(8):
            ge, gf = self.group(self.expected), self.group(self.found)
            de = {s for k in ge for s in k[0]}
            df = {s for k in gf for s in k[0]}
            changed = False
            for side, own, other in ((self.expected, de, df), (self.found, df, de)):
                only = own - other
                lowered = {s for s in only
                           if S.ref(s).kind == "delta" and self.ctx.reaches(s, other - own)}
                if lowered:
                    new = []
                    for p in side:
                        hit = [s for s in p.expr.free_symbols if s in lowered]
                        if hit:
                            sub = {s: self.ctx.expand_once(s) for s in hit}
                            for m in sp.Add.make_args(self.ctx.prepare(p.expr.xreplace(sub))):
                                if m != 0:
                                    new.append(_Piece(m, p.origin, p.label))
                        else:
                            new.append(p)
                    side[:] = new
                    changed = True
            if not changed:
                return

    def run(self) -> list[Difference]:
        self.pair_time_steps_first()
        self.lower()
        ge, gf = self.group(self.expected), self.group(self.found)
        out: list[Difference] = list(self.early)
        for key in [k for k in ge if k in gf]:
            e = sp.Add(*[p.expr for p in ge[key]])
            f = sp.Add(*[p.expr for p in gf[key]])
            if sp.expand(e - f) != 0:
                kind, detail = self.classify(e, f, key)
                out.append(Difference(self.label(ge[key]), kind, _origins(ge[key]),
                                      _origins(gf[key]), detail))
        missing = [k for k in ge if k not in gf]
        extra = [k for k in gf if k not in ge]
        for km in list(missing):
            partner = self.partner(km, extra)
            if partner is None:
                continue
            kx, kind, detail = partner
            missing.remove(km)
            extra.remove(kx)
            out.append(Difference(self.label(ge[km]), kind, _origins(ge[km]), _origins(gf[kx]),
                                  detail))
        for km in missing:
            out.append(Difference(self.label(ge[km]), "missing", _origins(ge[km]), "",
                                  "this term of the derivation is not in your equation"))
        for kx in extra:
            out.append(Difference(self.extra_label(kx), "extra", "", _origins(gf[kx]),
                                  "the derivation has no such term"))
        return out

    # time steps are paired before following expansions, which would blur them
    def pair_time_steps_first(self):
        self.early: list[Difference] = []
        ge, gf = self.group(self.expected), self.group(self.found)
        missing = [k for k in ge if k not in gf]
        extra = [k for k in gf if k not in ge]
        used_e, used_f = set(), set()
        for km in missing:
            for kx in extra:
                if kx in used_f or km[1] != kx[1] or not km[0] or len(km[0]) != len(kx[0]):
                    continue
                names_m = [(S.ref(s).kind, S.ref(s).name) for s in km[0]]
                names_x = [(S.ref(s).kind, S.ref(s).name) for s in kx[0]]
                if names_m != names_x or km[0] == kx[0]:
                    continue
                by = {S.ref(b).shift - S.ref(a).shift for a, b in zip(km[0], kx[0])}
                if len(by) != 1:
                    continue
                k = by.pop()
                used_e.add(km)
                used_f.add(kx)
                when = f"{abs(k)} step{'s' * (abs(k) != 1)} {'later' if k > 0 else 'earlier'}"
                self.early.append(Difference(
                    self.label(ge[km]), "wrong time step", _origins(ge[km]), _origins(gf[kx]),
                    f"{_names(kx[0])} is {when} than {_names(km[0])}"))
                break
        self.expected = [p for p in self.expected if _key(p.expr) not in used_e]
        self.found = [p for p in self.found if _key(p.expr) not in used_f]

    def partner(self, km, extra):
        """An extra key that is the missing one with a wrong matrix, transpose or gate."""
        deltas_m, op_m = km
        for kx in extra:
            deltas_x, op_x = kx
            if deltas_m and deltas_m == deltas_x and op_m != op_x:
                if op_m and op_x and op_m[0] in "TN" and op_x[0] in "TN":
                    if op_m[1] == op_x[1]:
                        return kx, "wrong matrix order or transpose", (
                            f"{op_x[1]}{'.T' if op_x[0] == 'T' else ''} where "
                            f"{op_m[1]}{'.T' if op_m[0] == 'T' else ''} belongs")
                    return kx, "wrong gate or parameter", f"{op_x[1]} instead of {op_m[1]}"
                if op_m and op_x and op_m[0] == op_x[0] == "outer":
                    return kx, "wrong matrix order or transpose", (
                        "the outer product's factors are swapped (a transposed gradient)")
                if op_m is None or op_x is None:
                    return kx, "wrong matrix order or transpose", (
                        "a matrix product is missing" if op_x is None
                        else "a matrix product where an element-wise product belongs")
        for kx in extra:
            deltas_x, op_x = kx
            if op_m == op_x and deltas_m and deltas_x and len(deltas_m) == len(deltas_x):
                shifts_m = [S.ref(s).shift for s in deltas_m]
                shifts_x = [S.ref(s).shift for s in deltas_x]
                if sorted(shifts_m) == sorted(shifts_x):
                    return kx, "wrong gate or parameter", (
                        f"{_names(deltas_x)} instead of {_names(deltas_m)}")
        return None

    def classify(self, e, f, key) -> tuple[str, str]:
        """Why two groups carrying the same delta differ."""
        se, sf = sp.expand(_strip_linear(e)), sp.expand(_strip_linear(f))
        if key[1] and key[1][0] in "TN" and sp.expand(se - sf) == 0:
            return "wrong matrix order or transpose", (
                "an element-wise factor is on the wrong side of the matrix product "
                "(A (u ⊙ v) is not (A u) ⊙ v)")
        if key[1] and key[1][0] == "outer" and sp.expand(se - sf) == 0:
            return "wrong matrix order or transpose", "an element-wise factor moved across outer()"
        ratio = sp.factor(sp.cancel(sf / se)) if se != 0 else None
        if ratio is not None and not ratio.has(*key[0]):
            if ratio == -1:
                return "wrong coefficient or sign", "the sign is wrong"
            if ratio.is_Number:
                return ("wrong coefficient or sign",
                        f"{format_expression(ratio)} times the expected term")
            for cand, text in self.derivatives(se, sf):
                if sp.expand(ratio - cand) == 0:
                    return "missing or doubled activation derivative", (
                        f"an extra factor {text}: the derivative is applied twice")
                if sp.expand(ratio * cand - 1) == 0 or sp.expand(sp.cancel(1 / ratio) - cand) == 0:
                    return "missing or doubled activation derivative", f"{text} is missing"
            for c1, t1 in self.derivatives(se, sf):
                for c2, t2 in self.derivatives(se, sf):
                    if c1 != c2 and sp.expand(sp.cancel(ratio - c1 / c2)) == 0:
                        if t1.split("(")[0] == t2.split("(")[0] and t1 != t2:
                            return "wrong gate or parameter", f"{t1} where {t2} belongs"
                        return "missing or doubled activation derivative", (
                            f"{t1} where {t2} belongs")
        if sp.expand(_untimed(se) - _untimed(sf)) == 0:
            return "wrong time step", self.time_detail(se, sf)
        swapped = self.swapped(se, sf)
        if swapped:
            return "wrong gate or parameter", swapped
        return "wrong coefficient or sign", "the factors multiplying the delta differ"

    def derivatives(self, *exprs):
        """Activation derivatives that could be involved: v(1−v), 1−v², 1−tanh(a)²."""
        out = []
        seen = set()
        for e in exprs:
            for sym in e.free_symbols:
                r = S.ref(sym)
                if r is None or r.kind != "value" or sym in seen:
                    continue
                seen.add(sym)
                for cand in (sym * (1 - sym), 1 - sym ** 2):
                    text = format_expression(cand, self.cell)
                    if "dsigmoid" in text or "dtanh" in text:
                        out.append((cand, text))
            for th in e.atoms(sp.tanh):
                if th not in seen:
                    seen.add(th)
                    cand = 1 - th ** 2
                    out.append((cand, format_expression(cand, self.cell)))
            for sg in e.atoms(S.sigmoid):
                if sg not in seen:
                    seen.add(sg)
                    out.append((sg * (1 - sg), f"dsigmoid({format_expression(sg.args[0])})"))
        return out

    def time_detail(self, se, sf) -> str:
        ve = {(S.ref(s).name, S.ref(s).shift) for s in se.free_symbols
              if S.ref(s) and S.ref(s).kind == "value"}
        vf = {(S.ref(s).name, S.ref(s).shift) for s in sf.free_symbols
              if S.ref(s) and S.ref(s).kind == "value"}
        wrong = sorted(vf - ve)
        right = sorted(ve - vf)
        if wrong and right:
            return (f"{', '.join(f'{n}[{S.time_label(k)}]' for n, k in wrong)} where "
                    f"{', '.join(f'{n}[{S.time_label(k)}]' for n, k in right)} belongs")
        return "a factor is taken at the wrong step"

    def swapped(self, se, sf) -> str:
        def names(e):
            return {(S.ref(s).kind, S.ref(s).name) for s in e.free_symbols
                    if S.ref(s) is not None and S.ref(s).kind in ("param", "value")}
        ne, nf = names(se), names(sf)
        if ne != nf and (nf - ne) and (ne - nf):
            return (f"{', '.join(sorted(n for _, n in nf - ne))} instead of "
                    f"{', '.join(sorted(n for _, n in ne - nf))}")
        return ""

    def label(self, pieces) -> str:
        labels = []
        for p in pieces:
            if p.label and p.label not in labels:
                labels.append(p.label)
        if len(labels) == 1:
            return labels[0]
        if labels:
            return "; ".join(labels)
        return "no path of the derivation"

    def extra_label(self, key) -> str:
        deltas, op = key
        if not deltas:
            return "a term that carries no delta"
        via = f" ({op[1]}{'.T' if op[0] == 'T' else ''})" if op and op[0] in "TN" else ""
        return f"no path of the derivation goes through {_names(deltas)}{via}"


def _origins(pieces) -> str:
    out = []
    for p in pieces:
        if p.origin not in out:
            out.append(p.origin)
    text = " + ".join(out)
    return text.replace("+ -", "- ")


def _names(deltas) -> str:
    return ", ".join(s.name for s in deltas)


def _untimed(e: sp.Expr) -> sp.Expr:
    """Every value at step t (to see whether only the time steps differ)."""
    sub = {}
    for s in e.free_symbols:
        r = S.ref(s)
        if r is not None and r.kind == "value" and r.shift != 0:
            sub[s] = S.value(r.name, 0)
    return sp.expand(e.xreplace(sub))


# --- the command -----------------------------------------------------------------------------

def read_equations(equations: list[str], file: str | None, latex: bool) -> list[tuple[str, str]]:
    """[(where, equation)] from the command line and a file (one a line, comments skipped)."""
    out = [(f"equation {k}", e) for k, e in enumerate(equations, 1)]
    if file is not None:
        try:
            with open(file, encoding="utf-8") as fh:
                text = fh.read(1_000_001)
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"cannot read {file}: {exc}") from None
        if len(text) > 1_000_000:
            raise UserError(f"{file} is larger than 1 MB")
        for number, line in enumerate(text.splitlines(), 1):
            body = _strip_comment(line, latex).strip()
            if body:
                out.append((f"{file}:{number}", body))
    if not out:
        raise UserError("nothing to verify: give an EQUATION (like \"dc[t] = ...\") or --file F")
    return out


def _strip_comment(line: str, latex: bool) -> str:
    if latex:
        out = []
        for k, ch in enumerate(line):
            if ch == "%" and (k == 0 or line[k - 1] != "\\"):
                break
            out.append(ch)
        return "".join(out)
    return line.split("#", 1)[0]


def run_verify(cell, equations: list[str], file: str | None = None, latex: bool = False,
               as_json: bool = False) -> int:
    """`derive verify`: 0 when every equation is equal, 1 when any differs or is undecided,
    2 (a UserError) for bad input — every equation is parsed before any is verified."""
    ctx_cell = load_cell(cell)
    items = read_equations(list(equations or []), file, latex)
    parsed = []
    for where, text in items:
        try:
            parsed.append((text, _parse(ctx_cell, text, latex)))
        except UserError as exc:
            prefix = f"{where}: " if (file is not None or len(items) > 1) else ""
            raise UserError(f"{prefix}{exc}") from None
    ctx = context(ctx_cell)
    results = []
    for text, (target, rhs, terms) in parsed:
        started = time.perf_counter()
        try:
            v = _Verifier(ctx, text, target, rhs, terms).run()
        except UserError as exc:
            raise UserError(f"{text.strip()[:60]}: {exc}") from None
        v.seconds = round(time.perf_counter() - started, 4)
        results.append(v)
    code = 0 if all(v.equal for v in results) else 1
    if as_json:
        doc = {"cell": ctx_cell.name, "equal": code == 0,
               "counts": {verdict: sum(v.verdict == verdict for v in results)
                          for verdict in ("equal", "differs", "cannot decide")},
               "results": [v.to_dict() for v in results]}
        sys.stdout.write(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    else:
        sys.stdout.write("\n\n".join(v.report() for v in results) + "\n")
        if len(results) > 1:
            counts = {verdict: sum(v.verdict == verdict for v in results)
                      for verdict in ("equal", "differs", "cannot decide")}
            sys.stdout.write(f"\n{len(results)} equations: " + ", ".join(
                f"{n} {k}" for k, n in counts.items()) + "\n")
    return code
