"""The documents of a cell (LaTeX and Markdown) and the index of generated/."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from derive.cell.spec import Cell
from derive.derivation.jacobian import jacobian, reductions
from derive.docs.jacobian import LATEX_CONVENTION, jacobian_equations
from derive.docs.layout import COLUMN, latex_rows, latex_width
from derive.printing import presentation as P
from derive.printing.latex import latex, latex_delta, latex_time, latex_vector
from derive.printing.templates import (
    DOCUMENTS,
    environment,
    header_lines,
    regenerate_command,
)

# --- documents ---------------------------------------------------------------------

#: an expanded form with a row wider than this (layout units: a tenth over the column, a
#: row the layout cannot break, like a long fraction) is named, not printed (lstm_ln's:
#: the rows of every other shipped cell stay within 81)
TOO_WIDE = 1.1 * COLUMN

def picture_stem(node: str) -> str:
    """The file name, without suffix, of the picture of δnode's flows: ``flows_c``."""
    return f"flows_{node}"


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                  "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                  "^": r"\textasciicircum{}"}


def latex_text(s: str) -> str:
    """Plain text for a LaTeX paragraph (special characters escaped)."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in s)


def markdown_text(s: str) -> str:
    """Plain text for Markdown (characters with a Markdown meaning escaped)."""
    return re.sub(r"([\\`*_\[\]<>#|])", r"\\\1", s)


@dataclass
class Section:
    """One section of a document: prose with inline $math$, equations, flow lists.

    `blocks` holds the equations as one group of aligned equations (or no group); an
    equation is the body of an ``aligned`` environment (rows ``lhs &= ...``, each but
    the last ending in ``\\\\``). `flows` holds, per delta, the aligned rows
    ``path &: term`` of its flows and the stem of its picture (``flows_c``: the
    documents show ``flows_c.svg`` / ``flows_c.pdf`` beside the rows), or "".
    """

    title: str
    intro: str
    blocks: list[list[str]] = field(default_factory=list)
    flows: list[tuple[str, str, str]] = field(default_factory=list)


#: the end of a row of an aligned environment (GitHub needs ``\\\\`` at a line's end)
_ROW_END = " \\\\\n"


def _equations(pairs) -> list[list[str]]:
    """One block of aligned equations from (lhs, rhs[, step]) tuples."""
    return [[_ROW_END.join(latex_rows(*pair)) for pair in pairs]]


def sections(d, expanded: bool = True, pictures: bool = False) -> list[Section]:
    """The sections of a cell's document, every formula in derive's LaTeX notation.

    With `pictures` each delta's flows are shown beside its picture (`picture_stem`), and
    the state-to-state Jacobian has a section of its own."""
    cell = d.cell
    vec, t = latex_vector, latex_time
    states = ", ".join(f"${vec(s)}{t(-1, step=0)}$" for s in cell.states)
    out = [Section(
        "Forward pass",
        "One step $t$ of the cell, as its spec writes it. Bars mark pre-activations, "
        r"$\sigma$ is the logistic function and $\odot$ the element-wise product; "
        r"$W x$ is a matrix product.",
        _equations((vec(n) + t(0), P.forward(cell, n)) for n in cell.nodes))]
    out.append(Section(
        "Backward pass, structured",
        r"Each delta $\delta v^{(t)} = \partial J / \partial v^{(t)}$ as the sum of its "
        "flows, in terms of the deltas of its consumers. "
        r"$\Delta^{(t)}$ is the gradient reaching the output from outside the recurrence; "
        "the terms of step $t+1$ are zero at the last step $T$. Activation derivatives "
        r"are written from the stored outputs: $\sigma'(\bar{v}) = v \odot (1 - v)$ for "
        r"$v = \sigma(\bar{v})$ and $\tanh'(\bar{v}) = 1 - v^{2}$ for $v = \tanh(\bar{v})$.",
        _equations((P.delta_latex(n), P.structured(d, n)) for n in d.deltas)))
    if expanded:
        forms = P.expanded_forms(d)
        rows = {n: latex_rows(P.delta_latex(n), forms[n]) for n in d.deltas}
        wide = [n for n in d.deltas if any(latex_width(r) > TOO_WIDE for r in rows[n])]
        out.append(Section(
            "Backward pass, expanded",
            "The same deltas with every delta of step $t$ substituted: forward values, "
            r"$\Delta^{(t)}$ and the deltas of step $t+1$ only."
            + (" Too long for a page, not printed here (derive equations prints them in "
               "full with its expanded option): "
               + ", ".join(f"${P.delta_latex(n)}$" for n in wide) + "." if wide else ""),
            [[_ROW_END.join(rows[n]) for n in d.deltas if n not in wide]]))
        out.append(Section(
            "Flows",
            "Every path from a node to a consumer whose delta is kept, and the term it "
            r"contributes; $J$ is the loss, reached through $\Delta^{(t)}$.",
            flows=[(P.delta_latex(n), _ROW_END.join(
                f"{P.flow_path(n, f, 'latex')} &: {latex(f.term)}" for f in P.flows(d, n)),
                picture_stem(n) if pictures else "")
                   for n in d.deltas]))
    out.append(Section(
        "Parameter gradients",
        "Each gradient is the sum over the steps $t = 0, \\dots, T$ (and over the batch). "
        f"At $t = 0$ the previous state {states} is the initial state: the paper assumes "
        "it zero, which drops the $t = 0$ terms written apart here.",
        _equations((P.param_latex(p, per_step=False), P.latex_parameter_sum(d, p))
                   for p in d.params)))
    out.append(Section(
        "Initial-state gradients",
        f"The gradient of the initial state {states}, written at step $t = 0$.",
        _equations((f"{P.initial_latex(s)} = {latex_delta(vec(s))}{t(-1, step=0)}",
                    P.initial_state(d, s), 0) for s in cell.states)))
    if pictures and reductions(cell):
        out.append(Section("State-to-state Jacobian", "Not derived: node "
                           f"${vec(reductions(cell)[0])}$ reduces over the hidden units "
                           "(a mean), which couples every unit of a row."))
    elif pictures:
        out.append(Section("State-to-state Jacobian", LATEX_CONVENTION,
                           jacobian_equations(jacobian(d), _ROW_END)))
    return out


def _document(d, template: str, escape, parts: list[Section]) -> str:
    cell = d.cell
    return environment().get_template(template).render(
        header=header_lines(cell, template), name=escape(cell.name),
        title=escape(cell.title), description=escape(cell.description),
        reference=escape(cell.reference), spec=escape(cell.display_path),
        command=escape(regenerate_command(cell)), sections=parts)


def latex_document(d, parts: list[Section] | None = None) -> str:
    """generated/<cell>/equations.tex: a standalone LaTeX document."""
    return _document(d, DOCUMENTS["equations.tex"], latex_text, parts or sections(d))


def markdown(d, expanded: bool = True, parts: list[Section] | None = None) -> str:
    """generated/<cell>/equations.md (expanded forms and flows only when `expanded`)."""
    return _document(d, DOCUMENTS["equations.md"], markdown_text,
                     parts or sections(d, expanded))


def documents(d) -> dict[str, str]:
    """{file name: text} of one cell's documents (equations.tex, equations.md): each delta's
    flows beside its picture (`derive.docs.graph.pictures` draws them), and the Jacobian."""
    parts = sections(d, pictures=True)
    return {"equations.tex": latex_document(d, parts), "equations.md": markdown(d, parts=parts)}


def index(entries: list[tuple[Cell, list[str]]]) -> str:
    """generated/README.md: one row per cell with links to its files."""
    template = "index.md.j2"
    rows = [(c.name, markdown_text(c.title), [(f, f"{c.name}/{f}") for f in files])
            for c, files in entries]
    return environment().get_template(template).render(
        header=header_lines([c for c, _ in entries], template), cells=rows)


