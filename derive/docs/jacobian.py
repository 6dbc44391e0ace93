"""`derive jacobian`: the derived state-to-state Jacobian as text, LaTeX, Markdown or JSON.

Each block ∂sᵗ/∂rᵗ⁻¹ (`derive.derivation.jacobian`) is printed twice, each named for what
it is: the **Jacobian** J = ∂sᵗ/∂rᵗ⁻¹ (numerator layout: row k, column l is
∂s_kᵗ/∂r_lᵗ⁻¹) and the **backward map** Jᵀ, which back-propagation applies to δsᵗ. For
the Elman RNN:

    dy[t]/dy[t-1] = diag(1 - y[t]**2) @ R            (Jacobian)
    (dy[t]/dy[t-1]).T = R.T @ diag(1 - y[t]**2)      (backward map)

diag(v) is the diagonal matrix of the vector v; `@` is the matrix product.
"""

from __future__ import annotations

import json

import sympy as sp

from derive.derivation import Derivation
from derive.derivation.jacobian import Block, Jacobian, jacobian
from derive.docs.layout import COLUMN, latex_rows, latex_width
from derive.errors import UserError
from derive.printing.latex import latex, latex_param, latex_time, latex_vector
from derive.printing.text import text

FORMATS = ("text", "latex", "markdown", "json")

CONVENTION = ("Jacobian J = ds[t]/dr[t-1] for every pair of states s, r, numerator layout: "
              "J[k, l] = ds_k[t]/dr_l[t-1] (size(s) x size(r): N x N unless a state has the second size P); diag(v) is the diagonal matrix of v. "
              "The backward map J.T (the transpose: factors reversed, matrices transposed) "
              "carries the gradient back one step: dr[t-1] = sum over s of J.T @ ds[t] "
              "(plus the flows of r[t-1] that leave the recurrence).")

LATEX_CONVENTION = (
    r"For every pair of states $s, r$ the block $J_{sr} = \partial s^{(t)} / \partial "
    r"r^{(t-1)}$ of the step-to-step Jacobian, in numerator layout: row $k$, column $l$ is "
    r"$\partial s_k^{(t)} / \partial r_l^{(t-1)}$ (as many rows as $s$ has entries, as many columns as $r$: $N$ and $N$ unless a state has the second size $P$); $\operatorname{diag}(v)$ "
    r"is the diagonal matrix of the vector $v$. Back-propagation applies the transpose, "
    r"the backward map $J_{sr}^{\top}$ (factors reversed, matrices transposed): "
    r"$\delta r^{(t-1)} = \sum_s J_{sr}^{\top} \delta s^{(t)}$ plus the flows of "
    r"$r^{(t-1)}$ that leave the recurrence.")


def _factor_text(f, transpose: bool) -> str:
    if isinstance(f, str):
        return f + (".T" if transpose else "")
    return f"diag({text(f)})"


def _factor_latex(f, transpose: bool) -> str:
    if isinstance(f, str):
        return latex_param(f) + (r"^{\top}" if transpose else "")
    if isinstance(f, sp.Symbol) and f.name.startswith("a_"):   # a named coefficient
        return rf"\operatorname{{diag}}\left(a_{{{f.name[2:]}}}\right)"
    return rf"\operatorname{{diag}}\left({latex(f)}\right)"


def _terms(block: Block, transpose: bool, factor, join: str) -> list[str]:
    """Each chain term as text: diag(a) · F₁ ⋯ (Jacobian) or ⋯ F₁ᵀ · diag(a) (backward)."""
    out = []
    for term in block.terms:
        parts = [term.coefficient] + list(term.factors)
        if term.coefficient == 1 and term.factors:
            parts = parts[1:]
        if transpose:
            parts = parts[::-1]
        out.append(join.join(factor(p, transpose) for p in parts))
    return out


def block_text(block: Block, transpose: bool = False) -> str:
    """The right side of a block in the text notation (`0` for a zero block)."""
    return " + ".join(_terms(block, transpose, _factor_text, " @ ")) or "0"


def block_latex_terms(block: Block, transpose: bool = False) -> list[str]:
    """The terms of a block in LaTeX (an empty list for a zero block)."""
    return _terms(block, transpose, _factor_latex, " ")


def lhs_text(block: Block, transpose: bool = False) -> str:
    j = f"d{block.state}[t]/d{block.previous}[t-1]"
    return f"({j}).T" if transpose else j


def lhs_latex(block: Block, transpose: bool = False) -> str:
    j = (rf"\frac{{\partial {latex_vector(block.state)}{latex_time(0)}}}"
         rf"{{\partial {latex_vector(block.previous)}{latex_time(-1)}}}")
    return rf"\left({j}\right)^{{\top}}" if transpose else j


def _rows(lhs: str, terms: list[str], row_end: str) -> str:
    r"""``lhs &= term₁`` and a row ``&\qquad + term`` for each further term."""
    rows = [f"{lhs} &= {terms[0] if terms else '0'}"] + [rf"&\qquad + {t}" for t in terms[1:]]
    return row_end.join(rows)


def _named(block: Block) -> Block:
    """The block with each coefficient replaced by a name a₁, a₂, … (for long blocks)."""
    from derive.derivation.jacobian import ChainTerm
    return Block(block.state, block.previous, tuple(
        ChainTerm(_coefficient_name(k + 1) if t.coefficient != 1 else t.coefficient, t.factors)
        for k, t in enumerate(block.terms)))


def _coefficient_name(k: int):
    import sympy as sp
    return sp.Symbol(f"a_{k}")


def block_equations(block: Block, row_end: str = " \\\\\n",
                    width: float = COLUMN) -> list[list[str]]:
    r"""The aligned equations of one block, in groups aligned together: its Jacobian and
    its backward map, one term a row. When a term is too wide for the column, each
    diag(·) is named ``a_{k}`` and defined in a second group (broken into rows like the
    backward equations)."""
    pairs = [(lhs_latex(block, t), block_latex_terms(block, t)) for t in (False, True)]
    lhs_width = max(latex_width(lhs) for lhs, _ in pairs)
    budget = width - lhs_width - 8
    if all(latex_width(term) <= budget for _, terms in pairs for term in terms):
        return [[_rows(lhs, terms, row_end) for lhs, terms in pairs]]
    named = _named(block)
    return [[_rows(lhs_latex(named, t), block_latex_terms(named, t), row_end)
             for t in (False, True)],
            [row_end.join(latex_rows(f"a_{{{k + 1}}}", term.coefficient, width=width))
             for k, term in enumerate(block.terms) if term.coefficient != 1]]


def jacobian_equations(jac: Jacobian, row_end: str = " \\\\\n") -> list[list[str]]:
    """Groups of aligned equations (`block_equations`), pair of states by pair."""
    return [group for s in jac.states for r in jac.states
            for group in block_equations(jac.block(s, r), row_end)]


def jacobian_document(d: Derivation, fmt: str = "text") -> str:
    """`derive jacobian CELL --format fmt`."""
    jac = jacobian(d)
    cell = d.cell
    pairs = [(jac.block(s, r)) for s in jac.states for r in jac.states]
    if fmt == "text":
        out = [f"# {cell.name}: {cell.title}", f"# {CONVENTION}"]
        for b in pairs:
            out.append(f"{lhs_text(b)} = {block_text(b)}")
            out.append(f"{lhs_text(b, True)} = {block_text(b, True)}")
        return "\n".join(out) + "\n"
    if fmt == "latex":
        out = [f"% {cell.name}: {cell.title}", f"% {CONVENTION}"]
        for b in pairs:
            for transpose in (False, True):
                terms = block_latex_terms(b, transpose) or ["0"]
                out.append(f"{lhs_latex(b, transpose)} = {' + '.join(terms)}")
        return "\n".join(out) + "\n"
    if fmt == "markdown":
        out = [f"# {cell.name}: the state-to-state Jacobian", "", LATEX_CONVENTION]
        for block in jacobian_equations(jac):
            for eq in block:
                out += ["", "$$", r"\begin{aligned}", eq, r"\end{aligned}", "$$"]
        return "\n".join(out) + "\n"
    if fmt == "json":
        blocks = [{"state": b.state, "previous": b.previous, "zero": b.is_zero,
                   "jacobian": {"text": block_text(b),
                                "latex": " + ".join(block_latex_terms(b)) or "0"},
                   "backward_map": {"text": block_text(b, True),
                                    "latex": " + ".join(block_latex_terms(b, True)) or "0"},
                   "terms": [{"diag": {"text": text(t.coefficient),
                                       "latex": latex(t.coefficient)},
                              "factors": [f if isinstance(f, str) else
                                          {"diag": {"text": text(f), "latex": latex(f)}}
                                          for f in t.factors]}
                             for t in b.terms]}
                  for b in pairs]
        return json.dumps({"cell": cell.name, "states": list(jac.states),
                           "convention": CONVENTION, "blocks": blocks},
                          indent=2, ensure_ascii=False) + "\n"
    raise UserError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
