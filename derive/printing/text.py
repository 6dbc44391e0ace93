"""Printing in the text notation: display-only expressions, the order of factors and terms, `TextPrinter`."""

from __future__ import annotations

import sympy as sp
from sympy.printing.str import StrPrinter

from derive.cell import symbols as S
from derive.cell.canonical import Activations
from derive.cell.spec import Cell

_TOP = r"^{\top}"


# --- display-only expressions: sums and products that keep their order ----------------

class Ordered(sp.Expr):
    """A sum printed in the order of its terms (display only; `plain` makes it an Add)."""

    is_commutative = True

    def __new__(cls, *terms):
        return sp.Expr.__new__(cls, *terms)


class Product(sp.Expr):
    """A product printed in the order of its factors (display only)."""

    is_commutative = True

    def __new__(cls, *factors):
        return sp.Expr.__new__(cls, *factors)


def ordered(terms) -> sp.Expr:
    """The sum of `terms` in this order; nested ordered sums are spliced in."""
    flat = []
    for term in terms:
        flat.extend(term.args if isinstance(term, Ordered) else [term])
    if not flat:
        return sp.S.Zero
    return flat[0] if len(flat) == 1 else Ordered(*flat)


#: activation derivatives folded from their expansion (`derive.verification.notation.fold_derivatives`):
#: dsigmoid(f_bar[t]) for f[t]*(1 - f[t]), dtanh(c[t]) for 1 - tanh(c[t])**2 (display only)
DSIGMOID = sp.Function("dsigmoid")
DTANH = sp.Function("dtanh")


def plain(expr: sp.Expr) -> sp.Expr:
    """The ordinary SymPy expression of a display expression."""
    return expr.replace(lambda e: isinstance(e, (Ordered, Product)),
                        lambda e: (sp.Add if isinstance(e, Ordered) else sp.Mul)(*e.args))


# --- the order of factors and terms --------------------------------------------------

def _split(expr: sp.Expr) -> tuple[sp.Rational, list[sp.Expr], list[sp.Expr]]:
    """(coefficient, numerator factors in print order, denominator factors)."""
    if isinstance(expr, Product):
        coeff = sp.S.One
        num, den = [], []
        for f in expr.args:
            if f.is_Rational:
                coeff *= f
            elif f.is_Pow and f.exp.is_Rational and f.exp < 0:
                den.append(f.base ** -f.exp)
            else:
                num.append(f)
        return coeff, num, den
    coeff, rest = expr.as_coeff_Mul()
    if not coeff.is_Rational:
        coeff, rest = sp.S.One, expr
    num, den = [], []
    for f in sp.Mul.make_args(rest):
        if f.is_Pow and f.exp.is_Rational and f.exp < 0:
            den.append(f.base ** -f.exp)
        elif f != 1:
            num.append(f)
    rank = {f: (_rank(f, num), _within_rank(f)) for f in num}
    return coeff, sorted(num, key=rank.__getitem__), den


def _within_rank(f: sp.Expr) -> tuple:
    """Order within a rank: symbols and their powers by name and step, then the rest."""
    base = f.base if f.is_Pow else f
    r = S.ref(base) if base.is_Symbol else None
    return (0, r.name, r.shift or 0) if r is not None else (1, "", 0)


#: kinds of symbols that are gradients: deltas, Δ and (in the verify reports) the gradient
#: carried into a state from later steps
_GRADIENTS = ("delta", "incoming", "carried")


def _rank(f: sp.Expr, factors: list[sp.Expr]) -> int:
    """Print position of a factor: parameters, deltas, values, activation derivatives."""
    r = S.ref(f) if f.is_Symbol else None
    if r is not None and r.kind == "param":
        return 0
    if (r is not None and r.kind in _GRADIENTS) or isinstance(
            f, (Ordered, S.MatVec, S.MatTVec)) or (f.is_Add and _carries_gradient(f)):
        return 1
    if f.is_Symbol and (1 - f) in factors:
        return 3                                   # v of σ' = v ⊙ (1 − v)
    if isinstance(f, (DSIGMOID, DTANH)):
        return 4
    if f.is_Add:
        g = 1 - f
        if g in factors or (g.is_Pow and g.exp == 2):
            return 4                               # (1 − v) of σ', 1 − v² of tanh'
    return 2


def _carries_gradient(expr: sp.Expr) -> bool:
    return any((r := S.ref(s)) is not None and r.kind in _GRADIENTS for s in expr.free_symbols)


def _terms(expr: sp.Expr, key=None) -> list[sp.Expr]:
    """Terms of a sum in print order: given order for `Ordered`, else by `key` (a sort key
    of terms) or positive first."""
    if isinstance(expr, Ordered):
        return list(expr.args)
    if key is not None:
        return sorted(sp.Add.make_args(expr), key=key)
    terms = list(expr.as_ordered_terms())
    return sorted(terms, key=_negative)


def _negative(term: sp.Expr) -> bool:
    return bool(_split(term)[0].is_negative)


def _negate(term: sp.Expr) -> sp.Expr:
    if isinstance(term, Product):
        coeff, *_ = _split(term)
        rest = [f for f in term.args if not f.is_Rational]
        if coeff != -1:
            rest.insert(0, -coeff)
        return rest[0] if len(rest) == 1 else Product(*rest)
    return -term


class _Arithmetic:
    """Sums, products and powers, shared by both printers (subclasses set the syntax)."""

    def _print_Ordered(self, expr):
        return self._sum(expr)

    def _print_Add(self, expr, order=None):
        return self._sum(expr)

    def _sum(self, expr) -> str:
        out = []
        for k, term in enumerate(_terms(expr, self._settings.get("sum_key"))):
            if _negative(term):
                out.append(("-" if k == 0 else " - ") + self._factor(_negate(term), lead=k == 0))
            else:
                out.append(("" if k == 0 else " + ") + self._print(term))
        return "".join(out)

    def _print_Product(self, expr):
        return self._product(expr)

    def _print_Mul(self, expr):
        return self._product(expr)

    def _product(self, expr) -> str:
        coeff, num, den = _split(expr)
        sign = "-" if coeff.is_negative else ""
        coeff = abs(coeff)
        if not num and not den:
            return sign + self._print(coeff)
        return sign + self._join(coeff, num, den, bool(sign))

    def _factor(self, expr, lead=False) -> str:
        """`expr` as printed after a minus sign."""
        if isinstance(expr, (S.MatVec, S.MatTVec)) and lead:
            return self._wrap_linear(self._print(expr))
        if isinstance(expr, (Ordered, sp.Add)):
            return self._paren(self._print(expr))
        return self._print(expr)

    def _print_Pow(self, expr, rational=False):
        if expr.exp.is_Rational and expr.exp < 0:
            return self._product(expr)
        return self._power(expr.base, expr.exp)

    def _print_MatVec(self, expr):
        return self._linear(expr, False)

    def _print_MatTVec(self, expr):
        return self._linear(expr, True)


# --- text notation -------------------------------------------------------------------

def _call_or_name(e: sp.Expr) -> bool:
    """A symbol or a function call (not a matrix product): needs no parentheses."""
    return e.is_Symbol or (isinstance(e, sp.Function)
                           and not isinstance(e, (S.MatVec, S.MatTVec)))


class TextPrinter(_Arithmetic, StrPrinter):
    """Prints the text notation of hand derivations (what `derive.verification.notation` parses).

    Setting ``sum_key``: a sort key for the terms of plain SymPy sums (default: SymPy's
    order, positive terms first); `Ordered` sums keep their order.
    """

    _default_settings = {**StrPrinter._default_settings, "sum_key": None}

    def _paren(self, s: str) -> str:
        return f"({s})"

    def _wrap_linear(self, s: str) -> str:
        return f"({s})"

    def _item(self, f, many: bool) -> str:
        s = self._print(f)
        if isinstance(f, (Ordered, sp.Add)) or (
                isinstance(f, (Product, sp.Mul)) and many):
            return self._paren(s)
        if isinstance(f, (S.MatVec, S.MatTVec)) and many:
            return self._wrap_linear(s)
        return s

    def _join(self, coeff, num, den, negative: bool) -> str:
        many = len(num) + (coeff.p != 1) + negative > 1
        parts = ([str(coeff.p)] if coeff.p != 1 else []) + [self._item(f, many) for f in num]
        text = "*".join(parts) if parts else "1"
        if coeff.q != 1:
            den = [sp.Integer(coeff.q)] + den
        if den:
            d = "*".join(self._item(f, len(den) > 1) for f in den)
            text += "/" + (f"({d})" if len(den) > 1 else d)
        return text

    def _power(self, base, exp) -> str:
        b = self._print(base)
        if not _call_or_name(base):
            b = f"({b})"
        e = self._print(exp)
        return f"{b}**{e if exp.is_Integer else f'({e})'}"

    def _linear(self, expr, transposed: bool) -> str:
        matrix, arg = expr.args
        a = self._print(arg)
        if not _call_or_name(arg):
            a = f"({a})"
        return f"{matrix.name}{'.T' if transposed else ''} @ {a}"

    def _print_Outer(self, expr):
        return f"outer({self._print(expr.args[0])}, {self._print(expr.args[1])})"

    def _print_Mean(self, expr):
        return f"mean({self._print(expr.args[0])})"

    def _print_Rational(self, expr):
        return f"{expr.p}/{expr.q}" if expr.q != 1 else str(expr.p)



_TEXT = TextPrinter()


def text(expr: sp.Expr) -> str:
    """`expr` in the text notation."""
    return _TEXT.doprint(expr)


# --- printing in the text notation (by derive.printing's TextPrinter) -------------------

def _term_key(term: sp.Expr, order: dict[str, int]):
    """Order of terms in a sum: Δ first, then by the delta they carry (step, forward order)."""
    syms = sorted(((0 if r.kind == "incoming" else 1, r.shift or 0, order.get(r.name, 99), s.name)
                   for s in term.free_symbols for r in [S.ref(s)]
                   if r is not None and r.kind in ("delta", "incoming", "carried")))
    if not syms:
        negative = term.could_extract_minus_sign()
        return (2, 0 if term.is_Number else 1 + negative, 0, "", str(term))
    return syms[0] + (str(term),)


def fold_derivatives(expr: sp.Expr, cell: Cell | None = None) -> sp.Expr:
    """For display: v*(1 − v) → dsigmoid(v̄) and 1 − v² → dtanh(v̄) when v = σ(v̄) / tanh(v̄)
    is a node of `cell`, and 1 − tanh(a)² → dtanh(a)."""
    activations = Activations(cell) if cell is not None else None

    def activation(v: sp.Expr, kind: type) -> sp.Expr | None:
        """v̄ when v is the stored output kind(v̄) of an activation node (else None)."""
        app = activations.of(v) if activations is not None else None
        return app.args[0] if isinstance(app, kind) else None

    def fold_mul(m: sp.Expr) -> sp.Expr:
        factors = list(sp.Mul.make_args(m))
        changed = True
        while changed:
            changed = False
            for i, f in enumerate(factors):
                pre = activation(f, S.sigmoid)
                if pre is not None:
                    for j, g in enumerate(factors):
                        if j != i and sp.expand(g - (1 - f)) == 0:
                            new = DSIGMOID(pre)
                            factors = [h for k, h in enumerate(factors) if k not in (i, j)]
                            factors.append(new)
                            changed = True
                            break
                if changed:
                    break
        out = []
        for f in factors:
            if isinstance(f, sp.Add) and len(f.args) == 2 and 1 in f.args:
                other = f - 1
                if isinstance(other, sp.Mul) and other.args[0] == -1 and len(other.args) == 2:
                    sq = other.args[1]
                    if isinstance(sq, sp.Pow) and sq.exp == 2:
                        b = sq.base
                        if isinstance(b, sp.tanh):
                            out.append(DTANH(b.args[0]))
                            continue
                        pre = activation(b, sp.tanh)
                        if pre is not None:
                            out.append(DTANH(pre))
                            continue
            out.append(f)
        return sp.Mul(*out)

    def rule(e):
        return fold_mul(e) if isinstance(e, sp.Mul) else e

    out = sp.sympify(expr).replace(lambda e: isinstance(e, sp.Mul), rule)
    return out if isinstance(out, sp.Mul) else fold_mul(out)


def format_expression(expr: sp.Expr, cell: Cell | None = None) -> str:
    """`expr` in the text notation (parses back); derivatives folded when `cell` is given."""
    expr = sp.sympify(expr)
    order: dict[str, int] = {}
    if cell is not None:
        expr = fold_derivatives(expr, cell)
        order = {n: i for i, n in enumerate([*cell.inputs, *cell.nodes])}
    return TextPrinter({"sum_key": lambda term: _term_key(term, order)}).doprint(expr)
