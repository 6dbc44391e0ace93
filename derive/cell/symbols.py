"""The SymPy vocabulary of a derivation.

Every vector of a step is a commutative SymPy symbol, because every product between
vectors in a cell is element-wise (Hadamard) and so commutes:

* ``value("c", -1)``  is the forward value cᵗ⁻¹ (printed ``c[t-1]``),
* ``delta("c", +1)``  is δcᵗ⁺¹ = ∂J/∂cᵗ⁺¹ (printed ``dc[t+1]``),
* ``incoming("y")``   is Δᵗ, the gradient reaching an output from outside the
  recurrence (printed ``Delta[t]``),
* ``param("W_z")``    is a parameter (no time index).

Matrix products are the only non-element-wise operations; they are kept as
unevaluated, linear function applications: ``MatVec(W, v)`` is W v and
``MatTVec(R, v)`` is Rᵀ v; ``Outer(a, b)`` is a bᵀ summed over the batch.
Activations are ``sigmoid`` and ``tanh`` (derive's own, a SymPy ``tanh`` that does not
evaluate: see `tanh`); ``dsigmoid``/``dtanh`` are the derivatives written from the
pre-activation, as people write them by hand.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import sympy as sp


@dataclass(frozen=True)
class Ref:
    """What a symbol stands for: kind is 'value', 'delta', 'incoming' or 'param'."""

    kind: str
    name: str
    shift: int | None = None


_REFS: dict[sp.Symbol, Ref] = {}

#: the largest |k| of a time shift name[t+k] that the notation reads
MAX_SHIFT = 8


def time_label(shift: int, var: str = "t") -> str:
    """'t', 't+1', 't-1'."""
    return var if shift == 0 else f"{var}{shift:+d}"


def _symbol(text: str, ref: Ref) -> sp.Symbol:
    sym = sp.Symbol(text)
    known = _REFS.setdefault(sym, ref)
    if known != ref:  # pragma: no cover - guarded by the spec's name-clash rule
        raise ValueError(f"symbol {text!r} means both {known} and {ref}")
    return sym


def value(name: str, shift: int = 0) -> sp.Symbol:
    """The forward value name^(t+shift)."""
    return _symbol(f"{name}[{time_label(shift)}]", Ref("value", name, shift))


def delta(name: str, shift: int = 0) -> sp.Symbol:
    """δname^(t+shift) = ∂J/∂name^(t+shift)."""
    return _symbol(f"d{name}[{time_label(shift)}]", Ref("delta", name, shift))


#: the `name` of Δ's Ref in a cell with a single output: `Delta[t]` is the same symbol in
#: every such cell whatever its output is called (`output_of` says which it is).
ONLY_OUTPUT = ""


def incoming(output: str, shift: int = 0, *, single: bool = True) -> sp.Symbol:
    """Δ^(t+shift): the gradient reaching `output` from outside the recurrence.

    With a single output the symbol is `Delta[t]` and names no output (`ONLY_OUTPUT`),
    so cells whose outputs have different names share it; otherwise `Delta_<output>[t]`.
    """
    if single:
        return _symbol(f"Delta[{time_label(shift)}]", Ref("incoming", ONLY_OUTPUT, shift))
    return _symbol(f"Delta_{output}[{time_label(shift)}]", Ref("incoming", output, shift))


def output_of(r: Ref, outputs) -> str:
    """The output an incoming gradient's Ref reaches, among a cell's `outputs`."""
    return outputs[0] if r.name == ONLY_OUTPUT else r.name


def param(name: str) -> sp.Symbol:
    """A parameter (matrix or vector); parameters carry no time index."""
    return _symbol(name, Ref("param", name))


def ref(sym: sp.Basic) -> Ref | None:
    """What a symbol of this vocabulary stands for (None for foreign symbols)."""
    return _REFS.get(sym)


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


#: functions a cell spec may apply element-wise, by the name a spec writes
ACTIVATIONS = {"sigmoid": sigmoid, "tanh": tanh, "exp": sp.exp, "log": sp.log}

_LINEAR = (MatVec, MatTVec)


def shift_time(expr: sp.Expr, by: int) -> sp.Expr:
    """The same expression `by` steps later: cᵗ⁻¹ → cᵗ when by = 1."""
    if by == 0:
        return expr
    mapping = {}
    for sym in expr.free_symbols:
        r = ref(sym)
        if r is None or r.shift is None:
            continue
        if r.kind == "value":
            mapping[sym] = value(r.name, r.shift + by)
        elif r.kind == "delta":
            mapping[sym] = delta(r.name, r.shift + by)
        elif r.kind == "incoming":
            mapping[sym] = _symbol(re.sub(r"\[.*\]$", f"[{time_label(r.shift + by)}]", sym.name),
                                   Ref("incoming", r.name, r.shift + by))
    return expr.xreplace(mapping)


def distribute_linear(expr: sp.Expr) -> sp.Expr:
    """Canonical form of matrix products: push them through sums and scalar factors.

    A(u + v) → Au + Av and A(2u) → 2·Au, recursively, after expanding the
    argument; used to compare expressions that differ only in how they group the
    arguments of matrix products.
    """

    def rule(e):
        if not isinstance(e, _LINEAR + (Outer,)):
            return e
        if isinstance(e, Outer):
            a, b = (sp.expand(distribute_linear(x)) for x in e.args)
            terms = []
            for ta in sp.Add.make_args(a):
                ca, va = ta.as_coeff_Mul()
                for tb in sp.Add.make_args(b):
                    cb, vb = tb.as_coeff_Mul()
                    terms.append(ca * cb * Outer(va, vb))
            return sp.Add(*terms)
        matrix, arg = e.args
        arg = sp.expand(distribute_linear(arg))
        out = []
        for term in sp.Add.make_args(arg):
            coeff, rest = term.as_coeff_Mul()
            out.append(coeff * type(e)(matrix, rest))
        return sp.Add(*out)

    return expr.replace(lambda e: isinstance(e, _LINEAR + (Outer,)), rule)
