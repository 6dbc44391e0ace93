r"""Parse hand derivations written in LaTeX into derive's vocabulary (`derive verify --latex`).

Accepted: exactly what `derive equations --format latex` prints (`derive.printing`
documents the forms) plus the spellings of papers:

    \delta c^{(t)} = \delta y^{(t)} \odot o^{(t)} \odot h'(c^{(t)})
                   + p_{o} \odot \delta\bar{o}^{(t)} + p_i \odot \delta\bar{i}^{(t+1)}
                   + p_f \odot \delta\bar{f}^{(t+1)} + \delta c^{(t+1)} \odot f^{(t+1)}
    \delta y^{(t)} = \Delta^{(t)} + R_{z}^{\top} \delta\bar{z}^{(t+1)}
                   + R_i^T \cdot \delta\bar{i}^{(t+1)} + ...
    \delta W_{z}^{(t)} = \left\langle \delta\bar{z}^{(t)}, x^{(t)} \right\rangle
    \delta c_{0} = p_{i} \odot \delta\bar{i}^{(t)} + p_{f} \odot \delta\bar{f}^{(t)}
                 + \delta c^{(t)} \odot f^{(t)}

* time: ``^{(t)}``, ``^{(t+1)}``, ``^{(t-1)}``, also ``^{t}``, ``^t``; a numeric step
  (``^{(0)}``, ``^{(-1)}``, as the documents print boundary terms) reads as t = 0;
* names: one letter (``c``), ``\bar{o}`` / ``\overline{o}`` for ``o_bar``,
  ``\mathit{name}`` (``\_`` for ``_``); ``\boldsymbol{}``, ``\mathbf{}``, ``\bm{}`` are
  ignored; parameters ``W_{z}``, ``W_z``, ``R_{ii}``, ``p_{i}``, ``W``;
* ``\delta`` before a name is its delta, ``\Delta^{(t)}`` the external gradient
  (``\Delta_{y}^{(t)}`` with several outputs);
* transpose ``^{\top}``, ``^\top``, ``^T``, ``^{T}``, ``^{\intercal}``;
* products: ``\odot``, ``\cdot``, ``*`` or juxtaposition. After a matrix the product is the
  matrix product, and a matrix applies to the single factor right after it
  (``R_{z}^{\top} \delta\bar{z}^{(t+1)} \odot a`` is (Rᵀδz̄) ⊙ a); otherwise element-wise;
* ``+ -``, ``\frac{a}{b}``, ``a / b``, powers ``^{2}``; parentheses ``( )``,
  ``\left( \right)``, ``[ ]``, ``\{ \}``, ``{ }``;
* functions ``\sigma``, ``\tanh``, ``\exp``, ``\log`` and ``g``, ``h`` (tanh, the paper's g and
  h), ``\operatorname{relu}``, ``\operatorname{softplus}`` and the reduction
  ``\operatorname{mean}`` with ``( )`` or ``\left( \right)``, ``\sqrt{...}``; a prime is the
  derivative of the pre-activation argument: ``\sigma'(\bar{f}^{(t)})`` = dsigmoid,
  ``\tanh'``, ``g'``, ``h'`` = dtanh, ``\operatorname{relu}'`` = drelu;
* the Iverson bracket ``\left[v > 0\right]`` or ``[v > 0]``: the unit step (relu' written
  from relu's output ``h``: ``\left[h^{(t)} > 0\right]``);
* outer product ``\left\langle a, b \right\rangle`` or ``\langle a, b \rangle``;
* spacing (``\,`` ``\;`` ``\!`` ``\quad``), ``&``, ``\\``, and ``$``/``\[ \]`` around the
  equation are ignored.

Nothing is evaluated: the text is split into tokens and parsed by a recursive-descent
grammar; names are resolved by `derive.verification.notation.NotationScope`. Errors are
`ExpressionError` with the column.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

import sympy as sp

from derive.cell import symbols as S
from derive.cell.grammar import MAX_DIGITS, Matrix, check_constants
from derive.cell.spec import Cell
from derive.errors import ExpressionError
from derive.printing.text import format_expression
from derive.verification.notation import (
    MAX_TERMS,
    NotationScope,
    Target,
    expansion_size,
    parse_target,
)

MAX_LENGTH = 20_000
MAX_DEPTH = 100

_TOKEN = re.compile(r"""
    (?P<cmd>\\[A-Za-z]+|\\[,;:!\ _{}\\|]) |
    (?P<num>\d+(?:\.\d+)?) |
    (?P<letter>[A-Za-z]) |
    (?P<sym>[{}()\[\]^_+\-=,'/*&>]) |
    (?P<space>\s+) |
    (?P<bad>.)
""", re.VERBOSE)

_IGNORED = {r"\,", r"\;", r"\:", r"\!", r"\ ", r"\quad", r"\qquad", r"\displaystyle", "&",
            r"\\", r"\nonumber"}
_WRAPPERS = {r"\boldsymbol", r"\mathbf", r"\bm", r"\mathrm", r"\vec"}
_PRODUCTS = {r"\odot", r"\cdot", r"\circ", "*", r"\times"}
_FUNCS = {r"\sigma": "sigmoid", r"\tanh": "tanh", r"\exp": "exp", r"\log": "log",
          "g": "tanh", "h": "tanh"}
#: functions written \operatorname{name} (the reduction mean among them)
_OPERATORS = ("relu", "softplus", "mean")
#: the derivative of the pre-activation a prime names (\sigma'(x), h'(x), relu'(x))
_PRIMES = {"sigmoid": S.dsigmoid, "tanh": S.dtanh, "relu": S.drelu}
_KNOWN_COMMANDS = sorted({r"\delta", r"\Delta", r"\bar", r"\overline", r"\mathit", r"\frac",
                          r"\left", r"\right", r"\langle", r"\rangle", r"\top", r"\intercal",
                          r"\mathsf", r"\prime", r"\operatorname", r"\sqrt"} | _IGNORED | _WRAPPERS | _PRODUCTS
                         | set(k for k in _FUNCS if k.startswith("\\")))


@dataclass
class _Tok:
    kind: str   # cmd, num, letter, sym, end
    text: str
    col: int    # 1-based


def tokenize(text: str) -> list[_Tok]:
    """Split LaTeX into tokens (commands, numbers, single letters, symbols)."""
    out = []
    for m in _TOKEN.finditer(text):
        kind = m.lastgroup
        tok = m.group()
        if kind == "space" or tok in _IGNORED:
            continue
        if kind == "bad":
            raise ExpressionError(f"unexpected character {tok!r} in LaTeX", text=text,
                                  column=m.start() + 1)
        if kind == "num" and len(tok) > MAX_DIGITS:
            raise ExpressionError(f"a number has more than {MAX_DIGITS} digits (the limit)",
                                  text=text, column=m.start() + 1)
        out.append(_Tok(kind, tok, m.start() + 1))
    out.append(_Tok("end", "", len(text) + 1))
    return out


def _strip_math(text: str) -> str:
    s = text.strip()
    for a, b in (("$$", "$$"), ("$", "$"), (r"\[", r"\]"), (r"\(", r"\)")):
        if s.startswith(a) and s.endswith(b) and len(s) >= len(a) + len(b):
            s = s[len(a):len(s) - len(b)]
            break
    s = s.strip()
    while s.endswith(r"\\"):
        s = s[:-2].rstrip()
    return s


class _Parser:
    def __init__(self, text: str, scope: NotationScope, *, time_zero: bool = False):
        self.text = text
        self.toks = tokenize(text)
        self.i = 0
        self.scope = scope
        self.depth = 0
        self.numeric_time = None  # True when steps are numbers (t = 0), False for t

    # token helpers --------------------------------------------------------------------
    @property
    def tok(self) -> _Tok:
        return self.toks[self.i]

    def peek(self, k: int = 1) -> _Tok:
        return self.toks[min(self.i + k, len(self.toks) - 1)]

    def fail(self, message: str, tok: _Tok | None = None):
        tok = tok or self.tok
        raise ExpressionError(message, text=self.text, column=tok.col)

    def take(self, text: str | None = None, kind: str | None = None) -> _Tok:
        t = self.tok
        if (text is not None and t.text != text) or (kind is not None and t.kind != kind):
            want = text or kind
            got = t.text or "end of input"
            self.fail(f"expected {want!r}, found {got!r}")
        self.i += 1
        return t

    def at(self, *texts: str) -> bool:
        return self.tok.text in texts

    def unknown_command(self, t: _Tok):
        close = difflib.get_close_matches(t.text, _KNOWN_COMMANDS, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]}?)" if close else ""
        self.fail(f"unknown LaTeX command {t.text}{hint}", t)

    # grammar ----------------------------------------------------------------------------
    def expression(self) -> sp.Expr:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            self.fail("expression too deeply nested")
        terms = []
        sign = 1
        if self.at("+", "-"):
            sign = -1 if self.take().text == "-" else 1
        terms.append(sign * self.scalar(self.term()))
        while self.at("+", "-"):
            sign = -1 if self.take().text == "-" else 1
            terms.append(sign * self.scalar(self.term()))
        self.depth -= 1
        return sp.Add(*terms)

    def top_terms(self) -> list[tuple[sp.Expr, tuple[int, int]]]:
        """The top-level terms of the right side with their source spans."""
        out = []
        sign = 1
        if self.at("+", "-"):
            sign = -1 if self.take().text == "-" else 1
        while True:
            start = self.tok.col
            e = sign * self.scalar(self.term())
            out.append((e, (start, self.tok.col)))
            if not self.at("+", "-"):
                break
            sign = -1 if self.take().text == "-" else 1
        return out

    def scalar(self, e, tok=None):
        if isinstance(e, Matrix):
            self.fail(f"matrix {e.symbol} must multiply a vector (like {e.symbol} x^{{(t)}})",
                      tok)
        return e

    def starts_factor(self) -> bool:
        t = self.tok
        if t.kind in ("num", "letter"):
            return True
        if t.kind == "sym":
            return t.text in ("(", "[", "{")
        if t.kind == "cmd":
            return t.text not in _PRODUCTS and t.text not in (r"\right", r"\rangle") \
                and not (t.text == r"\left" and self.peek().text in (")", "]", r"\rangle"))
        return False

    def term(self):
        left = self.factor()
        while True:
            if self.at(*_PRODUCTS):
                self.take()
                right = self.factor()
            elif self.at("/"):
                tok = self.take()
                right = self.scalar(self.factor(), tok)
                left = self.scalar(left) / right
                continue
            elif self.starts_factor():
                right = self.factor()
            else:
                return left
            left = self.multiply(left, right)

    def multiply(self, left, right):
        if isinstance(left, Matrix):
            if isinstance(right, Matrix):
                self.fail("a product of two matrices is not part of the notation")
            return (S.MatTVec if left.transposed else S.MatVec)(left.symbol, right)
        if isinstance(right, Matrix):
            self.fail(f"matrix {right.symbol} must be the left factor of a matrix product")
        return left * right

    def factor(self):
        base = self.atom()
        while self.at("^"):
            tok = self.tok
            power = self.superscript_power()
            if power is None:
                break
            if isinstance(base, Matrix):
                self.fail("a matrix can only be transposed (^{\\top}), not raised to a power",
                          tok)
            base = base ** power
        return base

    def superscript_power(self):
        """`^{2}`, `^2`, `^{-1}`: a number exponent (|n| ≤ 16)."""
        tok = self.take("^")
        if self.at("{"):
            self.take("{")
            sign = -1 if self.at("-") and self.take() else 1
            n = self.take(kind="num")
            self.take("}")
        else:
            sign, n = 1, self.take(kind="num")
        value = sp.Rational(n.text) * sign
        if abs(value) > 16:
            self.fail("exponents must be numbers of size at most 16", tok)
        return value

    def group(self, open_: str, close: str):
        self.take(open_)
        e = self.expression()
        self.take(close)
        return e

    def parenthesized(self):
        """`( e )`, `\\left( e \\right)`, `[ e ]`, `\\{ e \\}`, `{ e }`."""
        if self.at(r"\left"):
            self.take()
            opener = self.take().text
            close = {"(": ")", "[": "]", r"\{": r"\}", r"\langle": r"\rangle"}.get(opener)
            if close is None:
                self.fail(f"\\left{opener} is not supported")
            if opener == r"\langle":
                return self.outer_rest(close, right=True)
            e = self.expression()
            if opener == "[" and self.at(">"):
                e = self.positive(e)
            self.take(r"\right")
            self.take(close)
            return e
        opener = self.tok.text
        close = {"(": ")", "[": "]", "{": "}", r"\{": r"\}"}[opener]
        if opener != "[":
            return self.group(opener, close)
        self.take(opener)
        e = self.expression()
        if self.at(">"):
            e = self.positive(e)
        self.take(close)
        return e

    def positive(self, e):
        """The rest of an Iverson bracket [e > 0] (relu' from relu's output)."""
        tok = self.take(">")
        if self.tok.text != "0":
            self.fail("only [v > 0] (the unit step, relu') is part of the notation", tok)
        self.take()
        return S.step(self.scalar(e))

    def outer_rest(self, close: str, right: bool):
        a = self.expression()
        self.take(",")
        b = self.expression()
        if right:
            self.take(r"\right")
        self.take(close)
        return S.Outer(a, b)

    def atom(self):
        t = self.tok
        if t.kind == "num":
            self.take()
            return sp.Rational(t.text)
        if t.text in ("(", "[", "{", r"\{", r"\left"):
            return self.parenthesized()
        if t.text == r"\langle":
            self.take()
            return self.outer_rest(r"\rangle", right=False)
        if t.text == r"\frac":
            self.take()
            num = self.group("{", "}")
            den = self.group("{", "}")
            return num / den
        if t.text in _FUNCS and (t.kind == "cmd" or self.peek().text in ("'", "(", r"\left")):
            return self.function()
        if t.text == r"\operatorname":
            return self.function()
        if t.text == r"\sqrt":
            self.take()
            return S.sqrt(self.scalar(self.group("{", "}")))
        if t.text == r"\delta":
            self.take()
            name = self.name()
            shift = self.time(name, required=True)
            return self.resolve("d" + name, shift, t)
        if t.text == r"\Delta":
            self.take()
            label = "Delta"
            if self.at("_"):
                self.take()
                label = "Delta_" + self.subscript()
            shift = self.time(label, required=True)
            return self.resolve(label, shift, t)
        if t.kind == "cmd" and t.text not in (r"\bar", r"\overline", r"\mathit") \
                and t.text not in _WRAPPERS:
            self.unknown_command(t)
        if t.kind in ("letter", "cmd"):
            return self.named(t)
        self.fail(f"unexpected {t.text or 'end of input'!r}")

    def function(self):
        t = self.take()
        if t.text == r"\operatorname":
            name = self.braced_word()
            if name not in _OPERATORS:
                self.fail(f"unknown function \\operatorname{{{name}}} (known: "
                          f"{', '.join(_OPERATORS)})", t)
        else:
            name = _FUNCS[t.text]
        prime = False
        while self.at("'") or self.at(r"\prime"):
            if prime:
                self.fail("only first derivatives are part of the notation")
            self.take()
            prime = True
        if self.at("^"):  # \sigma^{\prime}
            save = self.i
            self.take("^")
            if self.at("{") and self.peek().text == r"\prime":
                self.take("{")
                self.take(r"\prime")
                self.take("}")
                prime = True
            else:
                self.i = save
        if not self.at("(", r"\left", "[", "{"):
            self.fail(f"{t.text} needs an argument in parentheses, like {t.text}\\left(x\\right)")
        arg = self.scalar(self.parenthesized())
        if prime:
            return _PRIMES[name](arg) if name in _PRIMES else self.fail(
                f"{t.text}' is not supported", t)
        return self.scope.functions()[name](arg)

    def name(self) -> str:
        """A vector name: c, \\bar{o} (o_bar), \\mathit{name}, wrappers ignored."""
        t = self.tok
        if t.text in _WRAPPERS:
            self.take()
            self.take("{")
            n = self.name()
            self.take("}")
            return n
        if t.text in (r"\bar", r"\overline"):
            self.take()
            self.take("{")
            n = self.name()
            self.take("}")
            return n + "_bar"
        if t.text == r"\mathit":
            self.take()
            return self.braced_word()
        if t.kind == "letter":
            self.take()
            return t.text
        if t.text == "{":
            self.take("{")
            n = self.name()
            self.take("}")
            return n
        self.fail(f"expected a name after \\delta, found {t.text or 'end of input'!r}")

    def braced_word(self) -> str:
        self.take("{")
        parts = []
        while not self.at("}"):
            t = self.tok
            if t.kind in ("letter", "num"):
                parts.append(t.text)
            elif t.text in (r"\_", "_"):
                parts.append("_")
            else:
                self.fail(f"unexpected {t.text or 'end of input'!r} in a name")
            self.take()
        self.take("}")
        return "".join(parts)

    def subscript(self) -> str:
        if self.at("{"):
            return self.braced_word()
        t = self.tok
        if t.kind in ("letter", "num"):
            self.take()
            return t.text
        self.fail("expected a subscript like _{z}")

    def time(self, name: str, required: bool) -> int | None:
        """A time superscript `^{(t+1)}`, `^{t}`, `^t`, `^{(0)}` → shift; None if absent."""
        if not self.at("^"):
            if required:
                self.fail(f"{name} needs a time index, like ^{{(t)}}")
            return None
        nxt = self.peek()
        inner = self.peek(2)
        is_time = (nxt.text == "t") or (nxt.text == "(" and inner.text in ("t", "-") or
                                        nxt.text == "(" and inner.kind == "num") or (
            nxt.text == "{" and (inner.text in ("t", "(")))
        if not is_time:
            if required:
                self.fail(f"{name} needs a time index, like ^{{(t)}}")
            return None
        self.take("^")
        braces = self.at("{")
        if braces:
            self.take("{")
        parens = self.at("(")
        if parens:
            self.take("(")
        t = self.tok
        if t.text == "t":
            self.take()
            self.numeric(False, t)
            shift = 0
            if self.at("+", "-"):
                sign = 1 if self.take().text == "+" else -1
                shift = sign * int(self.take(kind="num").text)
        else:
            sign = -1 if self.at("-") and self.take() else 1
            n = self.take(kind="num")
            self.numeric(True, t)
            shift = sign * int(n.text)
        if parens:
            self.take(")")
        if braces:
            self.take("}")
        return shift

    def numeric(self, numeric: bool, tok):
        if self.numeric_time is None:
            self.numeric_time = numeric
        elif self.numeric_time != numeric:
            self.fail("write every time index with t (like ^{(t+1)}) or every one as a number "
                      "(the equation at t = 0), not both", tok)

    def named(self, t: _Tok):
        """A value `c^{(t)}` or a parameter `W_{z}` / `p_i` (possibly transposed)."""
        head = self.name()
        sub = ""
        if self.at("_"):
            self.take("_")
            sub = self.subscript()
        pname = f"{head}_{sub}" if sub else head
        shift = self.time(pname, required=False)
        if shift is not None:
            return self.resolve(pname, shift, t)
        if pname not in self.scope.cell.parameters:
            if pname in self.scope.vectors:
                self.fail(f"{pname} needs a time index, like ^{{(t)}}", t)
            self.resolve(pname, None, t)  # raises with a suggestion
        value = self.resolve(pname, None, t)
        if isinstance(value, Matrix) and self.at("^") and self.is_transpose():
            self.take("^")
            if self.at("{"):
                self.take("{")
                self.transpose_mark()
                self.take("}")
            else:
                self.transpose_mark()
            value = Matrix(value.symbol, not value.transposed)
        return value

    def is_transpose(self) -> bool:
        nxt, inner = self.peek(), self.peek(2)
        marks = (r"\top", "T", r"\intercal", r"\mathsf")
        return nxt.text in marks or (nxt.text == "{" and inner.text in marks)

    def transpose_mark(self):
        if self.at(r"\mathsf"):
            self.take()
            self.take("{")
            self.take("T")
            self.take("}")
        else:
            self.take()

    def resolve(self, name: str, shift: int | None, tok: _Tok):
        try:
            return self.scope.name(name, shift, tok.col)
        except ExpressionError as exc:
            raise ExpressionError(exc.detail, text=self.text, column=tok.col) from None


def _checked(text: str) -> str:
    if len(text) > MAX_LENGTH:
        raise ExpressionError(f"expression longer than {MAX_LENGTH} characters")
    s = _strip_math(text)
    if not s:
        raise ExpressionError("empty expression")
    return s


def _parse_rhs(cell: Cell, text: str):
    p = _Parser(text, NotationScope(cell))
    terms = p.top_terms()
    if p.tok.kind != "end":
        p.fail(f"unexpected {p.tok.text!r}")
    expr = sp.Add(*[e for e, _ in terms])
    check_constants(expr)
    if expansion_size(expr) > MAX_TERMS:
        raise ExpressionError(f"the expression expands into more than {MAX_TERMS} terms")
    return expr, terms, p.numeric_time


def parse_latex_target(cell: Cell, text: str) -> Target:
    r"""The left side: ``\delta c^{(t)}``, ``\delta W_{z}^{(t)}``, ``\delta W_{z}``,
    ``\delta c_{0}``."""
    p = _Parser(text, NotationScope(cell))
    p.take(r"\delta")
    head = p.name()
    sub = ""
    if p.at("_"):
        p.take("_")
        sub = p.subscript()
    shift = p.time(head, required=False)
    if p.tok.kind != "end":
        p.fail(f"unexpected {p.tok.text!r} on the left side")
    if sub == "0" and head in cell.states and shift is None:
        return parse_target(cell, f"d{head}0")
    name = f"{head}_{sub}" if sub else head
    label = f"d{name}" if shift is None else f"d{name}[{S.time_label(shift)}]"
    return parse_target(cell, label)


def parse_latex_equation(cell: Cell, text: str):
    """(target, right side, [(term, text of the term)]) of a LaTeX equation."""
    try:
        return _parse_latex_equation(cell, text)
    except RecursionError:
        raise ExpressionError("expression too deeply nested") from None


def _parse_latex_equation(cell: Cell, text: str):
    s = _checked(text)
    depth = 0
    cuts = []
    for k, ch in enumerate(s):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == "=" and depth == 0:
            cuts.append(k)
    if not cuts:
        raise ExpressionError(r"an equation needs '=', like \delta c^{(t)} = ...")
    if len(cuts) > 2:
        raise ExpressionError("an equation has one '=' (or two, as in "
                              r"\delta c_{0} = \delta c^{(-1)} = ...)")
    cut = cuts[-1]
    lhs, rhs = s[:cuts[0]], s[cut + 1:]
    if len(cuts) == 2:  # the documents' \delta c_{0} = \delta c^{(-1)} = ...
        middle = s[cuts[0] + 1:cut].strip()
        state = re.fullmatch(r"\\delta\s*(.+)_\{0\}", lhs.strip())
        want = state and re.sub(r"\s+", "", rf"\delta {state.group(1)}^{{(-1)}}")
        if not state or re.sub(r"[\s&]+", "", middle) != want:
            raise ExpressionError("an equation has exactly one '='")
    try:
        target = parse_latex_target(cell, lhs.strip())
    except ExpressionError as exc:
        if exc.column is None:
            raise
        raise ExpressionError(exc.detail, text=s, column=exc.column
                              + (len(lhs) - len(lhs.lstrip()))) from None
    try:
        expr, terms, _ = _parse_rhs(cell, rhs)
    except ExpressionError as exc:
        if exc.column is None:
            raise
        raise ExpressionError(exc.detail, text=s, column=exc.column + cut + 1) from None
    shown = [(e, format_expression(e, cell)) for e, _ in terms]
    return target, expr, shown
