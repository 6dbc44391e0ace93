"""Stage 8 — verify: the verdict on a hand derivation against the derived truth.

    v = verify("lstm", "dc[t] = dy[t]*o[t]*dtanh(c[t]) + p_o*do_bar[t] + ...")
    v.equal            # True, False, or None (cannot decide; v.reason says why)
    v.differences      # each wrong term: its flow, a classification, expected and found
    v.counterexample   # values at which the two sides differ, and by how much

An equation is read by `derive.verification.equation` (text notation or LaTeX); both sides are
compared in the canonical form across steps of `derive.verification.context`; a wrong one is
diagnosed by `derive.verification.diagnosis`; `derive.verification.report` holds the result.

**Meaning of "equal".** The sides are symbolically equal when their canonical difference
is 0. The decision is always confirmed numerically in float64: both sides are evaluated
at interior steps of two random unrolled sequences (`Context.world`). A transpose, or the
order of a matrix product and an element-wise product, cannot hide there. Verdicts:

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
"""

from __future__ import annotations

import time

import numpy as np
import sympy as sp

from derive import numeric
from derive.cell import symbols as S
from derive.errors import ExpressionError
from derive.printing.text import format_expression
from derive.verification.context import SIZES, Context, context
from derive.verification.context import truth as context_truth
from derive.verification.diagnosis import differences
from derive.verification.equation import Equation, read_equation
from derive.verification.notation import expansion_size
from derive.verification.report import Counterexample, Verification

RTOL = 1e-9          # numeric agreement: max|found − expected| ≤ RTOL · max(max|expected|, 1)
SEEDS = (101, 202)   # the random sequences of the numeric confirmation
MAX_CANONICAL_TERMS = 40_000
MAX_PRINTED_TERMS = 400  # terms of a canonical difference written into the result
MAX_EXP_FORM_OPS = 80  # operations of a difference that sp.simplify may try (its time is
                       # unbounded: a 4000-operation exp form did not finish in 10 minutes)


def verify(cell, equation: str, latex: bool = False) -> Verification:
    """Verify one hand-derived equation of `cell` (a Cell, shipped name or spec path).

    Raises `UserError` (an `ExpressionError`) for input that does not follow the notation.
    """
    started = time.perf_counter()
    ctx = context(cell)
    result = check(ctx, equation, read_equation(ctx.cell, equation, latex))
    result.seconds = round(time.perf_counter() - started, 4)
    return result


def check(ctx: Context, equation: str, parsed: Equation) -> Verification:
    """The verdict on an equation already read (`read_equation`) for the context's cell."""
    started = time.perf_counter()
    result = _Verifier(ctx, equation, parsed).run()
    result.seconds = round(time.perf_counter() - started, 4)
    return result


def _shifts(expr: sp.Expr, kinds=("value", "delta", "incoming")) -> list[int]:
    return [r.shift for s in expr.free_symbols for r in [S.ref(s)]
            if r is not None and r.kind in kinds]


class _Verifier:
    def __init__(self, ctx: Context, equation: str, parsed: Equation):
        self.ctx, self.cell = ctx, ctx.cell
        self.equation = equation
        self.target, self.rhs, self.terms = parsed
        self.result = Verification(ctx.cell.name, equation, self.target.label)

    def run(self) -> Verification:
        ctx, target, res = self.ctx, self.target, self.result
        truth, flows = context_truth(ctx, target)
        self._check_initial_references()
        shift = self._parameter_shift(truth) if target.kind == "param" else 0
        truth = S.shift_time(truth, shift)
        flows = [(S.shift_time(e, shift), label) for e, label in flows]
        res.shift = shift
        res.expected = format_expression(truth, self.cell)
        res.found = format_expression(ctx.activations.stored(self.rhs), self.cell)

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
        return self.ctx.replace_deltas(expr, last)

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
        if expansion_size(reduced) > 200:
            return ""
        unstored = ctx.activations.unstored(reduced)
        if unstored.has(S.Mean):  # means that unstoring exposed (s → √(mean(d²) + ε))
            unstored = ctx.activations.unstored(S.distribute_linear(
                ctx.forward_reduced(unstored, lowest), ctx.activations.constants))
        as_exp = unstored.rewrite(sp.exp)
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
        self.result.differences = differences(ctx, flows, self.terms, self.target)
        d = ctx.prepare(truth - self.rhs)
        self.result.difference = format_expression(d, self.cell) if d != 0 else "0"


def _symbol_order(sym):
    r = S.ref(sym)
    rank = {"param": 0, "value": 1, "incoming": 2, "delta": 3}.get(r.kind if r else "", 4)
    return (rank, r.shift if r and r.shift is not None else 0, sym.name)
