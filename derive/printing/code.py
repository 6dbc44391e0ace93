"""SymPy printers of the kernel sources: `CythonPrinter` (loop bodies) and `NumpyPrinter` (whole arrays)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import sympy as sp
from sympy.printing.c import C99CodePrinter
from sympy.printing.numpy import NumPyPrinter

if TYPE_CHECKING:   # the printers read a plan's identifiers; the plan is built above them
    from derive.kernel.plan import Plan

#: the C types of the two kernels in one module (float32, float64)
CTYPES = ("float", "double")

_FUNCS = {"sigmoid": "_sigmoid", "tanh": "_tanh", "exp": "_exp", "log": "_log"}


class CythonPrinter(C99CodePrinter):
    """Expressions of a plan program as Cython (C syntax, fused `floating` type)."""

    def __init__(self, plan: "Plan", reads: dict[sp.Symbol, str], ctype: str = "floating"):
        super().__init__({"strict": False})
        self.plan = plan
        self.reads = reads          # symbol -> code (pointer reads like `c_prev[_j]`)
        self.ctype = ctype          # "float" or "double": the type numbers are cast to

    def _print_Symbol(self, expr):
        if expr in self.reads:
            return self.reads[expr]
        return self.plan.access[expr].ident

    def _print_Integer(self, expr):
        return str(int(expr))

    def _print_Rational(self, expr):
        return f"(<{self.ctype}>{float(expr.p)!r} / <{self.ctype}>{float(expr.q)!r})"

    def _print_Float(self, expr):
        return f"(<{self.ctype}>{float(expr)!r})"

    def _print_Half(self, expr):
        return f"(<{self.ctype}>0.5)"

    def _print_Pow(self, expr):
        base, e = expr.args
        if e == -1:
            return f"1/{self.parenthesize(base, 1000)}"
        if e == sp.S.Half:
            return f"_sqrt({self._print(base)})"
        return f"_pow({self._print(base)}, {self._print(e)})"

    def _print_Function(self, expr):
        name = type(expr).__name__
        if name in _FUNCS:
            return f"{_FUNCS[name]}({self._print(expr.args[0])})"
        raise NotImplementedError(f"no kernel code for the function {name}")  # pragma: no cover

    _print_sigmoid = _print_tanh = _print_exp = _print_log = _print_Function

    def _print_Exp1(self, expr):
        return f"_exp(<{self.ctype}>1)"


class NumpyPrinter(NumPyPrinter):
    """Expressions of a plan program over whole (B, N) NumPy arrays."""

    def __init__(self, plan: "Plan"):
        super().__init__({"strict": False})
        self.plan = plan

    def _print_Symbol(self, expr):
        return self.plan.access[expr].ident

    def _print_Pow(self, expr, rational=False):
        base, e = expr.args
        if e == -1:
            return f"1/{self.parenthesize(base, 1000)}"
        if e == sp.S.Half:
            return f"np.sqrt({self._print(base)})"
        return f"{self.parenthesize(base, 1000)}**{self.parenthesize(e, 1000)}"

    def _print_Function(self, expr):
        name = type(expr).__name__
        fn = {"sigmoid": "_sigmoid", "tanh": "np.tanh", "exp": "np.exp", "log": "np.log"}
        return f"{fn[name]}({self._print(expr.args[0])})"

    _print_sigmoid = _print_tanh = _print_exp = _print_log = _print_Function

    def _print_Rational(self, expr):
        return f"({int(expr.p)}/{int(expr.q)})"

    def _print_Float(self, expr):
        return repr(float(expr))

    def _print_Exp1(self, expr):
        return "np.e"


