"""One hand-derived equation, read in the text notation (`derive.verification.notation`) or in
LaTeX (`derive.verification.latex`): its target, its right side and its top-level terms as
written (to quote a user's own spelling of a wrong term)."""

from __future__ import annotations

from typing import NamedTuple

import sympy as sp

from derive.cell.spec import Cell
from derive.errors import ExpressionError
from derive.verification.latex import parse_latex_equation
from derive.verification.notation import (
    Target,
    parse_expression,
    parse_target,
    split_equation,
    top_level_terms,
)


class Equation(NamedTuple):
    """`target = rhs`; `terms` are the top-level summands: (signed expression, text)."""

    target: Target
    rhs: sp.Expr
    terms: list[tuple[sp.Expr, str]]


def read_equation(cell: Cell, equation: str, latex: bool = False) -> Equation:
    """The target, right side and top-level terms (as written) of an equation in the text
    notation, or in LaTeX when `latex`. Raises `ExpressionError` naming the column."""
    if latex:
        return Equation(*parse_latex_equation(cell, equation))
    lhs, rhs_text = split_equation(equation)
    target = parse_target(cell, lhs)
    try:
        rhs = parse_expression(cell, rhs_text)
    except ExpressionError as exc:
        if exc.column is None:
            raise
        offset = len(lhs) + 1 + (len(rhs_text) - len(rhs_text.lstrip()))
        raise ExpressionError(exc.detail, text=equation.strip(),
                              column=exc.column + offset - (len(equation) - len(equation.lstrip()))
                              ) from None
    terms = []
    for sign, src in top_level_terms(rhs_text):
        terms.append((sign * parse_expression(cell, src), ("-" if sign < 0 else "") + src))
    return Equation(target, rhs, terms)
