"""Safe parsing of the expression grammar shared by cell specs and hand derivations.

The text is parsed with Python's own parser (``ast.parse``: parsing only, nothing is
evaluated) and the tree is then walked against a whitelist:

    expr   := expr (+ - * / ** @) expr | -expr | number | name | name[time] | A.T
            | function(expr, ...)       (functions: the caller's Scope; cells have
                                         sigmoid tanh exp log relu softplus sqrt and
                                         the reduction mean)
    time   := t | t+k | t-k            (k a whole number)

Names are resolved by a caller-supplied `Scope`, so the same grammar serves a spec
(where `c[t-1]` names the previous state) and `derive verify` (where `df_bar[t+1]` is a
delta). Anything else (attributes other than ``.T``, unknown calls, lambdas,
comparisons, strings, keyword arguments, subscripts that are not time indices) is an
`ExpressionError` pointing at the column.

**Limits** (every expression is parsed in time linear in its length, and its constants are
finite float64 reals; each limit is named in the error that enforces it):

* at most `MAX_LENGTH` characters;
* at most `MAX_DEPTH` levels of nesting (function calls, parentheses around an operator
  of lower precedence, powers); a chain of the same operators (``a + b - c + …``,
  ``a * b / c * …``, ``- - a``) is one level, whatever its length, up to `MAX_OPERANDS`
  operands;
* exponents are numbers of size at most `MAX_EXPONENT`;
* every number — a literal or a constant sub-expression such as ``2**10`` — has at most
  `MAX_DIGITS` digits in its numerator and its denominator, and every constant is a
  finite real in float64: ``1e400``, ``x / 0``, ``0 ** -1``, ``log(0 - 1)`` or
  ``exp(1000)`` are refused where they are written. A function of a constant
  (``exp(2)``, ``tanh(0.5)``) is read as its float64 value.
"""

from __future__ import annotations

import ast
import math
import re
from dataclasses import dataclass
from typing import Callable, Protocol

import sympy as sp

from derive.cell.symbols import MatTVec, MatVec, Mean
from derive.errors import ExpressionError, suggest

MAX_LENGTH = 20_000   # characters of one expression
MAX_DEPTH = 100       # levels of nesting
MAX_OPERANDS = 1_000  # operands of one chain of + - or * /
MAX_EXPONENT = 16     # |n| in a ** n
MAX_DIGITS = 400      # digits of a numerator or denominator (any float64 fits in 330)
_FLOAT_MAX = 1.7976931348623157e308


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
    tree = parse_tree(text)
    try:
        result = _Walker(text.strip(), scope).visit(tree.body)
    except RecursionError:  # pragma: no cover - MAX_DEPTH keeps the walk shallow
        raise ExpressionError(f"expression nested too deeply (the limit is {MAX_DEPTH} "
                              f"levels)") from None
    except ExpressionError as exc:
        if exc.text or exc.column is None:
            raise
        raise ExpressionError(exc.detail, text=text.strip(), column=exc.column) from None
    if isinstance(result, Matrix):
        raise ExpressionError(f"matrix {result.symbol} must be multiplied by a vector "
                              f"with @", text=text.strip(), column=1)
    return result


def parse_tree(text: str) -> ast.Expression:
    """Python's parse of `text` (never compiled or run), its failures as ExpressionErrors."""
    try:
        return ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        col = exc.offset if exc.offset else None
        if "integer string conversion" in str(exc.msg):
            long = re.search(r"\d{%d,}" % (MAX_DIGITS + 1), text.strip())
            raise ExpressionError(f"a number has more than {MAX_DIGITS} digits (the limit)",
                                  text=text.strip(),
                                  column=long.start() + 1 if long else col) from None
        if "too many nested parentheses" in str(exc.msg):
            raise ExpressionError(f"expression nested too deeply (the limit is {MAX_DEPTH} "
                                  f"levels)", text=text.strip(), column=col) from None
        raise ExpressionError(f"syntax error: {exc.msg}", text=text.strip(), column=col) from None
    except (RecursionError, MemoryError):
        raise ExpressionError(f"expression too long a chain or nested too deeply for Python's "
                              f"parser (the limits are {MAX_OPERANDS} operands in a row and "
                              f"{MAX_DEPTH} levels of nesting)") from None
    except ValueError as exc:  # a literal of over 4300 digits, a NUL byte
        raise ExpressionError(f"malformed expression: {exc}".split("; use")[0]) from None


def _chain(node: ast.AST, ops: tuple[type, ...]) -> list[tuple[type | None, ast.AST]]:
    """The operands of a left-leaning chain of binary `ops`: a - b + c → [(None, a),
    (Sub, b), (Add, c)], without recursion."""
    out = []
    while isinstance(node, ast.BinOp) and isinstance(node.op, ops):
        out.append((type(node.op), node.right))
        node = node.left
    out.append((None, node))
    out.reverse()
    return out


class _Walker:
    def __init__(self, text: str, scope: Scope):
        self.text, self.scope = text, scope
        self.funcs = scope.functions()
        self.depth = 0
        self.floats: dict[sp.Expr, float] = {}

    def fail(self, message: str, node: ast.AST):
        col = getattr(node, "col_offset", None)
        raise ExpressionError(message, text=self.text, column=None if col is None else col + 1)

    def visit(self, node: ast.AST):
        method = getattr(self, "visit_" + type(node).__name__, None)
        if method is None:
            self.fail(f"{_describe(node)} is not allowed in an expression", node)
        self.depth += 1
        if self.depth > MAX_DEPTH:
            self.fail(f"expression nested too deeply (the limit is {MAX_DEPTH} levels)", node)
        try:
            return self.checked(method(node), node)
        finally:
            self.depth -= 1

    # constants: bounded and finite --------------------------------------------------------
    def checked(self, value, node: ast.AST):
        """`value`, after checking it and its constant arguments (see the module docstring)."""
        if isinstance(value, Matrix):
            return value
        for part in (value,) + (value.args if not value.is_Atom else ()):
            if part.is_number:
                self.real(part, node)
        return value

    def real(self, e: sp.Expr, node: ast.AST) -> float:
        """The float64 value of a constant, or an error at `node` saying why it has none."""
        try:
            return constant_value(e, self.floats)
        except ExpressionError as exc:
            self.fail(exc.detail, node)

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
        if isinstance(v, float) and not math.isfinite(v):
            self.fail(f"the number {ast.get_source_segment(self.text, node) or v} is not "
                      f"finite in float64 (at most about 1.8e308)", node)
        if isinstance(v, int) and v.bit_length() > 4 * MAX_DIGITS:
            self.fail(f"a number has more than {MAX_DIGITS} digits (the limit)", node)
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
        sign = 1
        while isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            sign = -sign if isinstance(node.op, ast.USub) else sign
            node = node.operand
        if isinstance(node, ast.UnaryOp):
            self.fail(f"operator {type(node.op).__name__} is not allowed", node)
        value = self.scalar(node)
        return -value if sign < 0 else value

    def visit_BinOp(self, node: ast.BinOp):
        op = type(node.op)
        if op not in _BINOPS:
            self.fail(_HINTS.get(op, f"operator {op.__name__} is not allowed"), node)
        if op in (ast.Add, ast.Sub):
            return sp.Add(*[-v if o is ast.Sub else v
                            for o, v, _ in self.operands(node, (ast.Add, ast.Sub))])
        if op in (ast.Mult, ast.Div):
            return sp.Mul(*[self.divisor(v, n) if o is ast.Div else v
                            for o, v, n in self.operands(node, (ast.Mult, ast.Div))])
        if op is ast.MatMult:
            left = self.visit(node.left)
            if not isinstance(left, Matrix):
                self.fail("the left side of @ must be a matrix parameter (like W_z or R_z.T)",
                          node)
            right = self.scalar(node.right)
            return (MatTVec if left.transposed else MatVec)(left.symbol, right)
        a, b = self.scalar(node.left), self.scalar(node.right)
        if not b.is_number:
            self.fail("exponents must be numbers", node.right)
        if abs(self.real(b, node.right)) > MAX_EXPONENT:
            self.fail(f"exponents must be numbers of size at most {MAX_EXPONENT}", node.right)
        if a.is_number and a.is_zero and self.real(b, node.right) < 0:
            self.fail("0 raised to a negative power (a division by zero)", node)
        return a ** b

    def operands(self, node: ast.BinOp, ops) -> list[tuple[type | None, sp.Expr, ast.AST]]:
        """[(operator, value, operand)] of a chain of `ops`, each operand visited once."""
        chain = _chain(node, ops)
        if len(chain) > MAX_OPERANDS:
            self.fail(f"more than {MAX_OPERANDS} operands in a row (the limit)", node)
        return [(o, self.scalar(n), n) for o, n in chain]

    def divisor(self, value: sp.Expr, node: ast.AST) -> sp.Expr:
        """1 / value, refusing a division by a constant zero."""
        if value.is_number and self.real(value, node) == 0:
            self.fail("division by zero", node)
        return 1 / value

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
        if fn is Mean and args[0].is_number:
            self.fail(f"{name}() averages a vector over the hidden units; its argument "
                      f"{_short(args[0])} is a number", node)
        if name in _MATH and len(args) == 1 and args[0].is_number:
            # a function of a constant is read as its float64 value: SymPy would evaluate
            # it in arbitrary precision (evalf, assumption queries), without a time bound
            return sp.Float(self.real(fn(args[0], evaluate=False), node))
        return fn(*args)


def constant_value(e: sp.Expr, memo: dict | None = None) -> float:
    """The float64 value of a constant expression (numbers and functions of numbers).

    Raises ExpressionError when it has more than `MAX_DIGITS` digits in a numerator or a
    denominator, or is not a finite real number in float64 (``zoo``, ``I*pi``,
    ``exp(1000)``). Values are computed with Python floats from the leaves up, so nothing
    is ever computed in arbitrary precision; `memo` keeps those already checked.
    """
    memo = {} if memo is None else memo
    got = memo.get(e)
    if got is not None:
        return got
    if e.is_Rational:
        for part in (e.p, e.q):
            if abs(part) >= 10 ** MAX_DIGITS:
                raise ExpressionError(f"a number has more than {MAX_DIGITS} digits (the limit)")
    if e.has(sp.zoo):
        raise ExpressionError(f"division by zero (the constant {_short(e)})")
    if e.has(sp.oo, sp.nan, sp.I):
        raise ExpressionError(f"the constant {_short(e)} is not a finite real number")
    try:
        if e.is_Rational or isinstance(e, sp.NumberSymbol):
            got = float(e)
        elif isinstance(e, sp.Add):
            got = math.fsum(constant_value(a, memo) for a in e.args)
        elif isinstance(e, sp.Mul):
            got = math.prod(constant_value(a, memo) for a in e.args)
        elif isinstance(e, sp.Pow):
            got = constant_value(e.base, memo) ** constant_value(e.exp, memo)
        elif isinstance(e, sp.Function) and len(e.args) == 1 and e.func.__name__ in _MATH:
            got = _MATH[e.func.__name__](constant_value(e.args[0], memo))
        else:
            got = float(e.evalf(20))
    except (OverflowError, ZeroDivisionError, ValueError, TypeError):
        got = math.nan
    if isinstance(got, complex) or not math.isfinite(got) or abs(got) > _FLOAT_MAX:
        raise ExpressionError(f"the constant {_short(e)} is not a finite real number in "
                              f"float64")
    memo[e] = got
    return got


def check_constants(expr: sp.Expr) -> None:
    """`constant_value` of every maximal constant sub-expression of `expr` (for readers
    that build SymPy expressions without `parse`, like the LaTeX reader)."""
    memo: dict = {}
    todo = [expr]
    while todo:
        e = todo.pop()
        if e.is_number:
            constant_value(e, memo)
        elif not e.is_Atom:
            todo.extend(e.args)


_MATH = {"tanh": math.tanh, "exp": math.exp, "log": math.log,
         "sigmoid": lambda v: 0.5 * (1 + math.tanh(v / 2)),
         "relu": lambda v: max(v, 0.0), "sqrt": math.sqrt,
         "softplus": lambda v: max(v, 0.0) + math.log1p(math.exp(-abs(v)))}


def _short(e: sp.Expr) -> str:
    text = str(e)
    return text if len(text) <= 40 else text[:37] + "..."


def _describe(node: ast.AST) -> str:
    names = {"Lambda": "a lambda", "Compare": "a comparison", "BoolOp": "and/or",
             "IfExp": "a conditional", "List": "a list", "Tuple": "a tuple",
             "Dict": "a dict", "Set": "a set", "JoinedStr": "a string",
             "ListComp": "a comprehension", "GeneratorExp": "a generator",
             "NamedExpr": "an assignment", "Await": "await", "Yield": "yield",
             "Starred": "unpacking", "Slice": "a slice"}
    return names.get(type(node).__name__, f"'{type(node).__name__}'")
