"""Safe parsing of the expression grammar shared by cell specs and hand derivations.

The text is parsed with Python's own parser (``ast.parse``: parsing only, nothing is
evaluated) and the tree is then walked against a whitelist:

    expr   := expr (+ - * / ** @) expr | -expr | number | name | name[time] | A.T
            | function(expr, ...)
    time   := t | t+k | t-k            (k a whole number)

Names are resolved by a caller-supplied `Scope`, so the same grammar serves a spec
(where `c[t-1]` names the previous state) and `derive verify` (where `df_bar[t+1]` is a
delta). Anything else (attributes other than ``.T``, unknown calls, lambdas,
comparisons, strings, keyword arguments, subscripts that are not time indices) is an
`ExpressionError` pointing at the column.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Callable, Protocol

import sympy as sp

from derive.cell.symbols import MatTVec, MatVec
from derive.errors import ExpressionError, suggest

MAX_LENGTH = 20_000


@dataclass(frozen=True)
class Matrix:
    """A matrix parameter as it appears left of ``@`` (possibly transposed)."""

    symbol: sp.Symbol
    transposed: bool = False


class Scope(Protocol):
    def name(self, name: str, shift: int | None, column: int) -> sp.Expr | Matrix:
        """Resolve `name` (shift None: no time index) or raise ExpressionError."""

    def functions(self) -> dict[str, Callable]:
        """The functions this grammar may call, by name."""


_BINOPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Pow: "**",
           ast.MatMult: "@"}
_HINTS = {ast.BitXor: "use ** for powers, not ^", ast.FloorDiv: "use / to divide",
          ast.Mod: "% is not part of the grammar"}


def parse(text: str, scope: Scope) -> sp.Expr:
    """Parse `text` into a SymPy expression, resolving names through `scope`."""
    if len(text) > MAX_LENGTH:
        raise ExpressionError(f"expression longer than {MAX_LENGTH} characters")
    if not text.strip():
        raise ExpressionError("empty expression")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        col = exc.offset if exc.offset else None
        raise ExpressionError(f"syntax error: {exc.msg}", text=text.strip(), column=col) from None
    except (RecursionError, MemoryError, ValueError):
        raise ExpressionError("expression too deeply nested or malformed") from None
    try:
        result = _Walker(text.strip(), scope).visit(tree.body)
    except RecursionError:
        raise ExpressionError("expression too deeply nested") from None
    except ExpressionError as exc:
        if exc.text or exc.column is None:
            raise
        raise ExpressionError(exc.detail, text=text.strip(), column=exc.column) from None
    if isinstance(result, Matrix):
        raise ExpressionError(f"matrix {result.symbol} must be multiplied by a vector "
                              f"with @", text=text.strip(), column=1)
    return result


class _Walker:
    def __init__(self, text: str, scope: Scope):
        self.text, self.scope = text, scope
        self.funcs = scope.functions()

    def fail(self, message: str, node: ast.AST):
        col = getattr(node, "col_offset", None)
        raise ExpressionError(message, text=self.text, column=None if col is None else col + 1)

    def visit(self, node: ast.AST):
        method = getattr(self, "visit_" + type(node).__name__, None)
        if method is None:
            self.fail(f"{_describe(node)} is not allowed in an expression", node)
        return method(node)

    def scalar(self, node: ast.AST) -> sp.Expr:
        out = self.visit(node)
        if isinstance(out, Matrix):
            self.fail(f"matrix {out.symbol} can only be used as the left side of @", node)
        return out

    # literals and names ---------------------------------------------------------
    def visit_Constant(self, node: ast.Constant):
        v = node.value
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            self.fail(f"only numbers are allowed as constants, not {v!r}", node)
        return sp.Integer(v) if isinstance(v, int) else sp.Rational(repr(v))

    def visit_Name(self, node: ast.Name):
        return self.scope.name(node.id, None, node.col_offset + 1)

    def visit_Subscript(self, node: ast.Subscript):
        if not isinstance(node.value, ast.Name):
            self.fail("only a name can take a time index like [t] or [t-1]", node)
        shift = self.time_index(node.slice)
        return self.scope.name(node.value.id, shift, node.col_offset + 1)

    def time_index(self, node: ast.AST) -> int:
        if isinstance(node, ast.Name) and node.id == "t":
            return 0
        if (isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub))
                and isinstance(node.left, ast.Name) and node.left.id == "t"
                and isinstance(node.right, ast.Constant) and type(node.right.value) is int):
            k = node.right.value
            return k if isinstance(node.op, ast.Add) else -k
        self.fail("a time index must be t, t+k or t-k (k a whole number)", node)

    def visit_Attribute(self, node: ast.Attribute):
        if node.attr != "T":
            self.fail(f"attribute .{node.attr} is not allowed (only .T, the transpose)", node)
        base = self.visit(node.value)
        if not isinstance(base, Matrix):
            self.fail(".T applies only to a matrix parameter", node)
        return Matrix(base.symbol, not base.transposed)

    # operators --------------------------------------------------------------------
    def visit_UnaryOp(self, node: ast.UnaryOp):
        if isinstance(node.op, ast.USub):
            return -self.scalar(node.operand)
        if isinstance(node.op, ast.UAdd):
            return self.scalar(node.operand)
        self.fail(f"operator {type(node.op).__name__} is not allowed", node)

    def visit_BinOp(self, node: ast.BinOp):
        op = type(node.op)
        if op not in _BINOPS:
            self.fail(_HINTS.get(op, f"operator {op.__name__} is not allowed"), node)
        if op is ast.MatMult:
            left = self.visit(node.left)
            if not isinstance(left, Matrix):
                self.fail("the left side of @ must be a matrix parameter (like W_z or R_z.T)",
                          node)
            right = self.scalar(node.right)
            return (MatTVec if left.transposed else MatVec)(left.symbol, right)
        a, b = self.scalar(node.left), self.scalar(node.right)
        if op is ast.Add:
            return a + b
        if op is ast.Sub:
            return a - b
        if op is ast.Mult:
            return a * b
        if op is ast.Div:
            return a / b
        if not b.is_number:
            self.fail("exponents must be numbers", node.right)
        return a ** b

    def visit_Call(self, node: ast.Call):
        if not isinstance(node.func, ast.Name):
            self.fail("only plain function names can be called", node)
        name = node.func.id
        if name not in self.funcs:
            self.fail(f"unknown function {name!r}{suggest(name, self.funcs)}; known: "
                      f"{', '.join(sorted(self.funcs))}", node)
        if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
            self.fail(f"{name}() takes plain positional arguments only", node)
        args = [self.scalar(a) for a in node.args]
        fn = self.funcs[name]
        expected = getattr(fn, "nargs", None)
        count = next(iter(expected)) if isinstance(expected, (set, frozenset, sp.FiniteSet)) \
            and len(expected) == 1 else None
        if isinstance(expected, int):
            count = expected
        if count is not None and len(args) != count:
            self.fail(f"{name}() takes {count} argument{'s' * (count != 1)}, "
                      f"got {len(args)}", node)
        return fn(*args)


def _describe(node: ast.AST) -> str:
    names = {"Lambda": "a lambda", "Compare": "a comparison", "BoolOp": "and/or",
             "IfExp": "a conditional", "List": "a list", "Tuple": "a tuple",
             "Dict": "a dict", "Set": "a set", "JoinedStr": "a string",
             "ListComp": "a comprehension", "GeneratorExp": "a generator",
             "NamedExpr": "an assignment", "Await": "await", "Yield": "yield",
             "Starred": "unpacking", "Slice": "a slice"}
    return names.get(type(node).__name__, f"'{type(node).__name__}'")
