"""SymPy printers of the kernel sources: `CythonPrinter` (loop bodies) and `NumpyPrinter`
(whole arrays), and `ordered` (the order the terms are printed in)."""

from __future__ import annotations

import sympy as sp
from sympy.printing.c import C99CodePrinter
from sympy.printing.numpy import NumPyPrinter

#: element-wise functions and their code (inline helpers of templates/support/kernel.pyx,
#: helpers of templates/reference.py.j2 or NumPy): Cython, NumPy
_FUNCS = {"sigmoid": ("_sigmoid", "_sigmoid"), "tanh": ("_tanh", "np.tanh"),
          "exp": ("_exp", "np.exp"), "log": ("_log", "np.log"),
          "relu": ("_relu", "_relu"), "step": ("_step", "_step"),
          "softplus": ("_softplus", "np.logaddexp(0, {})"), "sqrt": ("_sqrt", "np.sqrt")}


def _function(expr, printer, column: int) -> str:
    name = type(expr).__name__
    if name not in _FUNCS:
        raise NotImplementedError(f"no kernel code for the function {name}")  # pragma: no cover
    code = _FUNCS[name][column]
    arg = printer._print(expr.args[0])
    return code.format(arg) if "{}" in code else f"{code}({arg})"


def ordered(expr: sp.Expr, rank: dict[sp.Symbol, int]) -> sp.Expr:
    """`expr` rebuilt without evaluation, the terms of every sum and the factors of every
    product ordered by `rank` of their first-ranked symbol (numbers first, unranked
    symbols last, ties in SymPy's order); printed with order "none"."""
    if expr.is_Atom:
        return expr
    args = [ordered(a, rank) for a in expr.args]
    if isinstance(expr, (sp.Add, sp.Mul)):
        def key(a):
            if a.is_Number:
                return (-1, sp.default_sort_key(a))
            return (min((rank.get(s, 10 ** 6) for s in a.free_symbols), default=10 ** 6),
                    sp.default_sort_key(a))
        return expr.func(*sorted(args, key=key), evaluate=False)
    if isinstance(expr, sp.Pow):
        return sp.Pow(*args, evaluate=False)
    return expr.func(*args)


class _Powers:
    """Powers as both kernels write them: x**-1 as 1/x, x**(1/2) by the printer's `SQRT`,
    any other power by its `_power`."""

    SQRT: str

    def _print_Pow(self, expr, rational=False):
        base, e = expr.args
        if e == -1:
            return f"{self._print(sp.S.One)}/{self.parenthesize(base, 1000)}"
        if e == sp.S.Half:
            return f"{self.SQRT}({self._print(base)})"
        return self._power(base, e)


class CythonPrinter(_Powers, C99CodePrinter):
    """Expressions of a plan program as Cython (C syntax, fused `floating` type)."""

    def __init__(self, reads: dict[sp.Symbol, str], ctype: str = "floating"):
        super().__init__({"strict": False, "order": "none"})
        self.reads = reads          # symbol -> code (pointer reads like `c_prev[_j]`)
        self.ctype = ctype          # "float" or "double": the type numbers are cast to

    def _print_Symbol(self, expr):
        return self.reads.get(expr, expr.name)

    def _print_Integer(self, expr):
        # cast in float code: Cython writes a bare 1 beside a float as the C double 1.0,
        # and C then evaluates the whole expression in double precision
        return str(int(expr)) if self.ctype == "double" else f"(<{self.ctype}>{int(expr)})"

    def _print_Rational(self, expr):
        return f"(<{self.ctype}>{float(expr.p)!r} / <{self.ctype}>{float(expr.q)!r})"

    def _print_Float(self, expr):
        return f"(<{self.ctype}>{float(expr)!r})"

    def _print_Half(self, expr):
        return f"(<{self.ctype}>0.5)"

    SQRT = "_sqrt"

    def _power(self, base, e) -> str:
        return f"_pow({self._print(base)}, {self._print(e)})"

    def _print_Function(self, expr):
        return _function(expr, self, 0)

    _print_sigmoid = _print_tanh = _print_exp = _print_log = _print_Function
    _print_relu = _print_step = _print_softplus = _print_sqrt = _print_Function

    def _print_Exp1(self, expr):
        return f"_exp(<{self.ctype}>1)"


class NumpyPrinter(_Powers, NumPyPrinter):
    """Expressions of a plan program over whole (B, N) NumPy arrays."""

    def __init__(self):
        super().__init__({"strict": False, "order": "none"})

    def _print_Symbol(self, expr):
        return expr.name

    SQRT = "np.sqrt"

    def _power(self, base, e) -> str:
        return f"{self.parenthesize(base, 1000)}**{self.parenthesize(e, 1000)}"

    def _print_Function(self, expr):
        return _function(expr, self, 1)

    _print_sigmoid = _print_tanh = _print_exp = _print_log = _print_Function
    _print_relu = _print_step = _print_softplus = _print_sqrt = _print_Function

    def _print_Rational(self, expr):
        return f"({int(expr.p)}/{int(expr.q)})"

    def _print_Float(self, expr):
        return repr(float(expr))

    def _print_Exp1(self, expr):
        return "np.e"


