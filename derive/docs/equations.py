"""`derive equations`: the derived backward pass as text, LaTeX, Markdown or JSON."""

from __future__ import annotations

import json

import sympy as sp

from derive.derivation import Derivation
from derive.errors import UserError
from derive.printing.latex import latex
from derive.printing.presentation import (
    delta_latex,
    delta_text,
    expanded_forms,
    flow_path,
    flows,
    forward,
    initial_latex,
    initial_state,
    initial_text,
    param_latex,
    parameter_term,
    reads_initial_state,
    structured,
)
from derive.printing.text import text

FORMATS = ("text", "latex", "markdown", "json")


# --- derive equations ------------------------------------------------------------------

STRUCTURED = ("backward pass, structured: each delta of step t in terms of its consumers' "
              "deltas; the t+1 terms are zero at the last step")
EXPANDED = "backward pass, expanded: forward values, Delta and the deltas of step t+1 only"
FLOWS = "flows: the term each path from a node to a consumer contributes"
PARAMETERS = ("parameter gradients, per step: dP = sum over t = 0..T and the batch of dP[t]; "
              "at t = 0 a state at t-1 is the initial state")
INITIAL = "initial-state gradients (the state before step 0), right side at step t = 0"


def equations(d: Derivation, fmt: str = "text", expanded: bool = False) -> str:
    """The derived backward pass of `d` as `fmt` (text, latex, markdown or json)."""
    if fmt == "text":
        return _lines(d, expanded, "#", text, delta_text, delta_text, initial_text,
                      lambda name, f: flow_path(name, f, "text"))
    if fmt == "latex":
        return _lines(d, expanded, "%", latex, delta_latex, param_latex, initial_latex,
                      lambda name, f: flow_path(name, f, "latex"))
    if fmt == "markdown":
        from derive.docs.documents import markdown
        return markdown(d, expanded=expanded)
    if fmt == "json":
        return json.dumps(to_json(d, expanded), indent=2, ensure_ascii=False) + "\n"
    raise UserError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")


def _lines(d, expanded, comment, show, delta_lhs, param_lhs, initial_lhs, path) -> str:
    cell = d.cell
    out = [f"{comment} {cell.name}: {cell.title}", f"{comment} {STRUCTURED}"]
    out += [f"{delta_lhs(n)} = {show(structured(d, n))}" for n in d.deltas]
    if expanded:
        forms = expanded_forms(d)
        out.append(f"{comment} {EXPANDED}")
        out += [f"{delta_lhs(n)} = {show(forms[n])}" for n in d.deltas]
        out.append(f"{comment} {FLOWS}")
        out += [f"{comment}   {path(n, f)}: {show(f.term)}" for n in d.deltas for f in flows(d, n)]
    out.append(f"{comment} {PARAMETERS}")
    out += [f"{param_lhs(p)} = {show(parameter_term(d, p))}" for p in d.params]
    out.append(f"{comment} {INITIAL}")
    out += [f"{initial_lhs(s)} = {show(initial_state(d, s))}" for s in d.cell.states]
    return "\n".join(out) + "\n"


def _both(expr: sp.Expr) -> dict[str, str]:
    return {"text": text(expr), "latex": latex(expr)}


def to_json(d: Derivation, expanded: bool = False) -> dict:
    """One JSON-ready document of the derivation (see `derive equations --format json`)."""
    cell = d.cell
    forms = expanded_forms(d) if expanded else {}
    deltas = []
    for n in d.deltas:
        entry = {"node": n, "input": n in cell.inputs,
                 "lhs": {"text": delta_text(n), "latex": delta_latex(n)},
                 "structured": _both(structured(d, n))}
        if expanded:
            entry["expanded"] = _both(forms[n])
            entry["flows"] = [{"consumer": f.consumer, "shift": f.shift, "path": list(f.path),
                               "matrix": f.matrix, "external": f.external,
                               "label": flow_path(n, f, "text"), "term": _both(f.term)}
                              for f in flows(d, n)]
        deltas.append(entry)
    return {
        "cell": cell.name, "title": cell.title, "spec": cell.display_path, "hash": cell.hash,
        "inputs": list(cell.inputs), "states": list(cell.states),
        "outputs": list(cell.outputs),
        "forward": [{"node": n, **_both(forward(cell, n))} for n in cell.nodes],
        "deltas": deltas,
        "parameters": [{"name": p, "shape": list(g.shape),
                        "lhs": {"text": delta_text(p), "latex": param_latex(p)},
                        "step": _both(parameter_term(d, p)),
                        "reads_initial_state": reads_initial_state(parameter_term(d, p))}
                       for p, g in d.params.items()],
        "initial": [{"state": s, "lhs": {"text": initial_text(s), "latex": initial_latex(s)},
                     "rhs": _both(initial_state(d, s))} for s in cell.states],
    }




