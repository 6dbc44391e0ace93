"""derive verify: hand derivations against the derived truth."""

import json
import subprocess
import sys
import time

import numpy as np
import pytest
import sympy as sp

import derive
from derive.cell import symbols as S
from derive.cli import main
from derive.docs.equations import equations
from derive.verification.diagnosis import KINDS
from derive.verification.notation import parse_expression
from derive.verification.verdict import verify

C = ("dy[t]*o[t]*dtanh(c[t]) + p_o*do_bar[t] + p_i*di_bar[t+1] + p_f*df_bar[t+1]"
     " + dc[t+1]*f[t+1]")
Y = ("Delta[t] + R_z.T @ dz_bar[t+1] + R_i.T @ di_bar[t+1] + R_f.T @ df_bar[t+1]"
     " + R_o.T @ do_bar[t+1]")


def _lines(cell: str, fmt: str, expanded: bool = False) -> list[str]:
    comment = "#" if fmt == "text" else "%"
    text = equations(derive.derive(cell), fmt, expanded=expanded)
    return [ln for ln in text.splitlines() if ln.strip() and not ln.startswith(comment)]


# --- every printed equation verifies equal -------------------------------------------------

@pytest.mark.parametrize("fmt", ["text", "latex"])
def test_every_printed_equation_verifies_equal(cell_name, fmt):
    lines = _lines(cell_name, fmt)
    assert len(lines) >= 5
    for line in lines:
        v = verify(cell_name, line, latex=fmt == "latex")
        assert v.equal is True, (line, v.report())
        assert v.counterexample is None and not v.differences


def test_the_expected_forms_of_a_report_verify_equal_when_typed_back(cell_name):
    for line in _lines(cell_name, "text"):
        lhs = line.split("=")[0]
        expected = verify(cell_name, line).expected
        assert verify(cell_name, f"{lhs}= {expected}").equal is True, (line, expected)


def test_reports_print_like_derive_equations_with_the_derivatives_folded():
    # the printer of derive equations: deltas first, values, the derivative last
    assert verify("gru", "dh_bar[t] = dy[t]*u[t]*dtanh(h_bar[t])").expected == (
        "dy[t]*(1 - u[t])*dtanh(h_bar[t])")
    assert verify("lstm", "do_bar[t] = dy[t]*tanh(c[t])").expected == (
        "dy[t]*tanh(c[t])*dsigmoid(o_bar[t])")
    v = verify("rnn", "dy[t] = Delta[t]")
    assert v.expected == "Delta[t] + R.T @ da[t+1]" and v.differences[0].expected == (
        "R.T @ da[t+1]")


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["text", "latex"])
def test_every_printed_expanded_equation_verifies_equal(cell_name, fmt):
    for line in _lines(cell_name, fmt, expanded=True):
        v = verify(cell_name, line, latex=fmt == "latex")
        assert v.equal is True, (line, v.report())


# --- the paper, as a person types it ---------------------------------------------------------

PAPER = [
    "dy[t] = " + Y,
    "do_bar[t] = dy[t] * tanh(c[t]) * dsigmoid(o_bar[t])",
    "dc[t] = " + C,
    "df_bar[t] = dc[t] * c[t-1] * dsigmoid(f_bar[t])",
    "di_bar[t] = dc[t] * z[t] * dsigmoid(i_bar[t])",
    "dz_bar[t] = dc[t] * i[t] * dtanh(z_bar[t])",
    "dx[t] = W_z.T @ dz_bar[t] + W_i.T @ di_bar[t] + W_f.T @ df_bar[t] + W_o.T @ do_bar[t]",
    # parameter gradients as the paper sums them (R and peepholes one step later)
    *[f"dW_{g}[t] = outer(d{g}_bar[t], x[t])" for g in "zifo"],
    *[f"dR_{g}[t] = outer(d{g}_bar[t+1], y[t])" for g in "zifo"],
    *[f"db_{g}[t] = d{g}_bar[t]" for g in "zifo"],
    "dp_i[t] = c[t] * di_bar[t+1]", "dp_f[t] = c[t] * df_bar[t+1]",
    "dp_o[t] = c[t] * do_bar[t]",
    # the t = 0 boundary: gradients of a non-zero initial state
    "dc0 = p_i*di_bar[t] + p_f*df_bar[t] + dc[t]*f[t]",
    "dy0 = R_z.T @ dz_bar[t] + R_i.T @ di_bar[t] + R_f.T @ df_bar[t] + R_o.T @ do_bar[t]",
    # equivalent spellings
    "dc[t] = dy[t]*o[t]*(1 - tanh(c[t])**2) + p_o*do_bar[t] + p_i*di_bar[t+1]"
    " + p_f*df_bar[t+1] + dc[t+1]*f[t+1]",
    "df_bar[t] = dc[t] * c[t-1] * f[t] * (1 - f[t])",
    "dz_bar[t] = dc[t] * i[t] * (1 - z[t]**2)",
    "do_bar[t] = dy[t] * tanh(c[t]) * sigmoid(o_bar[t]) * (1 - sigmoid(o_bar[t]))",
    # δō spelled out inside δc, and δy expanded: the same equation
    "dc[t] = dy[t]*o[t]*dtanh(c[t]) + p_o*dy[t]*tanh(c[t])*o[t]*(1-o[t])"
    " + p_i*di_bar[t+1] + p_f*df_bar[t+1] + dc[t+1]*f[t+1]",
    "do_bar[t] = (" + Y + ") * tanh(c[t]) * dsigmoid(o_bar[t])",
    # the delta of a folded node, and a step shift of the whole equation
    "di[t] = dc[t] * z[t]",
    "dc[t+1] = " + str(S.shift_time(parse_expression(derive.load_cell("lstm"), C), 1)),
]

PAPER_LATEX = [
    r"\delta y^{(t)} = \Delta^{(t)} + R_z^T \delta\bar{z}^{(t+1)} + R_i^T \delta\bar{i}^{(t+1)}"
    r" + R_f^T \delta\bar{f}^{(t+1)} + R_o^T \delta\bar{o}^{(t+1)}",
    r"\delta\bar{o}^{(t)} = \delta y^{(t)} \odot h(c^{(t)}) \odot \sigma'(\bar{o}^{(t)})",
    r"\delta c^{(t)} = \delta y^{(t)} \odot o^{(t)} \odot h'(c^{(t)}) + p_o \odot "
    r"\delta\bar{o}^{(t)} + p_i \odot \delta\bar{i}^{(t+1)} + p_f \odot \delta\bar{f}^{(t+1)}"
    r" + \delta c^{(t+1)} \odot f^{(t+1)}",
    r"$\delta\bar{f}^{t} = \delta c^{t} \odot c^{t-1} \odot \sigma'(\bar{f}^{t})$",
    r"\delta\bar{i}^{(t)} = \delta c^{(t)} \odot z^{(t)} \odot \sigma'(\bar{i}^{(t)})",
    r"\delta\bar{z}^{(t)} = \delta c^{(t)} \odot i^{(t)} \odot g'(\bar{z}^{(t)})",
    r"\delta x^{(t)} = W_z^\top \delta\bar{z}^{(t)} + W_i^\top \delta\bar{i}^{(t)}"
    r" + W_f^\top \delta\bar{f}^{(t)} + W_o^\top \delta\bar{o}^{(t)}",
    r"\delta R_{f}^{(t)} = \langle \delta\bar{f}^{(t+1)}, y^{(t)} \rangle",
    r"\delta p_i = c^{(t)} \odot \delta\bar{i}^{(t+1)}",
    r"\delta \boldsymbol{y}^{(t)} = \Delta^{(t)} + \boldsymbol{R}_z^T \cdot \delta\bar{z}^{(t+1)}"
    r" + R_i^T \cdot \delta\bar{i}^{(t+1)} + R_f^T \cdot \delta\bar{f}^{(t+1)}"
    r" + R_o^T \cdot \delta\bar{o}^{(t+1)}",
    r"\delta c_{0} = p_{i} \odot \delta\bar{i}^{(0)} + p_{f} \odot \delta\bar{f}^{(0)}"
    r" + \delta c^{(0)} \odot f^{(0)}",
]


@pytest.mark.parametrize("equation", PAPER)
def test_the_papers_equations_verify_equal(equation):
    v = verify("lstm", equation)
    assert v.equal is True, v.report()


@pytest.mark.parametrize("equation", PAPER_LATEX)
def test_the_papers_equations_in_latex_verify_equal(equation):
    v = verify("lstm", equation, latex=True)
    assert v.equal is True, v.report()


def test_forward_identities_and_exponential_forms_are_proved():
    v = verify("lstm", "dc[t] = dy[t]*o[t]*(1 - tanh(z[t]*i[t] + c[t-1]*f[t])**2)"
                       " + p_o*do_bar[t] + p_i*di_bar[t+1] + p_f*df_bar[t+1] + dc[t+1]*f[t+1]")
    assert v.equal is True and "forward definitions" in v.method, v.report()
    v = verify("lstm", "df_bar[t] = dc[t] * c[t-1] * f[t] * (1/(1 + exp(-f_bar[t])))"
                       " * (1 - f[t]) / f[t]")
    assert v.equal is True, v.report()


# --- wrong derivations: named, classified, with a real counterexample -------------------------

WRONG = [
    # (equation, words of the flow, kind, expected term, found term)
    ("dc[t] = " + C.replace("p_i*di_bar[t+1] + p_f*df_bar", "p_f*di_bar[t+1] + p_i*df_bar"),
     "the path from c[t] through f_bar[t+1]", "wrong gate or parameter",
     "p_f*df_bar[t+1]", "p_i*df_bar[t+1]"),
    ("dc[t] = " + C.replace("p_i*di_bar[t+1]", "p_i*di_bar[t]"),
     "through i_bar[t+1]", "wrong time step", "p_i*di_bar[t+1]", "p_i*di_bar[t]"),
    ("dc[t] = " + C.replace("dc[t+1]*f[t+1]", "dc[t+1]*f[t]"),
     "through c[t+1]", "wrong time step", "dc[t+1]*f[t+1]", "dc[t+1]*f[t]"),
    ("dc[t] = " + C.replace("dy[t]*o[t]*dtanh(c[t])", "dy[t]*o[t]"),
     "through y[t]", "missing or doubled activation derivative", "dtanh(c[t])", "dy[t]*o[t]"),
    ("dc[t] = " + C.replace(" + p_o*do_bar[t]", ""),
     "through o_bar[t]", "missing", "p_o*do_bar[t]", ""),
    ("dc[t] = " + C.replace("p_o*do_bar[t]", "p_i*do_bar[t]"),
     "through o_bar[t]", "wrong gate or parameter", "p_o*do_bar[t]", "p_i*do_bar[t]"),
    ("dc[t] = " + C + " + dy[t+1]*o[t+1]",
     "no path of the derivation goes through dy[t+1]", "extra", "", "dy[t+1]*o[t+1]"),
    ("dy[t] = " + Y.replace(" + R_o.T @ do_bar[t+1]", ""),
     "through o_bar[t+1] (R_o.T)", "missing", "R_o.T @ do_bar[t+1]", ""),
    ("dy[t] = " + Y.replace("R_z.T @", "R_z @"),
     "through z_bar[t+1] (R_z.T)", "wrong matrix order or transpose", "R_z.T @ dz_bar[t+1]",
     "R_z @ dz_bar[t+1]"),
    ("dy[t] = " + Y.replace("R_z.T @ dz_bar[t+1]", "(R_z.T @ dc[t+1])*i[t+1]*dtanh(z_bar[t+1])"),
     "through z_bar[t+1] (R_z.T)", "wrong matrix order or transpose", "R_z.T @ dz_bar[t+1]",
     "(R_z.T @ dc[t+1])*i[t+1]*dtanh(z_bar[t+1])"),
    ("dy[t] = " + Y.replace("Delta[t] + ", ""),
     "the external gradient Delta[t]", "missing", "Delta[t]", ""),
    ("dy[t] = " + Y.replace("R_i.T @ di_bar", "R_i.T @ X").replace(
        "R_f.T @ df_bar", "R_f.T @ di_bar").replace("X", "df_bar"),
     "through i_bar[t+1] (R_i.T)", "wrong gate or parameter", "R_i.T @ di_bar[t+1]",
     "R_f.T @ di_bar[t+1]"),
    ("do_bar[t] = dy[t]*tanh(c[t])*dsigmoid(o_bar[t])*dsigmoid(o_bar[t])",
     "through o[t] -> y[t]", "missing or doubled activation derivative",
     "dsigmoid(o_bar[t])", "dsigmoid(o_bar[t])*dsigmoid(o_bar[t])"),
    ("df_bar[t] = dc[t]*c[t]*dsigmoid(f_bar[t])",
     "through f[t] -> c[t]", "wrong time step", "c[t-1]", "dc[t]*c[t]*dsigmoid(f_bar[t])"),
    ("di_bar[t] = dc[t]*z[t]*dsigmoid(f_bar[t])",
     "through i[t] -> c[t]", "wrong gate or parameter", "dsigmoid(i_bar[t])",
     "dsigmoid(f_bar[t])"),
    ("dz_bar[t] = -dc[t]*i[t]*dtanh(z_bar[t])",
     "through z[t] -> c[t]", "wrong coefficient or sign", "dtanh(z_bar[t])",
     "-dc[t]*i[t]*dtanh(z_bar[t])"),
    ("dz_bar[t] = dc[t]*i[t]*dsigmoid(z_bar[t])",
     "through z[t] -> c[t]", "missing or doubled activation derivative", "dtanh(z_bar[t])",
     "dsigmoid(z_bar[t])"),
    ("dp_f[t] = c[t]*df_bar[t]", "the term of dp_f through f_bar[t]", "wrong time step",
     "c[t-1]", "c[t]*df_bar[t]"),
    ("dR_z[t] = outer(y[t-1], dz_bar[t])", "the term of dR_z through z_bar[t]",
     "wrong matrix order or transpose", "outer(dz_bar[t], y[t-1])", "outer(y[t-1], dz_bar[t])"),
    ("dc0 = p_i*di_bar[t] + p_f*df_bar[t]", "the path from the initial c through c[t]",
     "missing", "dc[t]*f[t]", ""),
]


def _independent(expr: sp.Expr, values: dict) -> np.ndarray:
    """Evaluate an expression with SymPy's lambdify (not derive.numeric) at given values."""
    syms = sorted(expr.free_symbols, key=lambda s: s.name)
    fn = sp.lambdify(syms, expr, modules=[{
        "MatVec": lambda A, v: v @ A.T, "MatTVec": lambda A, v: v @ A,
        "Outer": lambda a, b: a.T @ b, "sigmoid": lambda x: 1 / (1 + np.exp(-x))}, "numpy"],
        dummify=True)
    return np.asarray(fn(*[np.asarray(values[s.name]) for s in syms]), dtype=float)


def test_there_are_ten_distinct_wrong_derivations_of_every_kind_asked_for():
    assert len({w[0] for w in WRONG}) >= 10
    assert {w[2] for w in WRONG} == set(KINDS)
    targets = {w[0].split("=")[0].strip() for w in WRONG}
    assert {"dc[t]", "dy[t]", "do_bar[t]", "df_bar[t]", "di_bar[t]", "dz_bar[t]"} <= targets


@pytest.mark.parametrize("equation,flow,kind,expected,found", WRONG)
def test_a_wrong_derivation_is_named_classified_and_refuted(equation, flow, kind, expected,
                                                            found):
    v = verify("lstm", equation)
    assert v.equal is False and v.verdict == "differs", v.report()
    hits = [d for d in v.differences if flow in d.flow and d.kind == kind]
    assert hits, v.report()
    assert expected in hits[0].expected and found in hits[0].found, v.report()
    assert all(d.kind in KINDS for d in v.differences)
    assert v.difference not in ("", "0")
    # the counterexample really differs: evaluate both sides independently at its values
    ce = v.counterexample
    assert ce is not None, v.report()
    cell = derive.load_cell("lstm")
    d = derive.derive(cell)
    lhs, rhs = equation.split("=")
    target = lhs.strip()
    if target.endswith("0"):
        truth = d.initial[target[1:-1]]
    elif target.startswith(("dp_", "dR_")):
        truth = S.shift_time(d.params[target[1:].split("[")[0]].step, v.shift)
    else:
        truth = d.structured(target[1:].split("[")[0])
    want = _independent(truth, ce.values)
    got = _independent(parse_expression(cell, rhs), ce.values)
    assert np.allclose(want, ce.expected) and np.allclose(got, ce.found)
    assert np.max(np.abs(want - got)) > 1e-3
    assert np.isclose(np.max(np.abs(want - got)), ce.max_abs_difference)


def test_a_wrong_latex_derivation_is_reported_the_same_way():
    v = verify("lstm", r"\delta c^{(t)} = \delta y^{(t)} \odot o^{(t)} \odot h'(c^{(t)})"
                       r" + p_o \odot \delta\bar{o}^{(t)} + p_i \odot \delta\bar{i}^{(t+1)}"
                       r" + p_i \odot \delta\bar{f}^{(t+1)} + \delta c^{(t+1)} \odot f^{(t+1)}",
               latex=True)
    assert v.equal is False
    (diff,) = v.differences
    assert diff.kind == "wrong gate or parameter" and "f_bar[t+1]" in diff.flow
    assert diff.expected == "p_f*df_bar[t+1]" and diff.found == "p_i*df_bar[t+1]"


def test_a_transpose_of_a_non_square_matrix_does_not_even_fit():
    v = verify("lstm", "dx[t] = W_z @ dz_bar[t] + W_i.T @ di_bar[t] + W_f.T @ df_bar[t]"
                       " + W_o.T @ do_bar[t]")
    assert v.equal is False and "does not fit" in v.reason
    assert v.differences[0].kind == "wrong matrix order or transpose"


def test_cannot_decide_says_why():
    far = ("dy[t+4] - Delta[t+4] - R_z.T @ dz_bar[t+5] - R_i.T @ di_bar[t+5]"
           " - R_f.T @ df_bar[t+5] - R_o.T @ do_bar[t+5]")   # zero, but five steps away
    v = verify("lstm", f"dc[t] = {C} + o[t]*({far})")
    assert v.equal is None and v.verdict == "cannot decide"
    assert "too large to decide symbolically" in v.reason and "agree numerically" in v.reason


def test_other_cells_verify_and_refute_too():
    assert verify("gru", "dh_bar[t] = dy[t] * (1 - u[t]) * dtanh(h_bar[t])").equal
    v = verify("gru", "dh_bar[t] = dy[t] * u[t] * dtanh(h_bar[t])")
    assert v.equal is False and v.counterexample is not None
    assert verify("lstm_cifg", "di_bar[t] = dc[t]*(z[t] - c[t-1])*dsigmoid(i_bar[t])").equal
    v = verify("lstm_fgr", "di[t] = dc[t]*z[t] + R_ii.T @ di_bar[t+1] + R_fi.T @ df_bar[t+1]")
    assert v.equal is False
    assert any(d.kind == "missing" and "R_oi" in d.expected for d in v.differences)
    assert verify("rnn", "dR[t] = outer(da[t+1], y[t])").equal


# --- safe parsing: malicious and malformed input --------------------------------------------

BAD = [
    "dc[t] = __import__('os').system('touch {marker}')",
    "dc[t] = open('{marker}', 'w')",
    "dc[t] = dy[t].__class__",
    "dc[t] = c[t].T",
    "dc[t] = (lambda: 0)()",
    "dc[t] = [x for x in ()]",
    "dc[t] = c[0]",
    "dc[t] = c[t+100]",
    "dc[t] = dyy[t]*o[t]",
    "dc[t] = exec('1')",
    "dc[t] = (dy[t]*o[t]",
    "dc[t] = 2**99999999",
    "dc[t] = (c[t]+dc[t]+f[t]+i[t]+z[t])**16*(c[t]+dc[t]+f[t]+i[t]+z[t])**16",
    "dc[t] = dy[t]" + " + dy[t]" * 5000,
    "dq[t] = c[t]",
    "dc[t] == c[t]",
    "dc[t] = c[t] = c[t]",
    "dc[t] = ",
    "dc0 = f[t-1]",
    "dW_z[t] = outer(dz_bar[t], x[t]); import os",
    "dc[t] = 'touch {marker}'",
]
BAD_LATEX = [
    r"\delta c^{(t)} = \input{{marker}}",
    r"\delta c^{(t)} = \immediate\write18{touch {marker}}",
    r"\delta c^{(t)} = \def\x{1}",
    r"\delta c^{(t)} = c^{(t)} \odot",
    r"\delta c^{(t)} = \sigmoid(c^{(t)})",
    r"\delta c^{(t)} = c \odot \delta y^{(t)}",
    r"\delta c^{(t)} = R_z^{(t)}",
    r"\delta c^{(t)} = c^{(t)} @ d",
    r"c^{(t)} = c^{(t)}",
]


def _run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("template", BAD)
def test_malformed_or_malicious_text_exits_2_with_one_line(template, tmp_path, capsys,
                                                          monkeypatch):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "MARKER"
    code, out, err = _run(["verify", "lstm", template.format(marker=marker)], capsys)
    assert code == 2 and out == ""
    assert err.startswith("derive: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and not marker.exists()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("template", BAD_LATEX)
def test_malformed_or_malicious_latex_exits_2_with_one_line(template, tmp_path, capsys):
    marker = tmp_path / "MARKER"
    code, out, err = _run(["verify", "lstm", "--latex", template.replace("{marker}", str(marker))],
                          capsys)
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert not marker.exists()


def test_errors_point_at_the_column_and_suggest_names(capsys):
    code, _, err = _run(["verify", "lstm", "dc[t] = dy[t]*o[t] + dyy[t]"], capsys)
    assert code == 2 and "did you mean 'dy'?" in err and "column 22" in err
    code, _, err = _run(["verify", "lstm", "dc[t] = dy[t].foo"], capsys)
    assert "attribute .foo is not allowed (only .T" in err and "column 9" in err
    code, _, err = _run(["verify", "lstm", "--latex", r"\delta c^{(t)} = \odto c^{(t)}"], capsys)
    assert code == 2 and r"did you mean \odot?" in err and "column 18" in err


# --- the command line -------------------------------------------------------------------------

def test_exit_codes_and_reports(tmp_path, capsys):
    code, out, _ = _run(["verify", "lstm", "dc[t] = " + C], capsys)
    assert code == 0 and "EQUAL" in out
    code, out, _ = _run(["verify", "lstm", "dc[t] = " + C.replace("f[t+1]", "f[t]")], capsys)
    assert code == 1 and "DIFFERS" in out and "counterexample" in out and "wrong time step" in out
    f = tmp_path / "mine.txt"
    f.write_text("# my derivation of the lstm\n\n"
                 f"dc[t] = {C}   # the cell\n"
                 f"dy[t] = {Y.replace('Delta[t] + ', '')}\n")
    code, out, _ = _run(["verify", "lstm", "--file", str(f)], capsys)
    assert code == 1 and out.count("EQUAL") == 1 and out.count("DIFFERS") == 1
    assert "2 equations: 1 equal, 1 differs, 0 cannot decide" in out


def test_a_bad_line_in_a_file_is_named_and_nothing_is_verified(tmp_path, capsys):
    f = tmp_path / "mine.txt"
    f.write_text(f"dc[t] = {C}\ndc[t] = c[t] +\n")
    code, out, err = _run(["verify", "lstm", "--file", str(f)], capsys)
    assert code == 2 and out == "" and f"{f}:2: " in err and err.count("\n") == 1
    code, _, err = _run(["verify", "lstm", "--file", str(tmp_path / "missing.txt")], capsys)
    assert code == 2 and "cannot read" in err
    code, _, err = _run(["verify", "lstm"], capsys)
    assert code == 2 and "nothing to verify" in err
    code, _, err = _run(["verify", "no_such_cell", "dc[t] = c[t]"], capsys)
    assert code == 2 and "unknown cell" in err


def test_json_is_one_document(capsys):
    wrong = "dc[t] = " + C.replace("p_o*do_bar[t]", "p_o*do_bar[t+1]")
    code, out, _ = _run(["verify", "lstm", "dc[t] = " + C, wrong, "--json"], capsys)
    doc = json.loads(out)
    assert code == 1 and doc["equal"] is False and doc["cell"] == "lstm"
    assert doc["counts"] == {"equal": 1, "differs": 1, "cannot decide": 0}
    first, second = doc["results"]
    assert first["equal"] is True and first["counterexample"] is None
    assert second["equal"] is False and second["differences"][0]["kind"] == "wrong time step"
    assert len(second["counterexample"]["expected"]) == 2  # the batch


def test_json_is_strict_when_the_right_side_overflows(capsys):
    """An overflowing right side gives infinities in the counterexample: strict JSON has
    none (Python's json would write the non-standard token Infinity)."""
    def refuse(token):
        raise AssertionError(f"non-standard JSON token {token}")
    code, out, _ = _run(["verify", "rnn", "da[t] = exp(exp(exp(exp(1/(y[t]**2)))))",
                         "--json"], capsys)
    doc = json.loads(out, parse_constant=refuse)
    assert code == 1 and doc["equal"] is False
    assert "inf" in json.dumps(doc["results"][0]["counterexample"])


def test_latex_file_with_percent_comments(tmp_path, capsys):
    f = tmp_path / "mine.tex"
    f.write_text("% from the paper\n" + "\n".join(PAPER_LATEX[:3]) + "  % y, o, c\n")
    code, out, _ = _run(["verify", "lstm", "--latex", "--file", str(f)], capsys)
    assert code == 0 and out.count("EQUAL") == 3


@pytest.mark.slow
def test_verifying_one_lstm_equation_takes_under_two_seconds():
    """A fresh process, as a user runs it: median of three."""
    times = []
    for _ in range(3):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "derive", "verify", "lstm", "dc[t] = " + C],
                       check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    assert sorted(times)[1] < 2.0, times


def test_left_sides_of_the_notation():
    from derive.errors import ExpressionError
    from derive.verification.notation import parse_target
    cell = derive.load_cell("lstm")
    assert parse_target(cell, "dc0").kind == "initial"
    assert parse_target(cell, "dW_z").kind == parse_target(cell, "dW_z[t+1]").kind == "param"
    assert parse_target(cell, "dc[t+1]").shift == 1
    for bad, words in [("dc0[t]", "takes no time index"), ("dx0", "unknown left side"),
                       ("dcc[t]", "did you mean 'dc'"), ("dc", "needs a time index"),
                       ("c[t]", "the left side must be a delta")]:
        with pytest.raises(ExpressionError, match=words):
            parse_target(cell, bad)


def test_a_cell_given_by_path_verifies(tmp_path):
    spec = tmp_path / "elman.toml"
    spec.write_text(derive.load_cell("rnn").source.replace('name = "rnn"', 'name = "elman"'))
    assert verify(str(spec), "da[t] = dy[t] * dtanh(a[t])").equal is True
    assert verify(str(spec), "da[t] = dy[t] * a[t]").equal is False


def test_one_row_equations_pasted_from_the_generated_documents_verify(cell_name):
    """Rows of generated/<cell>/equations.tex (with & and \\\\) that fit on one line."""
    from pathlib import Path
    path = Path(__file__).parents[2] / "generated" / cell_name / "equations.tex"
    rows = path.read_text().splitlines()
    pasted = [row for k, row in enumerate(rows)
              if row.startswith(r"\delta") and "&=" in row and r"\sum" not in row
              and not (k + 1 < len(rows) and rows[k + 1].startswith("&"))]
    assert pasted
    for row in pasted:
        v = verify(cell_name, row, latex=True)
        assert v.equal is True, (row, v.report())


def test_derive_verify_is_the_function_whatever_was_imported_first():
    """Importing the stage's modules first does not hide the API's `derive.verify`."""
    code = ("import derive.verification.notation, derive; "
            "print(derive.verify('lstm', 'dy[t] = Delta[t]').verdict)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "differs"
