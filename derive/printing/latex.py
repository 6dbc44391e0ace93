"""Printing in derive's LaTeX notation: `LatexPrinter` and the names of vectors, parameters, deltas and time."""

from __future__ import annotations

import sympy as sp
from sympy.printing.latex import LatexPrinter as _SympyLatexPrinter

from derive.cell import symbols as S
from derive.printing.text import _TOP, Ordered, Product, _Arithmetic

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

    def _print_relu(self, expr):
        return self._function(r"\operatorname{relu}", expr)

    def _print_softplus(self, expr):
        return self._function(r"\operatorname{softplus}", expr)

    def _print_sqrt(self, expr):
        return rf"\sqrt{{{self._print(expr.args[0])}}}"

    def _print_step(self, expr):
        """The Iverson bracket [v > 0] (relu' from relu's output)."""
        return rf"\left[{self._print(expr.args[0])} > 0\right]"

    def _print_Mean(self, expr):
        return self._function(r"\operatorname{mean}", expr)

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


_LATEX = LatexPrinter()


def latex(expr: sp.Expr, step: int | None = None) -> str:
    """`expr` in derive's LaTeX notation; `step` prints numeric time (documents)."""
    return (_LATEX if step is None else LatexPrinter({"step": step})).doprint(expr)


