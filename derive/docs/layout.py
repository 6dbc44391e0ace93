"""Long LaTeX equations broken into the rows of an aligned environment."""

from __future__ import annotations

import re

import sympy as sp

from derive.cell import symbols as S
from derive.printing.latex import _LATEX, LatexPrinter, latex_param
from derive.printing.text import (
    _TOP,
    Ordered,
    Product,
    _negate,
    _negative,
    _split,
    _terms,
)

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
        close = r"\bigr)"
        if isinstance(f, (Ordered, sp.Add)):
            head, inner = "", f
        elif isinstance(f, (S.MatVec, S.MatTVec)) and not f.args[1].is_Symbol:
            head = latex_param(f.args[0].name) + (_TOP if isinstance(f, S.MatTVec) else "") + " "
            inner = f.args[1]
            if not alone:       # a factor of a product: the product in parentheses too
                head, close = r"\bigl(" + head, close + close
        else:
            return None
        rows = self.lay(inner, level + 1)
        return ([(level, head + r"\bigl(" + rows[0][1])] + rows[1:] + [(level, close)])


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
