"""`derive graph`: one step's forward graph and a delta's backward flows, as a picture.

The **forward graph** of step t: the inputs, the states at t−1, every named node of the
spec (the states at t are nodes too) and the loss J that the outputs reach. An edge
w → v says that v reads w; an edge of a matrix product (a projection `W_z @ x`) is drawn
thick and blue with the matrix's name, an element-wise edge thin and grey. Names are the
paper's (bars on pre-activations: z̄, ī, f̄, ō).

The **flows** of a δv (`Derivation.deltas[v].flows`) are drawn over it, as in the seed
article's figures: one coloured arrow per flow, from the consumer whose delta it carries
back to v, through the folded nodes it passes, labelled with the term it contributes.
Consumers of the next step (v a state, read at t+1 as v[t−1]) appear as dashed nodes
at t+1; the external gradient Δ comes from J.

Layout: a layered layout computed here (column = longest path from the inputs and the
states at t−1; rows ordered by the barycentre of their predecessors), drawn with
matplotlib (`derive.docs.pictures`: deterministic bytes) or written as Graphviz DOT
text (no Graphviz needed to write it). Every drawn edge carries an id (`gid`) naming it,
so a test can read the SVG back and compare its flows with the derivation's.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from derive.cell import symbols as S
from derive.derivation import Derivation
from derive.errors import UserError
from derive.printing.latex import (
    latex,
    latex_delta,
    latex_param,
    latex_time,
    latex_vector,
)
from derive.printing.presentation import flow_path, flows
from derive.printing.text import text

FORMATS = ("svg", "png", "pdf", "dot")

#: colours of the flows, in print order (colour-blind safe, Okabe & Ito)
FLOW_COLOURS = ("#D55E00", "#0072B2", "#009E73", "#CC79A7", "#E69F00", "#56B4E9",
                "#882255", "#117733")
LOSS = ("J", 0)


@dataclass(frozen=True)
class GraphNode:
    """A vertex: (name, shift) with shift −1 (a state at t−1), 0 (step t), +1 (next step)."""

    key: tuple[str, int]
    kind: str            # input | previous | node | state | next | loss
    label: str           # LaTeX math
    column: int
    row: float


@dataclass(frozen=True)
class GraphEdge:
    """A forward edge: `target` reads `source` (through `matrix` when a projection)."""

    source: tuple[str, int]
    target: tuple[str, int]
    matrix: str | None = None

    @property
    def gid(self) -> str:
        return f"edge:{_key(self.source)}->{_key(self.target)}" + (
            f":{self.matrix}" if self.matrix else "")


@dataclass(frozen=True)
class FlowArrow:
    """A flow of δv drawn backwards: `hops` from the consumer to v, labelled with `term`."""

    delta: str
    hops: tuple[tuple[str, int], ...]
    term: str            # LaTeX
    term_text: str       # text notation
    path: str            # the derivation's name of the flow: 'c[t] -> o_bar[t]'
    colour: str

    @property
    def gid(self) -> str:
        return f"flow:{self.delta}:{self.path}"


@dataclass
class Graph:
    """What a picture draws: nodes with positions, forward edges and the flows of a delta."""

    cell: str
    title: str
    nodes: dict[tuple[str, int], GraphNode]
    edges: list[GraphEdge]
    flows: list[FlowArrow] = field(default_factory=list)
    delta: str | None = None

    def _repr_svg_(self) -> str:
        """Jupyter's picture of the graph."""
        return render(self, "svg").decode()

    def _repr_png_(self) -> bytes:
        return render(self, "png")


def _key(key: tuple[str, int]) -> str:
    """'c[t-1]', 'i_bar[t+1]', 'J': a vertex as the derivation's labels name it."""
    name, shift = key
    return "J" if key == LOSS else f"{name}[{S.time_label(shift)}]"


def _label(key: tuple[str, int]) -> str:
    if key == LOSS:
        return "J"
    name, shift = key
    return latex_vector(name) + latex_time(shift)


# --- the model ---------------------------------------------------------------------------

def graph(d: Derivation, delta: str | None = None) -> Graph:
    """The forward graph of one step of `d`'s cell, with the flows of δ`delta` if given."""
    cell = d.cell
    if delta is not None and delta not in d.deltas:
        kept = ", ".join(d.deltas)
        raise UserError(f"--delta {delta}: {cell.name} keeps no delta of {delta!r}; its "
                        f"deltas: {kept}")
    edges: list[GraphEdge] = []
    for node in cell.nodes.values():
        target = (node.name, 0)
        for proj in node.projections:
            edges.append(GraphEdge((proj.operand, proj.shift), target, proj.matrix))
        elementwise = {(r.name, r.shift) for r in map(S.ref, node.elementwise.free_symbols)
                       if r is not None and r.kind == "value"}
        for source in sorted(elementwise, key=lambda k: (k[1], _position(cell, k[0]))):
            edges.append(GraphEdge(source, target))
    for o in cell.outputs:
        edges.append(GraphEdge((o, 0), LOSS))
    arrows: list[FlowArrow] = []
    if delta is not None:
        for k, f in enumerate(flows(d, delta)):
            hops = [(delta, 0)] + [(n, 0) for n in f.path]
            hops.append(LOSS if f.external else (f.consumer, f.shift))
            if f.shift == 1 and not f.external:
                edges.append(GraphEdge((delta, 0), (f.consumer, 1),
                                       _next_matrix(cell, f.consumer, delta)))
            arrows.append(FlowArrow(delta, tuple(reversed(hops)), latex(f.term), text(f.term),
                                    flow_path(delta, f, "text"),
                                    FLOW_COLOURS[k % len(FLOW_COLOURS)]))
    nodes = _layout(cell, edges)
    title = (f"{cell.name}: the flows of ${latex_delta(latex_vector(delta))}{latex_time(0)}$"
             if delta else f"{cell.name}: one step of the forward graph")
    return Graph(cell.name, title, nodes, edges, arrows, delta)


def _position(cell, name: str) -> int:
    order = list(cell.inputs) + list(cell.nodes)
    return order.index(name) if name in order else len(order)


def _next_matrix(cell, consumer: str, state: str) -> str | None:
    """The matrix through which `consumer` reads `state`[t−1], if a projection."""
    for proj in cell.nodes[consumer].projections:
        if proj.operand == state and proj.shift == -1:
            return proj.matrix
    return None


def _layout(cell, edges: list[GraphEdge]) -> dict[tuple[str, int], GraphNode]:
    """Columns by longest path; rows by the barycentre of the predecessors."""
    keys: list[tuple[str, int]] = [(x, 0) for x in cell.inputs]
    keys += [(s, -1) for s in cell.states]
    keys += [(n, 0) for n in cell.nodes]
    keys.append(LOSS)
    keys += sorted({e.target for e in edges if e.target[1] == 1},
                   key=lambda k: _position(cell, k[0]))
    preds: dict[tuple[str, int], list[tuple[str, int]]] = {k: [] for k in keys}
    for e in edges:
        preds[e.target].append(e.source)
    column: dict[tuple[str, int], int] = {}
    for k in keys:   # keys are in a topological order of step t
        if k[1] == 1 or k == LOSS:
            continue
        column[k] = 1 + max((column[p] for p in preds[k] if p in column), default=-1)
    last = max(column.values())
    for k in keys:   # the loss, then the next step's consumers, after the last node
        if k[1] == 1 or k == LOSS:
            column[k] = last + 1
    by_column: dict[int, list[tuple[str, int]]] = {}
    for k in keys:
        by_column.setdefault(column[k], []).append(k)
    row: dict[tuple[str, int], float] = {}
    for c in sorted(by_column):
        members = by_column[c]
        if c > 0:
            index = {k: i for i, k in enumerate(members)}

            def centre(k):
                if k == LOSS:
                    return (float("-inf"), 0)
                ps = [row[p] for p in preds[k] if p in row]
                return (sum(ps) / len(ps) if ps else 0.0, index[k])
            members.sort(key=centre)
        for i, k in enumerate(members):
            row[k] = i - (len(members) - 1) / 2
    out = {}
    for k in keys:
        name, shift = k
        if k == LOSS:
            kind = "loss"
        elif shift == 1:
            kind = "next"
        elif shift == -1:
            kind = "previous"
        elif name in cell.inputs:
            kind = "input"
        elif name in cell.states:
            kind = "state"
        else:
            kind = "node"
        out[k] = GraphNode(k, kind, _label(k), column[k], row[k])
    return out


# --- drawing -----------------------------------------------------------------------------

_FILL = {"input": "#DFF0D8", "previous": "#EEEEEE", "node": "#FFFFFF", "state": "#D9E8F5",
         "next": "#FFFFFF", "loss": "#333333"}
_MATRIX = "#4A6FA5"
_ELEMENTWISE = "#777777"


def figure(g: Graph):
    """The matplotlib figure of a graph (forward edges, then the flows over them)."""
    from derive.docs.pictures import style
    with style():
        return _draw(g)


def _draw(g: Graph):
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch
    from matplotlib.path import Path as MPath

    from derive.docs.pictures import new_figure
    dx, dy = 1.9, 1.05
    columns = max(n.column for n in g.nodes.values()) + 1
    rows = [n.row for n in g.nodes.values()]
    top, bottom = max(rows), min(rows)
    width = dx * (columns - 1) + 2.0
    height = dy * (top - bottom) + 2.2 + (0.32 * len(g.flows) if g.flows else 0.4)
    fig = new_figure(figsize=(width, height))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(-1.0, dx * (columns - 1) + 1.0)
    legend_room = 0.32 * len(g.flows) + 0.3 if g.flows else 0.4
    ax.set_ylim(-dy * top - 0.7 - legend_room, -dy * bottom + 1.1)
    ax.axis("off")

    def at(key):
        n = g.nodes[key]
        return (n.column * dx, -n.row * dy)

    ax.text(dx * (columns - 1) / 2, -dy * bottom + 0.75, g.title, ha="center", va="center",
            fontsize=12)
    for e in g.edges:
        matrix = e.matrix is not None
        # an edge over more than one column bends, so it passes beside the nodes between
        span = g.nodes[e.target].column - g.nodes[e.source].column
        rad = 0.0 if span <= 1 else (0.22 if g.nodes[e.source].row <= 0 else -0.22)
        arrow = FancyArrowPatch(at(e.source), at(e.target), arrowstyle="-|>", mutation_scale=10,
                                shrinkA=17, shrinkB=17, linewidth=2.2 if matrix else 0.9,
                                color=_MATRIX if matrix else _ELEMENTWISE,
                                connectionstyle=f"arc3,rad={rad}",
                                linestyle=(0, (4, 2)) if e.target[1] == 1 or e.target == LOSS
                                else "-", zorder=1)
        arrow.set_gid(e.gid)
        ax.add_patch(arrow)
        if matrix:
            (x0, y0), (x1, y1) = at(e.source), at(e.target)
            cx, cy = (x0 + x1) / 2 + rad * (y1 - y0), (y0 + y1) / 2 - rad * (x1 - x0)
            s = 0.72 if span <= 1 else 0.62   # a point of the quadratic curve of arc3
            ax.text((1 - s) ** 2 * x0 + 2 * s * (1 - s) * cx + s ** 2 * x1,
                    (1 - s) ** 2 * y0 + 2 * s * (1 - s) * cy + s ** 2 * y1,
                    f"${latex_param(e.matrix)}$",
                    fontsize=7, color=_MATRIX, ha="center", va="center", zorder=2,
                    bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none"})
    for n in g.nodes.values():
        x, y = at(n.key)
        box = FancyBboxPatch((x - 0.36, y - 0.22), 0.72, 0.44, boxstyle="round,pad=0.02,"
                             "rounding_size=0.18", fc=_FILL[n.kind],
                             ec="#222222" if n.kind in ("state", "loss") else "#888888",
                             linewidth=1.6 if n.kind == "state" else 0.9,
                             linestyle="--" if n.kind in ("next", "previous") else "-", zorder=3)
        box.set_gid(f"node:{_key(n.key)}")
        ax.add_patch(box)
        ax.text(x, y, n.label if n.key == LOSS else f"${n.label}$", ha="center", va="center",
                fontsize=12, zorder=4, color="white" if n.kind == "loss" else "black")
    for k, f in enumerate(g.flows):
        points = [at(h) for h in f.hops]
        bend = 0.34 if k % 2 == 0 else -0.34   # away from the forward edges (0.22)
        vertices, codes = [points[0]], [MPath.MOVETO]
        for (x0, y0), (x1, y1) in zip(points, points[1:]):
            # a quadratic curve bent off the forward edge, so both stay visible
            mx, my = (x0 + x1) / 2, (y0 + y1) / 2
            vertices += [(mx - bend * (y1 - y0), my + bend * (x1 - x0)), (x1, y1)]
            codes += [MPath.CURVE3, MPath.CURVE3]
        vertices[0] = _trim(vertices[0], vertices[1])
        vertices[-1] = _trim(vertices[-1], vertices[-2])
        arrow = FancyArrowPatch(path=MPath(vertices, codes), arrowstyle="-|>",
                                mutation_scale=14, linewidth=2.0, color=f.colour, zorder=5)
        arrow.set_gid(f.gid)
        ax.add_patch(arrow)
        (x0, y0), (x1, y1) = points[0], points[1]
        ax.text((x0 + x1) / 2 - bend * (y1 - y0) / 2, (y0 + y1) / 2 + bend * (x1 - x0) / 2,
                f"{k + 1}", fontsize=8, color="white", ha="center", va="center", zorder=6,
                bbox={"boxstyle": "circle,pad=0.15", "fc": f.colour, "ec": "none"})
        ax.text(-0.9, -dy * top - 0.75 - 0.32 * k, f"{k + 1}:  ${f.term}$", fontsize=10,
                color=f.colour, ha="left", va="center")
    if not g.flows:
        ax.text(-0.9, -dy * top - 0.75, "thick blue: matrix product (the matrix named); "
                "thin grey: element-wise; dashed: the loss", fontsize=8, color="#555555",
                ha="left", va="center")
    return fig


def _trim(end, towards, box=(0.40, 0.26)):
    """Move `end` (a node's centre) towards `towards` to the border of the node's box."""
    (x0, y0), (x1, y1) = end, towards
    vx, vy = x1 - x0, y1 - y0
    scale = min(box[0] / abs(vx) if vx else float("inf"), box[1] / abs(vy) if vy else float("inf"))
    return (x0 + vx * scale, y0 + vy * scale) if scale < 1 else end


def dot(g: Graph) -> str:
    """The graph as Graphviz DOT text (deterministic; no Graphviz needed to write it)."""
    def q(s: str) -> str:
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = [f"// {g.title}", "digraph derive {", "  rankdir=LR;",
             '  node [shape=box, style="rounded,filled", fillcolor=white];']
    for n in g.nodes.values():
        style = ', style="rounded,dashed"' if n.kind in ("next", "previous") else ""
        lines.append(f"  {q(_key(n.key))} [label={q(_key(n.key))}, fillcolor="
                     f"{q(_FILL[n.kind])}{style}];")
    for e in g.edges:
        attrs = (f'label={q(e.matrix)}, penwidth=2.5, color={q(_MATRIX)}' if e.matrix
                 else f"color={q(_ELEMENTWISE)}")
        lines.append(f"  {q(_key(e.source))} -> {q(_key(e.target))} [{attrs}, id={q(e.gid)}];")
    for k, f in enumerate(g.flows):
        hops = " -> ".join(q(_key(h)) for h in f.hops)
        lines.append(f"  {hops} [color={q(f.colour)}, penwidth=2, constraint=false, "
                     f"label={q(f'{k + 1}: {f.term_text}')}, id={q(f.gid)}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def render(g: Graph, fmt: str, description: str | None = None) -> bytes:
    """The picture as bytes: svg, png, pdf (matplotlib) or dot (text)."""
    if fmt == "dot":
        return dot(g).encode()
    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    from derive.docs.pictures import figure_bytes
    return figure_bytes(figure(g), fmt, description)


def write_graph(cell, delta: str | None = None, fmt: str | None = None,
                out: str | None = None) -> int:
    """`derive graph`: the picture to `out` (format from its suffix) or to stdout."""
    from derive.derivation import derive
    from derive.docs.pictures import write_bytes
    if fmt is None:
        suffix = out.rsplit(".", 1)[-1].lower() if out and "." in out else "svg"
        fmt = suffix if suffix in FORMATS else None
        if fmt is None:
            raise UserError(f"--out {out}: name the format with --format or a suffix "
                            f"({', '.join('.' + f for f in FORMATS)})")
    if out is not None:
        p = Path(out)
        if p.is_dir():
            raise UserError(f"--out {out} is a folder")
        if str(p.parent) and not p.parent.is_dir():
            raise UserError(f"--out {out}: the folder {p.parent} does not exist")
    data = render(graph(derive(cell), delta), fmt)
    if out is None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    else:
        write_bytes(out, data)
    return 0


def pictures(d: Derivation) -> dict[str, bytes]:
    """{file name: bytes} of a cell's pictures for `derive generate`: per delta, the flows
    as ``flows_<node>.svg`` (Markdown) and ``flows_<node>.pdf`` (LaTeX), each carrying the
    header of generated files (an XML comment; the PDF's Subject)."""
    from derive.docs.documents import picture_stem
    from derive.docs.pictures import figure_bytes
    from derive.printing.templates import header_lines
    header = header_lines(d.cell, "derive/docs/graph.py")
    key = (d.cell.name, d.cell.source, tuple(header))
    if key in _DRAWN:   # the same cell again in this process (generate, then --check)
        return dict(_DRAWN[key])
    comment = "<!-- " + "\n".join(line.replace("--", "- -") for line in header) + " -->\n"
    out = {}
    for node in d.deltas:
        fig = figure(graph(d, node))
        svg = figure_bytes(fig, "svg")
        pdf = figure_bytes(fig, "pdf", " / ".join(line.strip() for line in header))
        first, _, rest = svg.partition(b"\n")
        stem = picture_stem(node)
        out[f"{stem}.svg"] = first + b"\n" + comment.encode() + rest
        out[f"{stem}.pdf"] = pdf
    if len(_DRAWN) > 64:
        _DRAWN.clear()
    _DRAWN[key] = dict(out)
    return out


#: pictures drawn in this process, by cell (the pictures depend only on the spec's text)
_DRAWN: dict[tuple, dict[str, bytes]] = {}


def is_picture(file_name: str) -> bool:
    """Whether a generated file is one of `pictures`' (left out of the index)."""
    return file_name.startswith("flows_") and file_name.endswith((".svg", ".pdf"))
