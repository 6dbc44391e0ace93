"""The printers: every format of every shipped cell, read back and compared with the derivation."""

import json
import re
from pathlib import Path

import pytest
import sympy as sp

import derive
from derive.cell import symbols as S
from derive.docs.equations import EXPANDED, STRUCTURED, equations
from derive.docs.layout import COLUMN, latex_rows, latex_width
from derive.printing.latex import latex, latex_param, latex_vector
from derive.printing.presentation import (
    delta_latex,
    expanded_forms,
    forward,
    initial_latex,
    structured,
)
from derive.printing.text import plain, text
from derive.verification.notation import parse_equation, parse_expression


def same(d, a, b) -> bool:
    return d.canonical(a - b) == 0


def equations_by_section(text: str):
    """(section comment, line) for every equation line of the text format."""
    section = None
    for line in text.splitlines():
        if line.startswith("#"):
            if not line.startswith("#   "):
                section = line[2:]
            continue
        yield section, line


@pytest.mark.parametrize("expanded", [False, True])
def test_every_text_line_parses_and_equals_the_derivation(cell_name, expanded):
    d = derive.derive(cell_name)
    text = equations(d, "text", expanded=expanded)
    seen = {"structured": 0, "expanded": 0, "param": 0, "initial": 0}
    for section, line in equations_by_section(text):
        target, expr = parse_equation(d.cell, line)
        if target.kind == "param":
            truth, key = d.params[target.name].step, "param"
        elif target.kind == "initial":
            truth, key = d.initial[target.name], "initial"
        elif section == EXPANDED:
            truth, key = d.expanded(target.name), "expanded"
        else:
            assert section == STRUCTURED, line
            truth, key = d.structured(target.name), "structured"
        assert same(d, expr, truth), line
        seen[key] += 1
    assert seen["structured"] == len(d.deltas)
    assert seen["expanded"] == (len(d.deltas) if expanded else 0)
    assert seen["param"] == len(d.params) and seen["initial"] == len(d.cell.states)


def test_lstm_text_is_written_in_flow_order_as_the_paper():
    text = equations(derive.derive("lstm"), "text")
    assert ("dc[t] = dy[t]*o[t]*(1 - tanh(c[t])**2) + p_o*do_bar[t] + p_i*di_bar[t+1]"
            " + p_f*df_bar[t+1] + dc[t+1]*f[t+1]\n") in text
    assert ("dy[t] = Delta[t] + R_z.T @ dz_bar[t+1] + R_i.T @ di_bar[t+1]"
            " + R_f.T @ df_bar[t+1] + R_o.T @ do_bar[t+1]\n") in text
    assert ("dx[t] = W_z.T @ dz_bar[t] + W_i.T @ di_bar[t] + W_f.T @ df_bar[t]"
            " + W_o.T @ do_bar[t]\n") in text
    assert "do_bar[t] = dy[t]*tanh(c[t])*o[t]*(1 - o[t])\n" in text
    assert "df_bar[t] = dc[t]*c[t-1]*f[t]*(1 - f[t])\n" in text
    assert "dR_z[t] = outer(dz_bar[t], y[t-1])\n" in text
    assert "dp_i[t] = c[t-1]*di_bar[t]\n" in text
    assert "dc0 = p_i*di_bar[t] + p_f*df_bar[t] + dc[t]*f[t]\n" in text


LSTM_LATEX = [
    r"\delta y^{(t)} = \Delta^{(t)} + R_{z}^{\top} \delta\bar{z}^{(t+1)}"
    r" + R_{i}^{\top} \delta\bar{i}^{(t+1)} + R_{f}^{\top} \delta\bar{f}^{(t+1)}"
    r" + R_{o}^{\top} \delta\bar{o}^{(t+1)}",
    r"\delta\bar{o}^{(t)} = \delta y^{(t)} \odot \tanh\left(c^{(t)}\right) \odot o^{(t)}"
    r" \odot \left(1 - o^{(t)}\right)",
    r"\delta c^{(t)} = \delta y^{(t)} \odot o^{(t)} \odot \left(1 - \tanh\left(c^{(t)}\right)^{2}"
    r"\right) + p_{o} \odot \delta\bar{o}^{(t)} + p_{i} \odot \delta\bar{i}^{(t+1)}"
    r" + p_{f} \odot \delta\bar{f}^{(t+1)} + \delta c^{(t+1)} \odot f^{(t+1)}",
    r"\delta\bar{f}^{(t)} = \delta c^{(t)} \odot c^{(t-1)} \odot f^{(t)}"
    r" \odot \left(1 - f^{(t)}\right)",
    r"\delta\bar{i}^{(t)} = \delta c^{(t)} \odot z^{(t)} \odot i^{(t)}"
    r" \odot \left(1 - i^{(t)}\right)",
    r"\delta\bar{z}^{(t)} = \delta c^{(t)} \odot i^{(t)}"
    r" \odot \left(1 - \left(z^{(t)}\right)^{2}\right)",
    r"\delta x^{(t)} = W_{z}^{\top} \delta\bar{z}^{(t)} + W_{i}^{\top} \delta\bar{i}^{(t)}"
    r" + W_{f}^{\top} \delta\bar{f}^{(t)} + W_{o}^{\top} \delta\bar{o}^{(t)}",
    r"\delta W_{z}^{(t)} = \left\langle \delta\bar{z}^{(t)}, x^{(t)} \right\rangle",
    r"\delta R_{o}^{(t)} = \left\langle \delta\bar{o}^{(t)}, y^{(t-1)} \right\rangle",
    r"\delta p_{i}^{(t)} = c^{(t-1)} \odot \delta\bar{i}^{(t)}",
    r"\delta p_{o}^{(t)} = c^{(t)} \odot \delta\bar{o}^{(t)}",
    r"\delta b_{f}^{(t)} = \delta\bar{f}^{(t)}",
    r"\delta c_{0} = p_{i} \odot \delta\bar{i}^{(t)} + p_{f} \odot \delta\bar{f}^{(t)}"
    r" + \delta c^{(t)} \odot f^{(t)}",
]


def test_lstm_latex_has_the_papers_forms():
    lines = equations(derive.derive("lstm"), "latex").splitlines()
    for form in LSTM_LATEX:
        assert form in lines, form


@pytest.mark.parametrize("expanded", [False, True])
def test_latex_is_one_equation_a_line_for_every_delta(cell_name, expanded):
    d = derive.derive(cell_name)
    lines = [ln for ln in equations(d, "latex", expanded).splitlines()
             if not ln.startswith("%")]
    assert len(lines) == len(d.deltas) * (1 + expanded) + len(d.params) + len(d.cell.states)
    for line in lines:
        assert line.count(" = ") == 1 and line.count(r"\left") == line.count(r"\right"), line
        assert line.count("{") == line.count("}"), line


@pytest.mark.parametrize("expanded", [False, True])
def test_json_document(cell_name, expanded):
    d = derive.derive(cell_name)
    doc = json.loads(equations(d, "json", expanded))
    assert doc["cell"] == d.cell.name and doc["hash"] == d.cell.hash
    assert [e["node"] for e in doc["deltas"]] == list(d.deltas)
    assert [p["name"] for p in doc["parameters"]] == list(d.params)
    assert [s["state"] for s in doc["initial"]] == list(d.cell.states)
    for entry in doc["deltas"]:
        name = entry["node"]
        assert same(d, parse_expression(d.cell, entry["structured"]["text"]), d.structured(name))
        assert ("expanded" in entry) == ("flows" in entry) == expanded
        if expanded:
            assert same(d, parse_expression(d.cell, entry["expanded"]["text"]), d.expanded(name))
            flows = sp.Add(*[parse_expression(d.cell, f["term"]["text"]) for f in entry["flows"]])
            assert same(d, flows, d.structured(name))
            assert all(f["shift"] in (0, 1) and f["label"].startswith(f"{name}[t]")
                       for f in entry["flows"])
    for p in doc["parameters"]:
        assert same(d, parse_expression(d.cell, p["step"]["text"]), d.params[p["name"]].step)
    for f in doc["forward"]:
        assert same(d, parse_expression(d.cell, f["text"]), d.cell.nodes[f["node"]].expr)


def test_json_marks_the_terms_that_read_the_initial_state():
    doc = json.loads(equations(derive.derive("lstm"), "json"))
    reads = {p["name"] for p in doc["parameters"] if p["reads_initial_state"]}
    assert reads == {"R_z", "R_i", "R_f", "R_o", "p_i", "p_f"}


def test_markdown_format_is_the_document():
    d = derive.derive("rnn")
    short, full = equations(d, "markdown"), equations(d, "markdown", expanded=True)
    assert "## Backward pass, structured" in short and "## Backward pass, expanded" not in short
    assert "## Backward pass, expanded" in full and "Flows of" in full


def test_unknown_format_is_a_user_error():
    with pytest.raises(derive.UserError, match="unknown format"):
        equations(derive.derive("rnn"), "html")


def test_expanded_forms_keep_no_delta_of_step_t(cell_name):
    d = derive.derive(cell_name)
    for name, form in expanded_forms(d).items():
        flat = plain(form)
        assert same(d, flat, d.expanded(name)), name
        for sym in flat.free_symbols:
            r = S.ref(sym)
            assert not (r.kind == "delta" and r.shift <= 0), (name, sym)


def test_forward_pass_keeps_the_specs_order(cell_name):
    cell = derive.load_cell(cell_name)
    for name, node in cell.nodes.items():
        assert sp.expand(plain(forward(cell, name)) - node.expr) == 0, name
    if cell_name == "lstm":
        assert latex(forward(cell, "c")) == r"z^{(t)} \odot i^{(t)} + c^{(t-1)} \odot f^{(t)}"
        assert text(forward(cell, "i_bar")) == "W_i @ x[t] + R_i @ y[t-1] + p_i*c[t-1] + b_i"
    if cell_name == "gru":
        assert text(forward(cell, "y")) == "(1 - u[t])*h[t] + u[t]*y[t-1]"


# --- the printers on their own ---------------------------------------------------------

def _lstm_vocabulary():
    v, dl, p = S.value, S.delta, S.param
    return v, dl, p


TRICKY = [
    lambda v, dl, p: -S.MatTVec(p("R_z"), dl("z_bar", 1)),
    lambda v, dl, p: v("o") * S.MatTVec(p("R_z"), dl("z_bar", 1)),
    lambda v, dl, p: S.MatVec(p("W_z"), v("x") * v("o") + 1),
    lambda v, dl, p: S.MatTVec(p("R_i"), S.sigmoid(v("i_bar"))),
    lambda v, dl, p: v("c") / 2 - 3 * v("z") / (2 * v("i")),
    lambda v, dl, p: (v("c") + v("z")) ** 2 - S.tanh(v("c")) ** 2 + p("p_i") ** 2,
    lambda v, dl, p: sp.exp(-v("c")) * sp.log(v("o")) / (1 + v("f")),
    lambda v, dl, p: S.Outer(dl("z_bar") + dl("i_bar"), v("y", -1)),
    lambda v, dl, p: v("y", -1) - v("z") - 1,
    lambda v, dl, p: -(v("c") * dl("c", 1)),
    lambda v, dl, p: sp.Rational(1, 2) * S.MatTVec(p("W_o"), dl("o_bar")),
    lambda v, dl, p: 2 * S.MatTVec(p("W_o"), dl("o_bar")) - S.MatVec(p("R_o"), v("y", -1)) / 3,
]


@pytest.mark.parametrize("k", range(len(TRICKY)))
def test_text_printer_round_trips(k):
    d = derive.derive("lstm")
    expr = TRICKY[k](*_lstm_vocabulary())
    assert same(d, parse_expression(d.cell, text(expr)), expr), text(expr)


def test_text_printer_parenthesizes_matrix_products():
    v, dl, p = _lstm_vocabulary()
    assert text(-S.MatTVec(p("R_z"), dl("z_bar", 1))) == "-(R_z.T @ dz_bar[t+1])"
    assert text(S.MatVec(p("W_z"), v("x") * v("o"))) == "W_z @ (o[t]*x[t])"


def test_latex_names():
    assert latex_vector("o_bar") == r"\bar{o}"
    assert latex_vector("gate_bar") == r"\bar{\mathit{gate}}"
    assert latex_vector("h_0") == r"\mathit{h\_0}"
    assert latex_param("R_ii") == "R_{ii}" and latex_param("b_hr") == "b_{hr}"
    assert latex_param("W") == "W" and latex_param("Wx_a_b") == r"\mathit{Wx}_{a\_b}"
    assert initial_latex("c") == r"\delta c_{0}"
    assert delta_latex("i_bar") == r"\delta\bar{i}^{(t)}"


def test_latex_printer_forms():
    v, dl, p = _lstm_vocabulary()
    assert latex(v("c", -1), step=0) == "c^{(-1)}"
    assert latex(-S.MatTVec(p("R_z"), dl("z_bar", 1))) == r"-R_{z}^{\top} \delta\bar{z}^{(t+1)}"
    assert latex(v("z") ** 2) == r"\left(z^{(t)}\right)^{2}"
    assert latex(v("c") / 2) == r"\frac{c^{(t)}}{2}"
    assert (latex(S.MatVec(p("W_z"), v("x") + v("c")))
            == r"W_{z} \left(c^{(t)} + x^{(t)}\right)")
    assert (latex(v("o") * S.MatTVec(p("R_z"), dl("z_bar", 1)))
            == r"\left(R_{z}^{\top} \delta\bar{z}^{(t+1)}\right) \odot o^{(t)}")
    assert latex(S.sigmoid(v("i_bar"))) == r"\sigma\left(\bar{i}^{(t)}\right)"


def test_several_outputs_name_their_external_gradient():
    assert latex(S.incoming("h", single=False)) == r"\Delta_{h}^{(t)}"
    assert text(S.incoming("h", single=False)) == "Delta_h[t]"


def test_long_equations_are_broken_into_rows_that_fit():
    d = derive.derive("lstm_fgr")
    rows = latex_rows(delta_latex("x"), expanded_forms(d)["x"])
    assert len(rows) > 10 and rows[0].startswith(r"\delta x^{(t)} &= ")
    assert all(r.startswith(r"&\qquad") for r in rows[1:])
    assert max(latex_width(r) for r in rows) <= COLUMN + 8
    body = " ".join(r.split("&", 1)[1].lstrip("= ") for r in rows).replace(r"\qquad", "")
    assert body.count(r"\bigl(") == body.count(r"\bigr)")
    # the rows hold the same expression as the one-line form, up to parentheses and spaces
    squash = lambda s: re.sub(r"\\left\(|\\right\)|\\bigl\(|\\bigr\)|\s", "", s)  # noqa: E731
    assert squash(body) == squash(latex(expanded_forms(d)["x"]))


def test_outputs_come_first_only_within_step_t(tmp_path):
    """With c an output too, δc starts with Δ_c and δy's flow; step t+1 keeps spec order."""
    spec = (Path(__file__).resolve().parents[2] / "derive/cells/lstm.toml").read_text()
    path = tmp_path / "two.toml"
    path.write_text(spec.replace('outputs = ["y"]', 'outputs = ["y", "c"]')
                    .replace('name = "lstm"', 'name = "two"'))
    d = derive.derive(str(path))
    assert text(structured(d, "c")) == (
        "Delta_c[t] + dy[t]*o[t]*(1 - tanh(c[t])**2) + p_o*do_bar[t] + p_i*di_bar[t+1]"
        " + p_f*df_bar[t+1] + dc[t+1]*f[t+1]")
    assert latex(structured(d, "y")).startswith(r"\Delta_{y}^{(t)} + R_{z}^{\top}")
