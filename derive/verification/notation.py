"""The text notation of hand derivations, parsed into the derivation's symbols.

One equation a line, ``#`` starts a comment. The left side says what is derived:

    dc[t]   = dy[t]*o[t]*dtanh(c[t]) + p_o*do_bar[t] + p_i*di_bar[t+1] + ...   node delta δcᵗ
    dy[t]   = Delta[t] + R_z.T @ dz_bar[t+1] + ...                             (any node or input)
    dp_f[t] = c[t-1]*df_bar[t]                  per-step term of a parameter gradient
    dR_f[t] = outer(df_bar[t+1], y[t])          (δR_f = Σ_t Σ_batch of the term: equal up to
    db_o[t] = do_bar[t]                          a uniform time shift; `dR_f` works as well)
    dc0     = p_i*di_bar[t] + p_f*df_bar[t] + dc[t]*f[t]
                                                gradient of the initial state c⁻¹, right side
                                                written at step t = 0 (c[t-1] is the initial state)

Right side:

* ``name[t]``, ``name[t+1]``, ``name[t-1]``: the forward value of a node or input at that
  step; ``dname[...]`` its delta δ = ∂J/∂name; ``Delta[t]`` the gradient reaching the
  output from outside the recurrence (``Delta_<output>[t]`` when a cell has several);
* parameters without index (``W_z``, ``R_i``, ``p_f``, ``b_o``);
* ``* / + - **`` element-wise (exponents are numbers, at most 16 in size), ``@`` the matrix
  product, ``.T`` the transpose (``R_z.T @ dz_bar[t+1]``); ``outer(a, b)`` = a bᵀ summed
  over the batch;
* functions ``sigmoid tanh exp log relu softplus sqrt`` and the derivatives ``dsigmoid
  dtanh drelu`` of the pre-activation argument: ``dsigmoid(f_bar[t])`` =
  ``f[t]*(1-f[t])``, ``dtanh(c[t])`` = ``1-tanh(c[t])**2``, ``drelu(h_bar[t])`` =
  ``step(h[t])``, where ``step(v)`` is [v > 0] (1 where v > 0, else 0);
  ``softplus'(a)`` is ``sigmoid(a)`` and ``sqrt(a)'`` is ``1/(2*sqrt(a))``;
* the reduction ``mean(v)``: the mean of v over the hidden units of one batch row,
  broadcast back to every unit; its adjoint is itself (δv gets ``mean(dm[t])`` from
  m = mean(v)).

Parsing never evaluates anything (see `derive.cell.grammar`): the text is parsed against this
grammar and anything else is an `ExpressionError` naming the column.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass

import sympy as sp

from derive.cell import symbols as S
from derive.cell.grammar import Matrix, parse
from derive.cell.spec import Cell
from derive.cell.symbols import MAX_SHIFT
from derive.errors import ExpressionError, suggest

FUNCTIONS = {**S.ACTIVATIONS, **S.REDUCTIONS, "dsigmoid": S.dsigmoid, "dtanh": S.dtanh,
             "drelu": S.drelu, "step": S.step, "outer": S.Outer}
MAX_EXPONENT = 16      # |n| in a ** n
MAX_TERMS = 20_000     # terms a right side may expand into
_LHS = re.compile(r"^\s*(d[A-Za-z][A-Za-z0-9_]*)\s*(\[\s*t\s*(?:([+-])\s*(\d+))?\s*\])?\s*$")

@dataclass(frozen=True)
class Target:
    """The left-hand side of an equation.

    kind 'node': δnameᵗ⁺ˢʰⁱᶠᵗ of a node or input; 'param': a per-step term of δname;
    'initial': the gradient of the initial state `name` (at t = −1), right side at t = 0.
    """

    name: str          # node, input, parameter or state name (without the d)
    kind: str          # 'node', 'param' or 'initial'
    shift: int = 0

    @property
    def label(self) -> str:
        """How the target is written: 'dc[t]', 'dp_f[t]', 'dc0'."""
        if self.kind == "initial":
            return f"d{self.name}0"
        return f"d{self.name}[{S.time_label(self.shift)}]"


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
        if name.startswith("d") and name[1:-1] in cell.states and name.endswith("0"):
            raise ExpressionError(f"{name} (an initial-state gradient) can only be a left side; "
                                  f"on the right write the deltas of step t = 0", column=column)
        raise ExpressionError(f"unknown name {name!r}{suggest(name, self.known())}",
                              column=column)

    @staticmethod
    def _index(name, shift, column) -> int:
        if shift is None:
            raise ExpressionError(f"{name} needs a time index, like {name}[t] or {name}[t+1]",
                                  column=column)
        if abs(shift) > MAX_SHIFT:
            raise ExpressionError(f"{name}[t{shift:+d}]: time shifts are limited to "
                                  f"±{MAX_SHIFT}", column=column)
        return shift


def _prescan(text: str) -> None:
    """Reject what would make SymPy itself slow before `parse` builds anything:
    exponents that are not small numbers (``2**99999999``)."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, RecursionError, MemoryError, ValueError):
        return  # parse() reports it with the column
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
            ex = node.right
            if isinstance(ex, ast.UnaryOp) and isinstance(ex.op, (ast.USub, ast.UAdd)):
                ex = ex.operand
            if not (isinstance(ex, ast.Constant) and isinstance(ex.value, (int, float))
                    and not isinstance(ex.value, bool) and abs(ex.value) <= MAX_EXPONENT):
                raise ExpressionError(f"exponents must be numbers of size at most "
                                      f"{MAX_EXPONENT}", text=text.strip(),
                                      column=node.right.col_offset + 1)


def expansion_size(expr: sp.Expr) -> int:
    """An upper bound of the number of terms `expr` expands into (guards sp.expand)."""
    memo: dict = {}

    def size(e) -> int:
        if e in memo:
            return memo[e]
        if isinstance(e, sp.Add):
            n = sum(size(a) for a in e.args)
        elif isinstance(e, sp.Mul):
            n = 1
            for a in e.args:
                n = min(n * size(a), 10 ** 12)
        elif isinstance(e, sp.Pow) and e.exp.is_Integer and e.exp > 0:
            n = min(size(e.base) ** int(e.exp), 10 ** 12)
        elif isinstance(e, (S.MatVec, S.MatTVec, S.Outer)):
            n = 1
            for a in e.args:
                n = min(n * size(a), 10 ** 12)
        else:
            n = max([1] + [size(a) for a in e.args])
        memo[e] = n
        return n

    return size(expr)


def parse_expression(cell: Cell, text: str) -> sp.Expr:
    """Parse an expression of the text notation for `cell` (never evaluated)."""
    _prescan(text)
    expr = parse(text, NotationScope(cell))
    if expansion_size(expr) > MAX_TERMS:
        raise ExpressionError(f"the expression expands into more than {MAX_TERMS} terms")
    return expr


def parse_target(cell: Cell, text: str) -> Target:
    """Parse the left side: `dname[t+k]` (node), `dP[t]`/`dP` (parameter), `ds0` (state)."""
    m = _LHS.match(text)
    if not m:
        raise ExpressionError(f"the left side must be a delta like dc[t], dW_z[t] or dc0, "
                              f"not {text.strip()!r}")
    name = m.group(1)[1:]
    shift = int(m.group(4)) * (1 if m.group(3) == "+" else -1) if m.group(4) else 0
    if abs(shift) > MAX_SHIFT:
        raise ExpressionError(f"time shifts are limited to ±{MAX_SHIFT}")
    if name in cell.parameters:
        return Target(name, "param", shift)
    if name in cell.nodes or name in cell.inputs:
        if not m.group(2):
            raise ExpressionError(f"d{name} needs a time index, like d{name}[t]")
        return Target(name, "node", shift)
    for state in cell.states:
        if name in (f"{state}0", f"{state}_0"):
            if m.group(2):
                raise ExpressionError(f"d{name} (the initial state's gradient) takes no time "
                                      f"index: write d{state}0 = ... at step t = 0")
            return Target(state, "initial")
    known = (["d" + n for n in list(cell.nodes) + list(cell.inputs) + list(cell.parameters)]
             + [f"d{s}0" for s in cell.states])
    raise ExpressionError(f"unknown left side {m.group(1)!r}{suggest(m.group(1), known)}")


def split_equation(text: str) -> tuple[str, str]:
    """`lhs = rhs` → (lhs, rhs); exactly one '='."""
    if text.count("=") != 1 or "==" in text:
        raise ExpressionError("an equation has exactly one '=', like dc[t] = ...")
    lhs, rhs = text.split("=")
    return lhs, rhs


def parse_equation(cell: Cell, text: str) -> tuple[Target, sp.Expr]:
    """Split `lhs = rhs` and parse both sides."""
    lhs, rhs = split_equation(text)
    return parse_target(cell, lhs), parse_expression(cell, rhs)


def top_level_terms(text: str) -> list[tuple[int, str]]:
    """The top-level summands of an expression as typed: [(sign, source text)].

    `a + b*(c - d) - e` → [(1, 'a'), (1, 'b*(c - d)'), (-1, 'e')]. Used to quote a user's
    own spelling of a wrong term. The text must already parse.
    """
    src = text.strip()
    tree = ast.parse(src, mode="eval").body
    out: list[tuple[int, str]] = []

    def walk(node, sign):
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub)):
            walk(node.left, sign)
            walk(node.right, sign if isinstance(node.op, ast.Add) else -sign)
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            walk(node.operand, -sign)
        else:
            out.append((sign, ast.get_source_segment(src, node) or ""))

    walk(tree, 1)
    return out


