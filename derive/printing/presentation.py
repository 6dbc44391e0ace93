"""The derivation in print order: flows, structured and expanded forms, parameter and initial-state terms, the names of equations."""

from __future__ import annotations

import ast

import sympy as sp

from derive.cell import symbols as S
from derive.cell.grammar import Matrix, parse
from derive.cell.spec import Cell
from derive.derivation import Derivation, Flow
from derive.printing.latex import (
    latex,
    latex_delta,
    latex_param,
    latex_time,
    latex_vector,
)
from derive.printing.text import Ordered, Product, _negative, ordered, plain

# --- the derivation in print order -----------------------------------------------------

def flows(d: Derivation, name: str) -> list[Flow]:
    """The flows of δnameᵗ in print order: Δ, step t (outputs first), step t+1.

    Within a step consumers follow the spec's order; a consumer's positive terms come
    before its negative ones.
    """
    cell = d.cell
    position = {n: k for k, n in enumerate(cell.nodes)}
    nd = d.deltas.get(name) or d.raw[name]
    return sorted(nd.flows, key=lambda f: (f.shift, not f.external,
                                            f.shift == 0 and f.consumer not in cell.outputs,
                                            position.get(f.consumer, -1), _negative(f.term)))


def structured(d: Derivation, name: str) -> sp.Expr:
    """δnameᵗ in terms of its consumers' deltas, flow by flow."""
    return ordered(f.term for f in flows(d, name))


def expanded_forms(d: Derivation) -> dict[str, sp.Expr]:
    """δvᵗ for every kept node and input, each delta of step t replaced by its expansion."""
    out: dict[str, sp.Expr] = {}
    for n in d.deltas:  # backward order: same-step consumers come first
        subs = {S.delta(m): e for m, e in out.items()}
        out[n] = ordered(f.term.xreplace(subs) for f in flows(d, n))
    return out


def parameter_term(d: Derivation, name: str) -> sp.Expr:
    """The per-step term δPᵗ: ⟨δuᵗ, vᵗ⟩ for a matrix, ∂uᵗ/∂P ⊙ δuᵗ element-wise."""
    terms = []
    for node, term in d.params[name].contributions:
        factor = term / S.delta(node)
        if isinstance(term, S.Outer) or factor == 1:
            terms.append(term)
        else:
            terms.append(Product(*sp.Mul.make_args(factor), S.delta(node)))
    return ordered(terms)


def initial_state(d: Derivation, state: str) -> sp.Expr:
    """δ of the state before step 0, written at step t (= 0), flow by flow."""
    return ordered(S.shift_time(f.term, -1) for f in flows(d, state)
                   if f.shift == 1 and not f.external)


def reads_initial_state(expr: sp.Expr) -> bool:
    """Whether a per-step term reads a state at t-1 (the initial state at t = 0)."""
    return any((r := S.ref(s)) is not None and r.kind == "value" and r.shift == -1
               for s in plain(expr).free_symbols)


class _ForwardScope:
    """Names of a spec's node expressions (the spec already validated them)."""

    def __init__(self, cell: Cell):
        self.cell = cell

    def functions(self):
        return {**S.ACTIVATIONS, **S.REDUCTIONS}

    def name(self, name: str, shift: int | None, column: int):
        p = self.cell.parameters.get(name)
        if p is not None:
            return Matrix(S.param(name)) if p.is_matrix else S.param(name)
        return S.value(name, shift or 0)


def forward(cell: Cell, name: str) -> sp.Expr:
    """The right side of node `name`, keeping the spec's order of terms and factors."""
    text_ = cell.nodes[name].text.strip()
    scope = _ForwardScope(cell)

    def factors(e):
        return e.args if isinstance(e, Product) else (e,)

    def build(node: ast.AST) -> sp.Expr:
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub)):
            right = build(node.right)
            if isinstance(node.op, ast.Sub):
                right = Product(sp.S.NegativeOne, *factors(right))
            return ordered([build(node.left), right])
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
            return Product(*factors(build(node.left)), *factors(build(node.right)))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return Product(sp.S.NegativeOne, *factors(build(node.operand)))
        return parse(ast.get_source_segment(text_, node), scope)

    return build(ast.parse(text_, mode="eval").body)


# --- names of equations ----------------------------------------------------------------

def delta_text(name: str) -> str:
    """'dc[t]': a node's delta, or a parameter's per-step gradient term."""
    return f"d{name}[t]"


def delta_latex(name: str) -> str:
    return latex_delta(latex_vector(name)) + latex_time(0)


def param_latex(name: str, per_step: bool = True) -> str:
    r"""``\delta W_{z}^{(t)}`` (per step) or ``\delta W_{z}`` (the sum)."""
    return r"\delta " + latex_param(name) + (latex_time(0) if per_step else "")


def initial_text(state: str) -> str:
    return f"d{state}0"


def initial_latex(state: str) -> str:
    return latex_delta(latex_vector(state)) + "_{0}"


def flow_path(name: str, flow: Flow, fmt: str) -> str:
    """The path of a flow: 'c[t] -> o_bar[t]' (text) or 'c^{(t)} \\to \\bar{o}^{(t)}'."""
    hops = [(name, 0)] + [(n, 0) for n in flow.path]
    if not flow.external:
        hops.append((flow.consumer, flow.shift))
    if fmt == "text":
        out = " -> ".join(f"{n}[{S.time_label(k)}]" for n, k in hops)
        return out + (" -> J" if flow.external else "")
    out = r" \to ".join(latex_vector(n) + latex_time(k) for n, k in hops)
    return out + (r" \to J" if flow.external else "")

def latex_parameter_sum(d: Derivation, name: str) -> str:
    r"""δP as the sum over t = 0..T of δPᵗ, its t = 0 term apart when it reads the initial state.

    ``\left\langle \delta\bar{z}^{(0)}, y^{(-1)} \right\rangle + \sum_{t=1}^{T} ...``: the
    paper's sums assume a zero initial state, which drops that term.
    """
    term = parameter_term(d, name)
    body = latex(term)
    if isinstance(term, Ordered):
        body = rf"\left({body}\right)"
    if not reads_initial_state(term):
        return rf"\sum_{{t=0}}^{{T}} {body}"
    return rf"{latex(term, step=0)} + \sum_{{t=1}}^{{T}} {body}"
