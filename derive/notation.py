"""The text notation of hand derivations (design.md), parsed into the derivation's symbols.

    dc[t] = dy[t]*o[t]*dtanh(c[t]) + p_o*do_bar[t] + p_i*di_bar[t+1] + ...
    dy[t] = Delta[t] + R_z.T @ dz_bar[t+1] + ...
    dp_f[t] = c[t-1]*df_bar[t]          dR_f[t] = outer(df_bar[t+1], y[t])

`name[t+k]` is a forward value, `dname[t+k]` its delta, `Delta[t]` the external
gradient, parameters carry no index. Parsing never evaluates anything (see
`derive.expr`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import sympy as sp

from . import symbols as S
from .errors import ExpressionError, suggest
from .expr import Matrix, parse
from .spec import Cell

FUNCTIONS = {**S.ACTIVATIONS, "dsigmoid": S.dsigmoid, "dtanh": S.dtanh, "outer": S.Outer}
_LHS = re.compile(r"^\s*(d[A-Za-z][A-Za-z0-9_]*)\s*(\[\s*t\s*(?:([+-])\s*(\d+))?\s*\])?\s*$")


@dataclass(frozen=True)
class Target:
    """The left-hand side of an equation: a node's delta or a parameter's gradient."""

    name: str          # node, input or parameter name (without the d)
    kind: str          # 'node' or 'param'
    shift: int = 0


class NotationScope:
    """Resolves names of the text notation for one cell."""

    def __init__(self, cell: Cell):
        self.cell = cell
        self.vectors = list(cell.inputs) + list(cell.nodes)

    def known(self) -> set[str]:
        return (set(self.vectors) | {"d" + v for v in self.vectors} | set(self.cell.parameters)
                | {"Delta"} | ({f"Delta_{o}" for o in self.cell.outputs}
                               if len(self.cell.outputs) > 1 else set()))

    def functions(self):
        return dict(FUNCTIONS)

    def name(self, name: str, shift: int | None, column: int):
        cell = self.cell
        if name in cell.parameters:
            if shift is not None:
                raise ExpressionError(f"parameter {name} takes no time index", column=column)
            return Matrix(S.param(name)) if cell.parameters[name].is_matrix else S.param(name)
        single = len(cell.outputs) == 1
        if name == "Delta" or (name.startswith("Delta_") and name[6:] in cell.outputs):
            output = cell.outputs[0] if name == "Delta" else name[6:]
            if name == "Delta" and not single:
                raise ExpressionError(f"this cell has several outputs: write Delta_<output> "
                                      f"({', '.join('Delta_' + o for o in cell.outputs)})",
                                      column=column)
            return S.incoming(output, self._index(name, shift, column), single=single)
        if name in self.vectors:
            return S.value(name, self._index(name, shift, column))
        if name.startswith("d") and name[1:] in self.vectors:
            return S.delta(name[1:], self._index(name, shift, column))
        raise ExpressionError(f"unknown name {name!r}{suggest(name, self.known())}",
                              column=column)

    @staticmethod
    def _index(name, shift, column) -> int:
        if shift is None:
            raise ExpressionError(f"{name} needs a time index, like {name}[t] or {name}[t+1]",
                                  column=column)
        return shift


def parse_expression(cell: Cell, text: str) -> sp.Expr:
    """Parse an expression of the text notation for `cell`."""
    return parse(text, NotationScope(cell))


def parse_target(cell: Cell, text: str) -> Target:
    """Parse the left-hand side `dname[t]` (node delta) or `dP[t]`/`dP` (parameter)."""
    m = _LHS.match(text)
    if not m:
        raise ExpressionError(f"the left side must be a delta like dc[t] or dW_z[t], "
                              f"not {text.strip()!r}")
    name = m.group(1)[1:]
    shift = int(m.group(4)) * (1 if m.group(3) == "+" else -1) if m.group(4) else 0
    if name in cell.parameters:
        return Target(name, "param", shift)
    if name in cell.nodes or name in cell.inputs:
        if not m.group(2):
            raise ExpressionError(f"d{name} needs a time index, like d{name}[t]")
        return Target(name, "node", shift)
    known = ["d" + n for n in list(cell.nodes) + list(cell.inputs) + list(cell.parameters)]
    raise ExpressionError(f"unknown left side {m.group(1)!r}{suggest(m.group(1), known)}")


def parse_equation(cell: Cell, text: str) -> tuple[Target, sp.Expr]:
    """Split `lhs = rhs` and parse both sides."""
    if text.count("=") != 1 or "==" in text:
        raise ExpressionError("an equation has exactly one '=', like dc[t] = ...")
    lhs, rhs = text.split("=")
    return parse_target(cell, lhs), parse_expression(cell, rhs)
