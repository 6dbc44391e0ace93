"""Stage 2 — derivation: reverse mode over a cell's graph, across time steps.

For every named node v of step t,

    δvᵗ = Σ over its consumers u   δuᵗ · ∂uᵗ/∂vᵗ         (u reads vᵗ in step t)
        + Σ over its consumers u   δuᵗ⁺¹ · ∂uᵗ⁺¹/∂vᵗ     (u reads v[t-1]: v is a state)
        + Δᵗ                                            (v is an output)

where a matrix product `A @ v` contributes the adjoint Aᵀ δu. The partial derivatives
are taken by SymPy on the element-wise part of each node and rewritten in terms of the
stored outputs (σ'(īᵗ) = iᵗ(1 − iᵗ), tanh'(z̄ᵗ) = 1 − zᵗ²).

Three forms are kept for every node:

* **flows** — one `Flow` per path from v to a consumer whose delta is kept, with the
  term it contributes (the "flows of variables");
* **structured** — the sum of the flows, in terms of the consumers' deltas, as the paper
  writes it (δcᵗ = δyᵗ⊙oᵗ⊙h'(cᵗ) + p_o⊙δōᵗ + p_i⊙δīᵗ⁺¹ + p_f⊙δf̄ᵗ⁺¹ + δcᵗ⁺¹⊙fᵗ⁺¹);
* **expanded** — every delta of step t substituted away, leaving forward values, Δᵗ
  and the deltas of step t+1 that enter through the state.

Deltas are *kept* for nodes that carry parameters (the projections: their deltas give
the parameter gradients), states, outputs, inputs and operands of matrix products. The
other nodes (activations like zᵗ = g(z̄ᵗ), iᵗ = σ(īᵗ)) are *folded*: their deltas are
substituted into their producers', so δz̄ᵗ = δcᵗ ⊙ iᵗ ⊙ (1 − zᵗ²) as in the paper. Their
own deltas are still derived (`Derivation.raw`) for checking hand derivations.

**Bounded size.** Folding multiplies paths: in a graph where every node feeds the next
two, the number of paths from the first node grows like the Fibonacci numbers. A node is
folded only while its delta has at most `MAX_FOLDED_FLOWS` flows; past that it is kept
(its delta is written once and its producers refer to it), so the structured forms stay
polynomial in the size of the cell. The expanded forms substitute every kept delta and
can still grow exponentially (a graph whose nodes all carry parameters); a derivation
whose expanded forms exceed `MAX_EXPANDED_SIZE` operations is refused with a UserError.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import sympy as sp

from derive.cell import symbols as S
from derive.cell.canonical import Activations, canonical
from derive.cell.spec import Cell, load_cell
from derive.errors import UserError

#: the most flows a folded node's delta may contribute to its producers (see above)
MAX_FOLDED_FLOWS = 16
#: the largest expanded form a derivation writes out, in operations counted as a tree
MAX_EXPANDED_SIZE = 200_000


@dataclass(frozen=True)
class Flow:
    """One path from a node to a kept consumer and the term it contributes.

    `consumer` is the kept node whose delta the term multiplies (or the output's name
    for the external gradient Δ); `shift` is 0 (same step) or +1 (the next step, through
    the state); `path` lists the folded nodes passed through; `matrix` is set when the
    last edge is a matrix product (the term is then `MatTVec(matrix, δconsumer)` times
    folded factors — in practice exactly the adjoint); `mean` when the consumer reads
    the node inside a mean (the term is then mean(δconsumer ⊙ …) times folded factors:
    the adjoint of the reduction, broadcast back).
    """

    consumer: str
    shift: int
    path: tuple[str, ...]
    term: sp.Expr
    matrix: str | None = None
    external: bool = False
    mean: bool = False

    @property
    def label(self) -> str:
        """'c[t] -> o_bar[t]'-style description of the path (without the start)."""
        hops = [f"{n}[t]" for n in self.path]
        if self.external:
            return "outside the recurrence (Delta)"
        hops.append(f"{self.consumer}[{S.time_label(self.shift)}]")
        via = f" through {self.matrix}" if self.matrix else " through mean" if self.mean else ""
        return " -> ".join(hops) + via


@dataclass
class NodeDelta:
    """The backward equation of one node: δnameᵗ in three forms."""

    name: str
    kept: bool
    flows: list[Flow]
    structured: sp.Expr
    expanded: sp.Expr = sp.S.Zero


@dataclass
class ParamGrad:
    """The gradient of one parameter: δP = Σ_t Σ_batch `step`.

    For a matrix used as `P @ vᵗ⁺ᵏ` in node u the step term is ⟨δuᵗ, vᵗ⁺ᵏ⟩ (`Outer`);
    for an element-wise parameter it is δuᵗ ⊙ ∂uᵗ/∂P (e.g. cᵗ⁻¹ ⊙ δīᵗ for p_i, δīᵗ for
    b_i). Terms reading a state at t-1 use the initial state at t = 0.
    """

    name: str
    shape: tuple[str, ...]
    contributions: list[tuple[str, sp.Expr]]  # (node, step term)

    @property
    def step(self) -> sp.Expr:
        return sp.Add(*[term for _, term in self.contributions])

    @property
    def is_matrix(self) -> bool:
        return len(self.shape) == 2


@dataclass
class Derivation:
    """Everything derived for a cell; see the module docstring for the forms."""

    cell: Cell
    deltas: dict[str, NodeDelta]          # kept nodes and inputs, in backward order
    raw: dict[str, NodeDelta]             # every node, flows through direct consumers
    params: dict[str, ParamGrad]
    initial: dict[str, sp.Expr]           # δ(state at t = -1), written at step t = 0
    activations: Activations = field(repr=False)

    @property
    def kept(self) -> list[str]:
        return [n for n, d in self.deltas.items() if d.kept]

    def structured(self, name: str) -> sp.Expr:
        return (self.deltas.get(name) or self.raw[name]).structured

    def expanded(self, name: str) -> sp.Expr:
        return (self.deltas.get(name) or self.raw[name]).expanded

    def canonical(self, expr: sp.Expr) -> sp.Expr:
        """The cell's canonical form of `expr` (see `derive.cell.canonical`): activations
        of pre-activations as stored outputs (dsigmoid(f̄ᵗ) → fᵗ(1 − fᵗ)), matrix products
        distributed over sums, multiplied out."""
        return canonical(expr, self.activations)

    # --- notebooks: a derivation displays itself (Jupyter's rich display protocol) ----------
    def _repr_latex_(self) -> str:
        """The backward equations (structured), aligned, as Jupyter renders LaTeX."""
        from derive.docs.equations import equations
        rows = [line.replace(" = ", " &= ", 1) for line in
                equations(self, "latex").splitlines() if not line.startswith("%")]
        return "$$\\begin{aligned}\n" + " \\\\\n".join(rows) + "\n\\end{aligned}$$"

    def _repr_markdown_(self) -> str:
        """The cell's Markdown document (forward pass, backward pass, flows, gradients)."""
        from derive.docs.documents import markdown
        return markdown(self)

    def _repr_svg_(self) -> str:
        """The picture of one step's forward graph (`derive graph CELL`)."""
        return self.graph()._repr_svg_()

    def graph(self, delta: str | None = None):
        """The picture of one step's graph with the flows of δ`delta` (Jupyter shows it)."""
        from derive.docs.graph import graph
        return graph(self, delta)


def derive(cell) -> Derivation:
    """Derive the backward pass of `cell` (a Cell, shipped name or spec path)."""
    return _Deriver(load_cell(cell)).run()


class _Deriver:
    def __init__(self, cell: Cell):
        self.cell = cell
        self.activations = Activations(cell)  # σ(f̄ᵗ⁺ᵏ) -> fᵗ⁺ᵏ
        kept = set(cell.states) | set(cell.outputs)
        for node in cell.nodes.values():
            if node.parameters() or node.elementwise.has(S.Mean):
                kept.add(node.name)  # a mean's adjoint reads the delta of its consumer
            kept.update(p.operand for p in node.projections if p.operand in cell.nodes)
        self.kept = kept

    def stored(self, expr: sp.Expr) -> sp.Expr:
        """Rewrite activations of pre-activations as their stored outputs."""
        return self.activations.stored(expr)

    def pullback(self, node, wrt: sp.Symbol) -> list[tuple[sp.Expr, bool]]:
        """The terms δnodeᵗ contributes to δwrt through the element-wise part of node, in
        stored outputs: [(term, through a mean)] (see `pullback`)."""
        return pullback(node.elementwise, S.delta(node.name), wrt, self.stored,
                        self.activations.constants)

    def direct_flows(self, name: str) -> list[Flow]:
        """Flows of δnameᵗ through its direct consumers (no folding)."""
        cell = self.cell
        flows = []
        if name in cell.outputs:
            flows.append(Flow(name, 0, (), S.incoming(name, 0, single=len(cell.outputs) == 1),
                              external=True))
        for shift in (0, -1):  # consumers in step t, then in step t+1 through the state
            for node in cell.nodes.values():
                later = -shift
                for proj in node.projections:
                    if proj.operand == name and proj.shift == shift:
                        flows.append(Flow(node.name, later, (), S.MatTVec(
                            S.param(proj.matrix), S.delta(node.name, later)), matrix=proj.matrix))
                for term, mean in self.pullback(node, S.value(name, shift)):
                    flows.append(Flow(node.name, later, (), S.shift_time(term, later),
                                      mean=mean))
        return flows

    def folded_flows(self, name: str, raw: dict[str, NodeDelta]) -> list[Flow]:
        """Flows of δnameᵗ with folded consumers substituted by their own flows."""
        out = []
        for flow in raw[name].flows:
            if flow.external or flow.consumer in self.kept or flow.matrix:
                out.append(flow)
                continue
            factor = flow.term / S.delta(flow.consumer, flow.shift)
            for inner in self.folded_flows(flow.consumer, raw):
                out.append(replace(inner, path=(flow.consumer,) + inner.path,
                                   term=inner.term * factor))
        return out

    def run(self) -> Derivation:
        cell = self.cell
        names = list(cell.inputs) + list(cell.nodes)
        raw = {}
        for n in names:
            flows = self.direct_flows(n)
            raw[n] = NodeDelta(n, n in self.kept or n in cell.inputs, flows,
                               sp.Add(*[f.term for f in flows]))
        self.keep_where_folding_multiplies(raw)
        # kept nodes, in backward order (reverse topological), inputs last
        order = [n for n in reversed(cell.nodes) if n in self.kept] + list(cell.inputs)
        deltas = {}
        for n in order:
            flows = self.folded_flows(n, raw)
            deltas[n] = NodeDelta(n, True, flows, sp.Add(*[f.term for f in flows]))
        # expanded: substitute every delta of step t, latest consumers first
        for_step = {}
        for n in order:
            d = deltas[n]
            d.expanded = d.structured.xreplace(for_step)
            for_step[S.delta(n)] = d.expanded
        for n in cell.nodes:
            if n not in deltas:
                raw[n].expanded = raw[n].structured.xreplace(for_step)
        for n in cell.inputs:
            raw[n].expanded = deltas[n].expanded
        self.check_expanded_size(list(deltas.values()) + list(raw.values()))
        return Derivation(cell, deltas, raw, self.param_grads(), self.initial(deltas),
                          self.activations)

    def keep_where_folding_multiplies(self, raw: dict[str, NodeDelta]) -> None:
        """Keep every node whose folded delta would have over MAX_FOLDED_FLOWS flows.

        Consumers of a node in step t come after it in the topological order, so walking
        it backwards knows each consumer's count first; a state's consumers at t+1 do not
        matter (a state is kept).
        """
        count: dict[str, int] = {}
        for n in reversed(list(self.cell.nodes)):
            if n in self.kept:
                count[n] = 1
                continue
            c = sum(1 if f.external or f.matrix or f.consumer in self.kept
                    else count.get(f.consumer, 1) for f in raw[n].flows)
            if c > MAX_FOLDED_FLOWS:
                self.kept.add(n)
                raw[n].kept = True
                c = 1
            count[n] = c

    def check_expanded_size(self, deltas: list[NodeDelta]) -> None:
        memo: dict = {}

        def size(e) -> int:
            got = memo.get(e)
            if got is None:
                got = memo[e] = 1 + sum(size(a) for a in e.args)
            return got

        for d in deltas:
            n = size(d.expanded)
            if n > MAX_EXPANDED_SIZE:
                raise UserError(f"{self.cell.path}: the expanded backward pass of {d.name} "
                                f"has {n} operations; the limit is {MAX_EXPANDED_SIZE} "
                                f"(a graph where nodes feed several later nodes multiplies "
                                f"the paths a gradient takes)")

    def param_grads(self) -> dict[str, ParamGrad]:
        out = {}
        for pname, p in self.cell.parameters.items():
            contributions = []
            for node in self.cell.nodes.values():
                for proj in node.projections:
                    if proj.matrix == pname:
                        contributions.append((node.name, S.Outer(S.delta(node.name),
                                                                 S.value(proj.operand,
                                                                              proj.shift))))
                contributions += [(node.name, term)
                                  for term, _ in self.pullback(node, S.param(pname))]
            out[pname] = ParamGrad(pname, p.shape, contributions)
        return out

    def initial(self, deltas: dict[str, NodeDelta]) -> dict[str, sp.Expr]:
        """δ of each state at t = -1: its flows into step 0, written at step t (= 0)."""
        out = {}
        for s in self.cell.states:
            carried = [f.term for f in deltas[s].flows if f.shift == 1 and not f.external]
            out[s] = S.shift_time(sp.Add(*carried), -1)
        return out


def pullback(expr: sp.Expr, seed: sp.Expr, wrt: sp.Symbol, stored=lambda e: e,
             constants: frozenset[str] = frozenset()) -> list[tuple[sp.Expr, bool]]:
    """The terms of δwrt that flow back from `seed` = δ of `expr`: [(term, through a mean)].

    Element-wise, the one term seed ⊙ ∂expr/∂wrt (every mean held fixed). A mean
    m = mean(g) inside `expr` is linear and its own adjoint, like a matrix product (see
    `derive.cell.symbols.Mean`): its adjoint m̄ (the sum of seed ⊙ ∂expr/∂m and of the
    terms of the means it is inside) comes back as mean(m̄) into its argument g, adding
    mean(m̄) ⊙ ∂g/∂wrt. So for expr = v − mean(v): δv = seed − mean(seed). Means are
    taken outermost first, each once (reverse mode over the means: one term per mean,
    however often it is nested). Partial derivatives are rewritten by `stored`
    (activations as their stored outputs); the factors of a mean that are equal across
    a row (numbers, means, the nodes named in `constants`) are written outside it.
    """
    means = sorted(expr.atoms(S.Mean), key=lambda m: (-sp.count_ops(m), sp.default_sort_key(m)))
    dummy = {m: sp.Dummy() for m in means}
    back = {u: m for m, u in dummy.items()}

    def opaque(e):  # its outermost means as symbols
        return e.xreplace(dummy)

    def partial(e, x):
        return stored(sp.diff(e, x).xreplace(back))

    top = opaque(expr)
    adjoint = {m: seed * partial(top, dummy[m]) for m in means}   # m̄, completed in order
    out = []
    d = partial(top, wrt)
    if d != 0:
        out.append((seed * d, False))
    for m in means:                              # an enclosing mean comes before its own
        inner = opaque(m.args[0])
        back_in = sp.Add(*[t for t in (S.mean_of(a, constants) for a in
                                       sp.Add.make_args(adjoint[m]))
                           if t != 0 and not _vanishes(t, constants)])
        if back_in == 0:
            continue
        for n in means:
            if dummy[n] in inner.free_symbols:
                adjoint[n] += back_in * partial(inner, dummy[n])
        d = partial(inner, wrt)
        if d != 0:
            out.append((back_in * d, True))
    return out


def _vanishes(expr: sp.Expr, constants: frozenset[str]) -> bool:
    """Whether a factor of `expr` is a mean of a sum whose terms' means cancel, like
    mean(v − mean(v)) = mean(v) − mean(v) (one level, nothing multiplied out: the check
    stays linear in the size of the expression)."""
    for f in sp.Mul.make_args(expr):
        if isinstance(f, S.Mean) and isinstance(f.args[0], sp.Add):
            if sp.Add(*[S.mean_of(term, constants) for term in f.args[0].args]) == 0:
                return True
    return False
