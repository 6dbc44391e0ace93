"""The derived state-to-state Jacobian ∂sᵗ/∂rᵗ⁻¹ against central differences, and its printing."""

import json

import numpy as np
import pytest

import derive
from derive import numeric
from derive.analyze import evaluate_block
from derive.cli import main
from derive.derivation.jacobian import jacobian, reductions
from derive.errors import UserError

# two states, a matrix product of a node of step t that depends on a state (an inner
# diag in the chain), a peephole-like vector parameter and a numeric coefficient
TWO_STATES = """\
name = "two_states"
inputs = ["x"]
state = ["y", "m"]
outputs = ["y"]

[parameters]
W = ["N", "M"]
R = ["N", "N"]
U = ["N", "N"]
p = ["N"]
b = ["N"]

[nodes]
h = "W @ x + R @ y[t-1] + b"
k = "tanh(h) * m[t-1]"
g = "U @ k + p * y[t-1]"
m = "sigmoid(g) + 0.5 * m[t-1]"
y = "tanh(m) * k"
"""


def numeric_jacobian(cell, h=1e-6, seed=3):
    """(symbolic blocks, central-difference blocks), (B, n, k) each (the sizes of the two
    states: N, or P for LSTMP's y), at one random step, and the Env of that step."""
    d = derive.derive(cell)
    prob = numeric.random_problem(d.cell, T=1, B=3, M=4, N=5, P=2, seed=seed, scale=0.9)
    env = numeric.forward(prob)
    jac = jacobian(d)
    symbolic = {(s, r): evaluate_block(jac.block(s, r), env, 0)
                for s in d.cell.states for r in d.cell.states}
    central = {}
    for r in d.cell.states:
        for l in range(env.size(r)):
            plus = {k: v.copy() for k, v in prob.initial.items()}
            minus = {k: v.copy() for k, v in prob.initial.items()}
            plus[r][:, l] += h
            minus[r][:, l] -= h
            up = numeric.forward(prob, initial=plus)
            down = numeric.forward(prob, initial=minus)
            for s in d.cell.states:
                col = (up.values[(s, 0)] - down.values[(s, 0)]) / (2 * h)
                central.setdefault((s, r), np.zeros((prob.B, env.size(s), env.size(r))))[:, :, l] = col
    return symbolic, central, env


def test_every_shipped_cell_matches_central_differences(cell_name):
    if reductions(derive.load_cell(cell_name)):
        # a mean couples the units of a row (lstm_ln): a stated limit, refused in one line
        with pytest.raises(UserError, match=r"reduces over the hidden units \(mean\)"):
            jacobian(derive.derive(cell_name))
        return
    symbolic, central, _ = numeric_jacobian(cell_name)
    for key in symbolic:
        err = np.max(np.abs(symbolic[key] - central[key]))
        assert err < 1e-6, (cell_name, key, err)
        assert np.max(np.abs(central[key])) > 0 or not jacobian(derive.derive(cell_name)) \
            .block(*key).terms, key


def test_a_cell_file_matches_central_differences(tmp_path):
    spec = tmp_path / "two_states.toml"
    spec.write_text(TWO_STATES)
    symbolic, central, _ = numeric_jacobian(str(spec))
    assert set(symbolic) == {("y", "y"), ("y", "m"), ("m", "y"), ("m", "m")}
    for key in symbolic:
        assert np.max(np.abs(central[key])) > 1e-3, key      # every block is non-zero here
        assert np.max(np.abs(symbolic[key] - central[key])) < 1e-6, key
    # the inner diag: dm/dy = diag(σ'(g)) U diag(tanh'(h) m[t-1]) R + diag(σ'(g) p)
    block = jacobian(derive.derive(str(spec))).block("m", "y")
    assert [t.matrices for t in block.terms] == [(), ("U", "R")]
    assert len(block.terms[1].factors) == 3


def test_a_wrong_jacobian_is_caught():
    """The check bites: dropping one term of dc/dc (the peephole p_f) breaks it."""
    block = jacobian(derive.derive("lstm")).block("c", "c")
    (term,) = block.terms
    wrong = type(block)("c", "c", (type(term)(term.coefficient.subs(
        derive.cell.symbols.param("p_f"), 0), ()),))
    symbolic, central, env = numeric_jacobian("lstm", seed=1)
    assert np.max(np.abs(symbolic[("c", "c")] - central[("c", "c")])) < 1e-6
    assert np.max(np.abs(evaluate_block(wrong, env, 0) - central[("c", "c")])) > 1e-3


def test_rnn_backward_map_is_R_transpose_times_diag():
    from derive.docs.jacobian import jacobian_document
    text = jacobian_document(derive.derive("rnn"), "text").splitlines()
    assert "dy[t]/dy[t-1] = diag(1 - y[t]**2) @ R" in text
    assert "(dy[t]/dy[t-1]).T = R.T @ diag(1 - y[t]**2)" in text
    latex = jacobian_document(derive.derive("rnn"), "latex")
    assert (r"\left(\frac{\partial y^{(t)}}{\partial y^{(t-1)}}\right)^{\top} = R^{\top} "
            r"\operatorname{diag}\left(1 - \left(y^{(t)}\right)^{2}\right)") in latex
    assert "numerator layout" in text[1] and "backward map" in text[1]


def test_lstm_blocks_go_through_every_gate_peephole_and_matrix():
    jac = jacobian(derive.derive("lstm"))
    assert [t.matrices for t in jac.block("c", "y").terms] == [("R_z",), ("R_i",), ("R_f",)]
    assert [t.matrices for t in jac.block("y", "y").terms] == [("R_z",), ("R_i",), ("R_f",),
                                                               ("R_o",)]
    cc = str(jac.block("c", "c").terms[0].coefficient)
    assert "p_f" in cc and "p_i" in cc and "f[t]" in cc
    yc = str(jac.block("y", "c").terms[0].coefficient)
    assert "p_o" in yc


@pytest.mark.parametrize("fmt", ["text", "latex", "markdown", "json"])
def test_the_command_prints_every_format(fmt, capsys):
    assert main(["jacobian", "lstm", "--format", fmt]) == 0
    out = capsys.readouterr().out
    if fmt == "json":
        doc = json.loads(out)
        assert [(b["state"], b["previous"]) for b in doc["blocks"]] == [
            ("y", "y"), ("y", "c"), ("c", "y"), ("c", "c")]
        assert doc["blocks"][2]["backward_map"]["text"].startswith("R_z.T @ diag(")
    else:
        assert "c" in out and ("diag" in out)


def test_unknown_cell_is_one_line_and_exit_2(capsys):
    assert main(["jacobian", "nope"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
