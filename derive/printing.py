r"""Stage 4a — printing: the derivation as text notation, LaTeX, Markdown and JSON.

`equations(d, fmt, expanded=False)` is `derive equations`: one equation a line for
``text`` (the notation `derive verify` reads) and ``latex`` (the notation
`derive verify --latex` reads), the Markdown document for ``markdown`` and one JSON
document for ``json``. Two SymPy printers know derive's vocabulary
(`derive.symbols`): `TextPrinter` and `LatexPrinter`.

Order. SymPy sorts the terms of a sum alphabetically; the printers do not. A backward
equation is printed flow by flow, as the paper writes it: the external gradient Δ
first, then the flows through consumers of the same step (outputs first, then the
spec's order), then the flows through the next step (spec order)::

    δcᵗ = δyᵗ⊙oᵗ⊙h'(cᵗ) + p_o⊙δōᵗ + p_i⊙δīᵗ⁺¹ + p_f⊙δf̄ᵗ⁺¹ + δcᵗ⁺¹⊙fᵗ⁺¹

Within a product: number, parameters, deltas (and Δ, matrix products, substituted
sums and any sum carrying a delta), forward values (symbols by name and step first),
and last the activation derivative written from the stored output (oᵗ⊙(1 − oᵗ) for
σ'(ōᵗ), 1 − (zᵗ)² for tanh'(z̄ᵗ)) or folded (`DSIGMOID`, `DTANH`: the verify reports).
A per-step parameter term is printed as ∂uᵗ/∂P ⊙ δuᵗ (cᵗ⁻¹ ⊙ δīᵗ). The forward pass
keeps the order of the terms and factors of the spec. Inner sums print their positive
terms first (1 − oᵗ); the setting ``sum_key`` of `TextPrinter` orders plain sums
otherwise (`derive.notation.format_expression`: Δ first, then by the delta carried).

Expanded forms are printed as the structured form with every delta of step t replaced,
in place and in parentheses, by its own expanded form: forward values, Δ and the
deltas of step t+1 only, nothing multiplied out.

Text notation (one equation a line, ``#`` comments; design.md)::

    dc[t] = dy[t]*o[t]*(1 - tanh(c[t])**2) + p_o*do_bar[t] + ... + dc[t+1]*f[t+1]
    dy[t] = Delta[t] + R_z.T @ dz_bar[t+1] + ...
    dW_z[t] = outer(dz_bar[t], x[t])        # per-step terms: dW_z = sum over t, batch
    dp_i[t] = c[t-1]*di_bar[t]
    dc0 = p_i*di_bar[t] + p_f*df_bar[t] + dc[t]*f[t]     # right side at step t = 0

A matrix product that is a factor of a product, or is negated alone, is parenthesized
(``-(R_z.T @ v)``, ``a*(W @ v)``); its argument is parenthesized unless it is a
single name or a call.

LaTeX notation (exactly these forms are printed; `derive.latex` parses them):

==========================  ================================================
forward value               ``x^{(t)}``, ``c^{(t-1)}``, ``f^{(t+1)}``
node ``o_bar``              ``\bar{o}^{(t)}``; ``gate_bar`` → ``\bar{\mathit{gate}}``
multi-letter name           ``\mathit{name}`` (``_`` written ``\_``)
delta                       ``\delta c^{(t)}`` (a space before a letter),
                            ``\delta\bar{i}^{(t+1)}``, ``\delta\mathit{name}^{(t)}``
external gradient           ``\Delta^{(t)}``; with several outputs ``\Delta_{y}^{(t)}``
parameter                   ``W_{z}``, ``R_{ii}``, ``p_{i}``, ``b_{hr}``, ``W``
                            (head before the first ``_``, rest in ``_{...}``)
matrix product              ``W_{z} x^{(t)}``; transposed ``R_{z}^{\top} \delta\bar{z}^{(t+1)}``
                            (juxtaposition, one space); an argument that is not a
                            single symbol in ``\left(...\right)``; a matrix product
                            that is one factor among others of ``\odot`` in
                            ``\left(...\right)``
element-wise product        `` \odot `` between factors
number times vector         juxtaposition: ``2 x^{(t)}``
sum                         `` + `` and `` - ``; leading ``-``
parentheses                 ``\left(...\right)`` (no inner spaces)
division                    ``\frac{num}{den}`` (both ``\odot`` products)
power                       ``^{2}`` after the atom: ``\tanh\left(c^{(t)}\right)^{2}``,
                            ``p_{i}^{2}``; a time-indexed base is wrapped:
                            ``\left(z^{(t)}\right)^{2}``
functions                   ``\sigma\left(...\right)``, ``\tanh\left(...\right)``,
                            ``\exp\left(...\right)``, ``\log\left(...\right)``
outer product               ``\left\langle a, b \right\rangle`` (a bᵀ)
==========================  ================================================

Equations: ``\delta c^{(t)} = ...``; per-step parameter terms
``\delta W_{z}^{(t)} = \left\langle \delta\bar{z}^{(t)}, x^{(t)} \right\rangle``;
initial-state gradients ``\delta c_{0} = ...`` with the right side at step t (= 0),
like the text notation. `equations(d, "latex")` prints one equation a line, ``%``
comments. The documents print the initial-state gradients and the t = 0 boundary
terms of the parameter gradients at numeric steps (``^{(0)}``, ``^{(-1)}``), and break
long equations into rows of an ``aligned`` environment (`latex_rows`): a parenthesized
sum or matrix argument split over rows is written ``\bigl(`` ... ``\bigr)``.
"""

from __future__ import annotations

import ast
import json
import re

import sympy as sp
from sympy.printing.latex import LatexPrinter as _SympyLatexPrinter
from sympy.printing.str import StrPrinter

from . import symbols as S
from .derivation import Derivation, Flow
from .errors import UserError
from .expr import Matrix, parse
from .spec import Cell

FORMATS = ("text", "latex", "markdown", "json")
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


#: activation derivatives folded from their expansion (`derive.notation.fold_derivatives`):
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
    """Prints the text notation of hand derivations (what `derive.notation` parses).

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

    def _print_Rational(self, expr):
        return f"{expr.p}/{expr.q}" if expr.q != 1 else str(expr.p)


# --- LaTeX -----------------------------------------------------------------------------

def latex_vector(name: str) -> str:
    r"""A node or input name: ``c``, ``\bar{o}`` for o_bar, ``\mathit{name}``."""
    if name.endswith("_bar") and len(name) > 4:
        return rf"\bar{{{latex_vector(name[:-4])}}}"
    return name if len(name) == 1 else r"\mathit{" + name.replace("_", r"\_") + "}"


def latex_param(name: str) -> str:
    r"""A parameter: ``W_{z}``, ``R_{ii}``, ``b_{hr}``, ``W``."""
    head, _, sub = name.partition("_")
    head = latex_vector(head)
    return head + "_{" + sub.replace("_", r"\_") + "}" if sub else head


def latex_delta(body: str) -> str:
    r"""``\delta`` before a printed name: ``\delta c``, ``\delta\bar{i}``."""
    return r"\delta" + (" " if body[:1].isalpha() else "") + body


def latex_time(shift: int, step: int | None = None) -> str:
    """``^{(t+1)}``; at a numeric step (documents) ``^{(0)}``, ``^{(-1)}``."""
    label = S.time_label(shift) if step is None else str(step + shift)
    return f"^{{({label})}}"


class LatexPrinter(_Arithmetic, _SympyLatexPrinter):
    r"""Prints the LaTeX notation of the module docstring.

    Setting ``step``: None prints time symbolically (``^{(t)}``); an integer prints
    numeric steps (``step=0``: ``c^{(t-1)}`` → ``c^{(-1)}``).
    """

    _default_settings = {**_SympyLatexPrinter._default_settings, "step": None}

    def _paren(self, s: str) -> str:
        return rf"\left({s}\right)"

    def _wrap_linear(self, s: str) -> str:
        return s  # -R_{z}^{\top} v is unambiguous in LaTeX

    def _print_Symbol(self, expr, style="plain"):
        r = S.ref(expr)
        if r is None:
            return super()._print_Symbol(expr, style)
        if r.kind == "param":
            return latex_param(r.name)
        t = latex_time(r.shift, self._settings["step"])
        if r.kind == "value":
            return latex_vector(r.name) + t
        if r.kind == "delta":
            return latex_delta(latex_vector(r.name)) + t
        sub = f"_{{{latex_vector(r.name)}}}" if expr.name.startswith("Delta_") else ""
        return rf"\Delta{sub}{t}"

    def _item(self, f, others: bool) -> str:
        s = self._print(f)
        if isinstance(f, (Ordered, sp.Add, Product, sp.Mul)):
            return self._paren(s)
        if isinstance(f, (S.MatVec, S.MatTVec)) and others:
            return self._paren(s)
        return s

    def _side(self, factors, others: bool) -> str:
        return r" \odot ".join(self._item(f, others) for f in factors)

    def _join(self, coeff, num, den, negative: bool) -> str:
        top = self._side(num, len(num) > 1)
        if coeff.p != 1:
            top = f"{coeff.p} {top}" if top else str(coeff.p)
        if not den and coeff.q == 1:
            return top
        bottom = self._side(den, len(den) > 1)
        if coeff.q != 1:
            bottom = f"{coeff.q} {bottom}" if bottom else str(coeff.q)
        return rf"\frac{{{top or '1'}}}{{{bottom}}}"

    def _power(self, base, exp) -> str:
        b = self._print(base)
        param = base.is_Symbol and S.ref(base) is not None and S.ref(base).kind == "param"
        function = isinstance(base, sp.Function) and not isinstance(
            base, (S.MatVec, S.MatTVec))
        if not (param or function):
            b = self._paren(b)
        return f"{b}^{{{self._print(exp)}}}"

    def _function(self, name: str, expr) -> str:
        return rf"{name}\left({self._print(expr.args[0])}\right)"

    def _print_sigmoid(self, expr):
        return self._function(r"\sigma", expr)

    def _print_tanh(self, expr, exp=None):
        return self._function(r"\tanh", expr)

    def _print_exp(self, expr, exp=None):
        return self._function(r"\exp", expr)

    def _print_log(self, expr, exp=None):
        return self._function(r"\log", expr)

    def _linear(self, expr, transposed: bool) -> str:
        matrix, arg = expr.args
        a = self._print(arg)
        if not arg.is_Symbol:
            a = self._paren(a)
        return f"{latex_param(matrix.name)}{_TOP if transposed else ''} {a}"

    def _print_Outer(self, expr):
        a, b = (self._print(x) for x in expr.args)
        return rf"\left\langle {a}, {b} \right\rangle"

    def _print_Rational(self, expr):
        return rf"\frac{{{expr.p}}}{{{expr.q}}}" if expr.q != 1 else str(expr.p)


_TEXT = TextPrinter()
_LATEX = LatexPrinter()


def text(expr: sp.Expr) -> str:
    """`expr` in the text notation."""
    return _TEXT.doprint(expr)


def latex(expr: sp.Expr, step: int | None = None) -> str:
    """`expr` in derive's LaTeX notation; `step` prints numeric time (documents)."""
    return (_LATEX if step is None else LatexPrinter({"step": step})).doprint(expr)


# --- the derivation in print order -----------------------------------------------------

def flows(d: Derivation, name: str) -> list[Flow]:
    """The flows of δnameᵗ in print order: Δ, step t (outputs first), step t+1.

    Within a step consumers follow the spec's order; a consumer's positive terms come
    before its negative ones.
    """
    cell = d.cell
    position = {n: k for k, n in enumerate(cell.nodes)}
    nd = d.deltas.get(name) or d.raw[name]
    return sorted(nd.flows, key=lambda f: (f.shift, not f.external,
                                            f.shift == 0 and f.consumer not in cell.outputs,
                                            position.get(f.consumer, -1), _negative(f.term)))


def structured(d: Derivation, name: str) -> sp.Expr:
    """δnameᵗ in terms of its consumers' deltas, flow by flow."""
    return ordered(f.term for f in flows(d, name))


def expanded_forms(d: Derivation) -> dict[str, sp.Expr]:
    """δvᵗ for every kept node and input, each delta of step t replaced by its expansion."""
    out: dict[str, sp.Expr] = {}
    for n in d.deltas:  # backward order: same-step consumers come first
        subs = {S.delta(m): e for m, e in out.items()}
        out[n] = ordered(f.term.xreplace(subs) for f in flows(d, n))
    return out


def parameter_term(d: Derivation, name: str) -> sp.Expr:
    """The per-step term δPᵗ: ⟨δuᵗ, vᵗ⟩ for a matrix, ∂uᵗ/∂P ⊙ δuᵗ element-wise."""
    terms = []
    for node, term in d.params[name].contributions:
        factor = term / S.delta(node)
        if isinstance(term, S.Outer) or factor == 1:
            terms.append(term)
        else:
            terms.append(Product(*sp.Mul.make_args(factor), S.delta(node)))
    return ordered(terms)


def initial_state(d: Derivation, state: str) -> sp.Expr:
    """δ of the state before step 0, written at step t (= 0), flow by flow."""
    return ordered(S.shift_time(f.term, -1) for f in flows(d, state)
                   if f.shift == 1 and not f.external)


def reads_initial_state(expr: sp.Expr) -> bool:
    """Whether a per-step term reads a state at t-1 (the initial state at t = 0)."""
    return any((r := S.ref(s)) is not None and r.kind == "value" and r.shift == -1
               for s in plain(expr).free_symbols)


class _ForwardScope:
    """Names of a spec's node expressions (the spec already validated them)."""

    def __init__(self, cell: Cell):
        self.cell = cell

    def functions(self):
        return dict(S.ACTIVATIONS)

    def name(self, name: str, shift: int | None, column: int):
        p = self.cell.parameters.get(name)
        if p is not None:
            return Matrix(S.param(name)) if p.is_matrix else S.param(name)
        return S.value(name, shift or 0)


def forward(cell: Cell, name: str) -> sp.Expr:
    """The right side of node `name`, keeping the spec's order of terms and factors."""
    text_ = cell.nodes[name].text.strip()
    scope = _ForwardScope(cell)

    def factors(e):
        return e.args if isinstance(e, Product) else (e,)

    def build(node: ast.AST) -> sp.Expr:
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub)):
            right = build(node.right)
            if isinstance(node.op, ast.Sub):
                right = Product(sp.S.NegativeOne, *factors(right))
            return ordered([build(node.left), right])
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
            return Product(*factors(build(node.left)), *factors(build(node.right)))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return Product(sp.S.NegativeOne, *factors(build(node.operand)))
        return parse(ast.get_source_segment(text_, node), scope)

    return build(ast.parse(text_, mode="eval").body)


# --- names of equations ----------------------------------------------------------------

def delta_text(name: str) -> str:
    """'dc[t]': a node's delta, or a parameter's per-step gradient term."""
    return f"d{name}[t]"


def delta_latex(name: str) -> str:
    return latex_delta(latex_vector(name)) + latex_time(0)


def param_latex(name: str, per_step: bool = True) -> str:
    r"""``\delta W_{z}^{(t)}`` (per step) or ``\delta W_{z}`` (the sum)."""
    return r"\delta " + latex_param(name) + (latex_time(0) if per_step else "")


def initial_text(state: str) -> str:
    return f"d{state}0"


def initial_latex(state: str) -> str:
    return latex_delta(latex_vector(state)) + "_{0}"


def flow_path(name: str, flow: Flow, fmt: str) -> str:
    """The path of a flow: 'c[t] -> o_bar[t]' (text) or 'c^{(t)} \\to \\bar{o}^{(t)}'."""
    hops = [(name, 0)] + [(n, 0) for n in flow.path]
    if not flow.external:
        hops.append((flow.consumer, flow.shift))
    if fmt == "text":
        out = " -> ".join(f"{n}[{S.time_label(k)}]" for n, k in hops)
        return out + (" -> J" if flow.external else "")
    out = r" \to ".join(latex_vector(n) + latex_time(k) for n, k in hops)
    return out + (r" \to J" if flow.external else "")


# --- derive equations ------------------------------------------------------------------

STRUCTURED = ("backward pass, structured: each delta of step t in terms of its consumers' "
              "deltas; the t+1 terms are zero at the last step")
EXPANDED = "backward pass, expanded: forward values, Delta and the deltas of step t+1 only"
FLOWS = "flows: the term each path from a node to a consumer contributes"
PARAMETERS = ("parameter gradients, per step: dP = sum over t = 0..T and the batch of dP[t]; "
              "at t = 0 a state at t-1 is the initial state")
INITIAL = "initial-state gradients (the state before step 0), right side at step t = 0"


def equations(d: Derivation, fmt: str = "text", expanded: bool = False) -> str:
    """The derived backward pass of `d` as `fmt` (text, latex, markdown or json)."""
    if fmt == "text":
        return _lines(d, expanded, "#", text, delta_text, delta_text, initial_text,
                      lambda name, f: flow_path(name, f, "text"))
    if fmt == "latex":
        return _lines(d, expanded, "%", latex, delta_latex, param_latex, initial_latex,
                      lambda name, f: flow_path(name, f, "latex"))
    if fmt == "markdown":
        from .render import markdown
        return markdown(d, expanded=expanded)
    if fmt == "json":
        return json.dumps(to_json(d, expanded), indent=2, ensure_ascii=False) + "\n"
    raise UserError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")


def _lines(d, expanded, comment, show, delta_lhs, param_lhs, initial_lhs, path) -> str:
    cell = d.cell
    out = [f"{comment} {cell.name}: {cell.title}", f"{comment} {STRUCTURED}"]
    out += [f"{delta_lhs(n)} = {show(structured(d, n))}" for n in d.deltas]
    if expanded:
        forms = expanded_forms(d)
        out.append(f"{comment} {EXPANDED}")
        out += [f"{delta_lhs(n)} = {show(forms[n])}" for n in d.deltas]
        out.append(f"{comment} {FLOWS}")
        out += [f"{comment}   {path(n, f)}: {show(f.term)}" for n in d.deltas for f in flows(d, n)]
    out.append(f"{comment} {PARAMETERS}")
    out += [f"{param_lhs(p)} = {show(parameter_term(d, p))}" for p in d.params]
    out.append(f"{comment} {INITIAL}")
    out += [f"{initial_lhs(s)} = {show(initial_state(d, s))}" for s in d.cell.states]
    return "\n".join(out) + "\n"


def _both(expr: sp.Expr) -> dict[str, str]:
    return {"text": text(expr), "latex": latex(expr)}


def to_json(d: Derivation, expanded: bool = False) -> dict:
    """One JSON-ready document of the derivation (see `derive equations --format json`)."""
    cell = d.cell
    forms = expanded_forms(d) if expanded else {}
    deltas = []
    for n in d.deltas:
        entry = {"node": n, "input": n in cell.inputs,
                 "lhs": {"text": delta_text(n), "latex": delta_latex(n)},
                 "structured": _both(structured(d, n))}
        if expanded:
            entry["expanded"] = _both(forms[n])
            entry["flows"] = [{"consumer": f.consumer, "shift": f.shift, "path": list(f.path),
                               "matrix": f.matrix, "external": f.external,
                               "label": flow_path(n, f, "text"), "term": _both(f.term)}
                              for f in flows(d, n)]
        deltas.append(entry)
    return {
        "cell": cell.name, "title": cell.title, "spec": cell.display_path, "hash": cell.hash,
        "inputs": list(cell.inputs), "states": list(cell.states),
        "outputs": list(cell.outputs),
        "forward": [{"node": n, **_both(forward(cell, n))} for n in cell.nodes],
        "deltas": deltas,
        "parameters": [{"name": p, "shape": list(g.shape),
                        "lhs": {"text": delta_text(p), "latex": param_latex(p)},
                        "step": _both(parameter_term(d, p)),
                        "reads_initial_state": reads_initial_state(parameter_term(d, p))}
                       for p, g in d.params.items()],
        "initial": [{"state": s, "lhs": {"text": initial_text(s), "latex": initial_latex(s)},
                     "rhs": _both(initial_state(d, s))} for s in cell.states],
    }


def latex_parameter_sum(d: Derivation, name: str) -> str:
    r"""δP as the sum over t = 0..T of δPᵗ, its t = 0 term apart when it reads the initial state.

    ``\left\langle \delta\bar{z}^{(0)}, y^{(-1)} \right\rangle + \sum_{t=1}^{T} ...``: the
    paper's sums assume a zero initial state, which drops that term.
    """
    term = parameter_term(d, name)
    body = latex(term)
    if isinstance(term, Ordered):
        body = rf"\left({body}\right)"
    if not reads_initial_state(term):
        return rf"\sum_{{t=0}}^{{T}} {body}"
    return rf"{latex(term, step=0)} + \sum_{{t=1}}^{{T}} {body}"


# --- documents: equations broken into aligned rows -------------------------------------

#: the widths of LaTeX tokens, in units of about half an em (a math letter with room)
_WIDTHS = {r"\odot": 2.2, r"\delta": 0.9, r"\Delta": 1.2, r"\sigma": 1.0, r"\tanh": 2.6,
           r"\exp": 2.2, r"\log": 2.0, r"\top": 0.8, r"\to": 2.4, r"\langle": 0.6,
           r"\rangle": 0.6, r"\sum": 2.0, r"\dots": 2.0, r"\_": 0.8, r"\qquad": 3.6}
_BINARY = {"+": 2.2, "-": 2.2, "=": 2.6, ",": 0.8, "(": 0.7, ")": 0.7}
_TOKEN = re.compile(r"\\[A-Za-z]+|\\.|[{}^_]|[^\s]")

#: width of a document's text column in those units (17 cm at 10 pt, with a margin)
COLUMN = 80.0


def latex_width(s: str) -> float:
    """Estimated printed width of LaTeX math `s` (scripts count 0.7)."""
    total, scale, stack, script = 0.0, 1.0, [], False
    for tok in _TOKEN.findall(s):
        if tok in "^_":
            script = True
            continue
        if tok == "{":
            stack.append(scale)
            scale = 0.7 if script else scale
            script = False
            continue
        if tok == "}":
            scale = stack.pop() if stack else 1.0
            continue
        w = _WIDTHS.get(tok, 0.0 if tok.startswith("\\") else _BINARY.get(tok, 1.0))
        total += w * (0.7 if script else scale)
        script = False
    return total


class _Breaker:
    """Lays an expression out as rows of at most `budget` width: sums break between
    terms, products between factors, and a sum or matrix argument too long for a row
    opens ``\\bigl(`` on one row and closes ``\\bigr)`` rows later, one level deeper."""

    INDENT = 3.6  # one \qquad

    def __init__(self, printer: LatexPrinter, budget: float):
        self.p, self.budget = printer, budget
        self.printed: dict[sp.Expr, str] = {}

    def fits(self, s: str, level: int) -> bool:
        return latex_width(s) <= self.budget - level * self.INDENT

    def lay(self, expr, level: int) -> list[tuple[int, str]]:
        s = self.printed.get(expr)
        if s is None:
            s = self.printed[expr] = self.p.doprint(expr)
        if self.fits(s, level):
            return [(level, s)]
        if isinstance(expr, (Ordered, sp.Add)):
            return self.lay_sum(expr, level)
        if isinstance(expr, (Product, sp.Mul)):
            return self.lay_product(expr, level)
        if isinstance(expr, (S.MatVec, S.MatTVec)) and not expr.args[1].is_Symbol:
            return self.opened(expr, level, alone=True)
        return [(level, s)]

    def lay_sum(self, expr, level: int) -> list[tuple[int, str]]:
        out: list[tuple[int, str]] = []
        for k, term in enumerate(_terms(expr)):
            negative = _negative(term)
            sub = self.lay(_negate(term) if negative else term, level)
            op = ("-" if negative else "") if k == 0 else ("- " if negative else "+ ")
            if (len(sub) == 1 and out and out[-1][0] == level
                    and self.fits(f"{out[-1][1]} {op}{sub[0][1]}", level)):
                out[-1] = (level, f"{out[-1][1]} {op}{sub[0][1]}")
            else:
                out.append((sub[0][0], op + sub[0][1]))
                out += sub[1:]
        return out

    def lay_product(self, expr, level: int) -> list[tuple[int, str]]:
        """Factors fill a row; a row broken between factors goes on one level deeper."""
        coeff, num, den = _split(expr)
        if den:
            return [(level, self.p.doprint(expr))]
        out: list[tuple[int, str]] = []
        row = ("-" if coeff.is_negative else "") + (f"{abs(coeff.p)} " if abs(coeff) != 1 else "")
        at = level
        for k, f in enumerate(num):
            piece = self.p._item(f, len(num) > 1)
            joiner = r" \odot " if k else ""
            if self.fits(row + joiner + piece, at):
                row += joiner + piece
                continue
            opened = None if self.fits(piece, level + 1) else self.opened(f, at, len(num) == 1)
            if opened is None:
                if row.strip():
                    out.append((at, row))
                    at = level + 1
                row = (r"\odot " if k else "") + piece
                continue
            out.append((at, row + joiner + opened[0][1]))
            out += opened[1:-1]
            row = opened[-1][1]
        out.append((at, row))
        return out

    def opened(self, f, level: int, alone: bool) -> list[tuple[int, str]] | None:
        """Rows of a factor opened over several rows: its first row starts with ``\\bigl(``,
        the inner rows are one level deeper, the last row is ``\\bigr)``."""
        if isinstance(f, (Ordered, sp.Add)):
            head, inner = "", f
        elif isinstance(f, (S.MatVec, S.MatTVec)) and alone:
            head = latex_param(f.args[0].name) + (_TOP if isinstance(f, S.MatTVec) else "") + " "
            inner = f.args[1]
        else:
            return None
        rows = self.lay(inner, level + 1)
        return ([(level, head + r"\bigl(" + rows[0][1])] + rows[1:] + [(level, r"\bigr)")])


def latex_rows(lhs: str, rhs, step: int | None = None, width: float = COLUMN) -> list[str]:
    r"""``lhs = rhs`` as rows of an ``align*``/``aligned`` environment.

    The first row is ``lhs &= ...``, the others ``& \qquad ...`` (one ``\qquad`` per
    level); `rhs` is an expression (broken to fit `width`) or LaTeX text (kept whole).
    """
    if isinstance(rhs, str):
        lines = [(0, rhs)]
    else:
        printer = _LATEX if step is None else LatexPrinter({"step": step})
        lines = _Breaker(printer, width - latex_width(lhs) - 2.6).lay(rhs, 0)
    rows = [f"{lhs} &= {lines[0][1]}"]
    rows += ["&" + r"\qquad" * (level + 1) + " " + text for level, text in lines[1:]]
    return rows
