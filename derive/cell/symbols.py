"""The SymPy vocabulary of a derivation.

Every vector of a step is a commutative SymPy symbol, because every product between
vectors in a cell is element-wise (Hadamard) and so commutes:

* ``value("c", -1)``  is the forward value cᵗ⁻¹ (printed ``c[t-1]``),
* ``delta("c", +1)``  is δcᵗ⁺¹ = ∂J/∂cᵗ⁺¹ (printed ``dc[t+1]``),
* ``incoming("y")``   is Δᵗ, the gradient reaching an output from outside the
  recurrence (printed ``Delta[t]``),
* ``carried("c")``    is the gradient reaching cᵗ from the steps after t (printed
  ``carry_c[t]``; the verifier's canonical form stops there),
* ``param("W_z")``    is a parameter (no time index).

Each symbol carries what it stands for (`ref`), so its meaning never depends on other
cells loaded in the same process.

Matrix products are the only non-element-wise operations; they are kept as
unevaluated, linear function applications: ``MatVec(W, v)`` is W v and
``MatTVec(R, v)`` is Rᵀ v; ``Outer(a, b)`` is a bᵀ summed over the batch.
Activations are ``sigmoid`` and ``tanh`` (derive's own, a SymPy ``tanh`` that does not
evaluate: see `tanh`); ``dsigmoid``/``dtanh`` are the derivatives written from the
pre-activation, as people write them by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache

import sympy as sp


@dataclass(frozen=True)
class Ref:
    """What a symbol stands for: kind is 'value', 'delta', 'incoming', 'carried' or 'param'.

    `name` is the node, input, output, state or parameter; `shift` the time step relative
    to t (None for parameters).
    """

    kind: str
    name: str
    shift: int | None = None


class Symbol(sp.Symbol):
    """A symbol of the vocabulary: prints as its text (``da[t]``) and carries its `Ref`.

    The meaning is part of the symbol's identity, so ``value("da")`` and ``delta("a")``
    are two different symbols although both print ``da[t]``: there is no table of names,
    and any cells can be derived side by side in one process. (Within one cell the spec's
    name-clash rule keeps printed names unique.) They sort among themselves by their
    text, like plain SymPy symbols: the class keeps the name `Symbol`, which SymPy's
    canonical ordering of terms and its printers go by.
    """

    __slots__ = ("ref",)

    ref: Ref

    def __new__(cls, text: str, ref: Ref):
        return _make(cls, text, ref)

    def __getnewargs_ex__(self):
        return (self.name, self.ref), {}

    def _hashable_content(self):
        r = self.ref
        return super()._hashable_content() + ((r.kind, r.name, r.shift is None, r.shift or 0),)


@lru_cache(maxsize=1 << 16)
def _make(cls, text: str, ref: Ref) -> Symbol:
    """One object per (text, meaning): symbols are immutable, so they can be shared."""
    obj = sp.Symbol.__xnew__(cls, text)
    obj.ref = ref
    return obj


#: the largest |k| of a time shift name[t+k] that the notation reads
MAX_SHIFT = 8


def time_label(shift: int, var: str = "t") -> str:
    """'t', 't+1', 't-1'."""
    return var if shift == 0 else f"{var}{shift:+d}"


def value(name: str, shift: int = 0) -> Symbol:
    """The forward value name^(t+shift)."""
    return Symbol(f"{name}[{time_label(shift)}]", Ref("value", name, shift))


def delta(name: str, shift: int = 0) -> Symbol:
    """δname^(t+shift) = ∂J/∂name^(t+shift)."""
    return Symbol(f"d{name}[{time_label(shift)}]", Ref("delta", name, shift))


def incoming(output: str, shift: int = 0, *, single: bool = True) -> Symbol:
    """Δ^(t+shift): the gradient reaching `output` from outside the recurrence.

    Printed `Delta[t]` when the cell has a single output, otherwise `Delta_<output>[t]`.
    """
    text = "Delta" if single else f"Delta_{output}"
    return Symbol(f"{text}[{time_label(shift)}]", Ref("incoming", output, shift))


def carried(state: str, shift: int = 0) -> Symbol:
    """carry_s^(t+shift): the gradient reaching state s at that step from the steps after it."""
    return Symbol(f"carry_{state}[{time_label(shift)}]", Ref("carried", state, shift))


def param(name: str) -> Symbol:
    """A parameter (matrix or vector); parameters carry no time index."""
    return Symbol(name, Ref("param", name))


def ref(sym: sp.Basic) -> Ref | None:
    """What a symbol of this vocabulary stands for (None for anything else)."""
    return sym.ref if isinstance(sym, Symbol) else None


def shift_time(expr: sp.Expr, by: int) -> sp.Expr:
    """The same expression `by` steps later: cᵗ⁻¹ → cᵗ when by = 1 (values, deltas, Δ and
    carried gradients move; parameters and foreign symbols stay)."""
    if by == 0:
        return expr
    mapping = {}
    for sym in expr.free_symbols:
        r = ref(sym)
        if r is not None and r.shift is not None:
            text = sym.name[:sym.name.rindex("[")]
            mapping[sym] = Symbol(f"{text}[{time_label(r.shift + by)}]",
                               replace(r, shift=r.shift + by))
    return expr.xreplace(mapping)


# --- functions -----------------------------------------------------------------

class sigmoid(sp.Function):
    """The logistic function σ(x) = 1 / (1 + e^(−x)); σ' = σ(1 − σ)."""

    nargs = 1

    def fdiff(self, argindex=1):
        s = sigmoid(self.args[0])
        return s * (1 - s)

    def _eval_rewrite_as_exp(self, arg, **kwargs):
        return 1 / (1 + sp.exp(-arg))


class tanh(sp.tanh):
    """tanh(x), with tanh' = 1 − tanh², that SymPy does not try to evaluate.

    SymPy's own ``tanh`` evaluates every new application (looking for multiples of iπ
    with assumption queries, ``Mod`` and polynomial gcds), and the cost of that grows
    exponentially with the nesting depth: ``tanh(tanh(…(a)…))`` 9 deep took 7 s to derive,
    10 deep 30 s. Derive's symbols carry no assumptions, so none of that can succeed;
    this subclass keeps only the structural rules (tanh(0) = 0, tanh(−x) = −tanh(x)) and
    answers assumption queries from its argument's alone, so every operation on it is
    linear in the size of the expression. It is still an ``sp.tanh`` for ``isinstance``
    and prints as ``tanh`` everywhere (printers dispatch on the class name).
    """

    nargs = 1

    @classmethod
    def eval(cls, arg):
        if arg.is_zero is True and arg.is_Number:
            return sp.S.Zero
        if arg.could_extract_minus_sign():
            return -cls(-arg)
        return None

    def fdiff(self, argindex=1):
        return 1 - tanh(self.args[0]) ** 2

    def _real_arg(self):
        return self.args[0].is_extended_real

    def _eval_is_extended_real(self):
        return True if self._real_arg() else None

    _eval_is_real = _eval_is_finite = _eval_is_extended_real

    def _eval_is_zero(self):
        return self.args[0].is_zero if self._real_arg() else None

    def _eval_is_positive(self):
        return self.args[0].is_extended_positive if self._real_arg() else None

    def _eval_is_negative(self):
        return self.args[0].is_extended_negative if self._real_arg() else None


class dsigmoid(sp.Function):
    """σ'(x) = σ(x)(1 − σ(x)), written from the pre-activation x."""

    nargs = 1

    @classmethod
    def eval(cls, arg):
        s = sigmoid(arg)
        return s * (1 - s)


class dtanh(sp.Function):
    """tanh'(x) = 1 − tanh(x)², written from the pre-activation x."""

    nargs = 1

    @classmethod
    def eval(cls, arg):
        return 1 - tanh(arg) ** 2


class MatVec(sp.Function):
    """A v: a matrix parameter times a vector (a GEMM over the batch)."""

    nargs = 2


class MatTVec(sp.Function):
    """Aᵀ v: the adjoint of a matrix product."""

    nargs = 2


class Outer(sp.Function):
    """a bᵀ summed over the batch: a per-step contribution to a matrix gradient."""

    nargs = 2


class step(sp.Function):
    """The unit step [v > 0] (1 where v > 0, else 0): relu' written from relu's output.

    Its derivative is zero (wherever it has one): a cell's gradients never flow through it.
    """

    nargs = 1

    @classmethod
    def eval(cls, arg):
        if arg.is_Number:
            return sp.S.One if arg > 0 else sp.S.Zero
        if isinstance(arg, step):  # [[v > 0] > 0] = [v > 0]
            return arg
        return None

    def fdiff(self, argindex=1):
        return sp.S.Zero


class relu(sp.Function):
    """relu(x) = max(x, 0); relu'(x) = [x > 0] = [relu(x) > 0], written from the output
    (``step(h)`` for h = relu(h̄)). At the kink x = 0 the derivative taken is 0."""

    nargs = 1

    @classmethod
    def eval(cls, arg):
        if arg.is_Number:
            return arg if arg > 0 else sp.S.Zero
        return None

    def fdiff(self, argindex=1):
        return step(relu(self.args[0]))


class softplus(sp.Function):
    """softplus(x) = log(1 + eˣ); softplus'(x) = σ(x).

    The derivative is written as σ of the argument rather than from the output
    (1 − e^(−softplus(x))), which loses every digit where softplus(x) is small.
    """

    nargs = 1

    def fdiff(self, argindex=1):
        return sigmoid(self.args[0])

    def _eval_rewrite_as_exp(self, arg, **kwargs):
        return sp.log(1 + sp.exp(arg))


class sqrt(sp.Function):
    """√x, with √x' = 1 / (2√x) written from the output; (√x)² = x.

    A function of its own (SymPy's sqrt is the power x**(1/2), whose derivative
    x**(−1/2)/2 would not be written from the stored output); `canonical` reads the
    powers x**(k/2) of hand derivations as √x**k.
    """

    nargs = 1

    @classmethod
    def eval(cls, arg):
        if arg.is_Number and arg.is_zero:
            return sp.S.Zero
        if arg.is_Number and arg == 1:
            return sp.S.One
        return None

    def fdiff(self, argindex=1):
        return 1 / (2 * sqrt(self.args[0]))

    def _eval_power(self, e):
        if e.is_Integer and e.is_even:
            return self.args[0] ** (e / 2)
        return None


class drelu(sp.Function):
    """relu'(x) = [x > 0], written from the pre-activation x (as dsigmoid, dtanh)."""

    nargs = 1

    @classmethod
    def eval(cls, arg):
        return step(relu(arg))


class Mean(sp.Function):
    """mean(v): the mean of v over the hidden units of one batch row, broadcast back to
    every unit (a vector whose N entries are equal).

    Linear, like a matrix product (it is v ↦ (1/N) 1 1ᵀ v), and its own adjoint: the
    gradient of m = mean(v) reaches v as δv = mean(δm), each unit getting Σⱼ δmⱼ / N.
    Printed ``mean(...)`` (text) and ``\\operatorname{mean}`` (LaTeX).
    """

    nargs = 1

    @classmethod
    def eval(cls, arg):
        if arg.is_Number:  # the mean of a constant row
            return arg
        if isinstance(arg, Mean):  # already constant along the row
            return arg
        return None


#: functions a cell spec may apply element-wise, by the name a spec writes
ACTIVATIONS = {"sigmoid": sigmoid, "tanh": tanh, "exp": sp.exp, "log": sp.log,
               "relu": relu, "softplus": softplus, "sqrt": sqrt}
#: reductions over the hidden units a cell spec may apply (a vector in, a row-constant
#: vector out)
REDUCTIONS = {"mean": Mean}

_LINEAR = (MatVec, MatTVec)


def distribute_linear(expr: sp.Expr, constants: frozenset[str] = frozenset()) -> sp.Expr:
    """Canonical form of matrix products: push them through sums and scalar factors.

    A(u + v) → Au + Av and A(2u) → 2·Au, recursively, after expanding the
    argument; used to compare expressions that differ only in how they group the
    arguments of matrix products. Means likewise (mean(a + 2b) → mean(a) + 2·mean(b)),
    their row-constant factors taken outside (`row_constant`; `constants` names the
    nodes whose values are row-constant).
    """

    def rule(e):
        if not isinstance(e, _LINEAR + (Outer, Mean)):
            return e
        if isinstance(e, Mean):
            return sp.Add(*[mean_of(term, constants) for term in
                            sp.Add.make_args(sp.expand(distribute_linear(e.args[0], constants)))])
        if isinstance(e, Outer):
            a, b = (sp.expand(distribute_linear(x, constants)) for x in e.args)
            terms = []
            for ta in sp.Add.make_args(a):
                ca, va = ta.as_coeff_Mul()
                for tb in sp.Add.make_args(b):
                    cb, vb = tb.as_coeff_Mul()
                    terms.append(ca * cb * Outer(va, vb))
            return sp.Add(*terms)
        matrix, arg = e.args
        arg = sp.expand(distribute_linear(arg, constants))
        out = []
        for term in sp.Add.make_args(arg):
            coeff, rest = term.as_coeff_Mul()
            out.append(coeff * type(e)(matrix, rest))
        return sp.Add(*out)

    return expr.replace(lambda e: isinstance(e, _LINEAR + (Outer, Mean)), rule)


def half_powers(expr: sp.Expr) -> sp.Expr:
    """x**(k/2) → sqrt(x)**k (k odd), so that a hand-written power meets derive's `sqrt`."""
    return expr.replace(
        lambda e: e.is_Pow and e.exp.is_Rational and e.exp.q == 2 and not e.base.is_number,
        lambda e: sqrt(e.base) ** e.exp.p)


def row_constant(expr: sp.Expr, constants: frozenset[str] = frozenset()) -> bool:
    """Whether `expr` is equal across the hidden units of a row: numbers, means, the
    values of the nodes named in `constants` (at any step), and anything built from
    them only (like 1/√(mean(d²) + ε))."""
    if expr.is_Number or isinstance(expr, Mean) or expr in (sp.pi, sp.E):
        return True
    if expr.is_Symbol:
        r = ref(expr)
        return r is not None and r.kind == "value" and r.name in constants
    if expr.is_Atom:
        return False
    return all(row_constant(a, constants) for a in expr.args)


def mean_of(expr: sp.Expr, constants: frozenset[str] = frozenset()) -> sp.Expr:
    """mean(k ⊙ v) = k ⊙ mean(v): the mean of a product, its row-constant factors k
    (see `row_constant`) taken outside."""
    outside, inside = [], []
    for f in sp.Mul.make_args(expr):
        (outside if row_constant(f, constants) else inside).append(f)
    return sp.Mul(*outside) * (Mean(sp.Mul(*inside)) if inside else 1)
