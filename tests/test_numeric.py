"""An independent numeric check of the derivation itself, and the evaluator behind it.

The derived structured equations, evaluated step by step in NumPy on a small unrolled
sequence, must agree with central finite differences of the forward pass, for every
parameter, the input and every initial state, for every shipped cell (the one gradient
check of derive.check, with the derivation as its subject).
"""

import copy
import re

import numpy as np
import pytest
import sympy as sp

import derive
from derive import check, numeric
from derive.cell import symbols as S
from derive.verification.notation import parse_expression


def _check(derivation):
    return check.finite_difference_check(check.of_derivation(derivation))


def test_the_setting_is_one_a_check_can_trust(cell_name):
    """T ≥ 3, batch ≥ 2, M, N (and P, for a cell with that size) distinct, a non-zero initial
    state, distinct peepholes, no saturation."""
    d = derive.derive(cell_name)
    p = check.random_problem(check.of_derivation(d))
    T, B, M, N = (p.sizes[k] for k in "TBMN")
    has_P = any("P" in par.shape for par in d.cell.parameters.values())
    assert ("P" in p.sizes) == has_P     # the problem (and its report) has P only then
    sizes = {M, N, p.sizes["P"]} if has_P else {M, N}
    P = p.sizes.get("P", 0)
    assert T >= 3 and B >= 2 and len(sizes) == 2 + has_P and min(sizes) >= 2
    for s, v in p.initial.items():
        assert np.abs(v).min() > 0 and np.abs(v).mean() > 0.1, s
    peepholes = [p.params[n] for n in ("p_i", "p_f", "p_o") if n in p.params]
    for a in range(len(peepholes)):
        for b in range(a):
            assert np.abs(peepholes[a] - peepholes[b]).min() > 1e-3
    env = numeric.forward(numeric.Problem(d.cell, p.params, p.inputs, p.initial,
                                          p.projection, T, B, N, M, P))
    for node in d.cell.nodes.values():
        if isinstance(node.elementwise, (S.sigmoid, sp.tanh)) and not node.projections:
            for t in range(T):
                pre = np.abs(env.values[(node.elementwise.args[0].name.split("[")[0], t)])
                assert pre.max() < 3.0, (node.name, t, pre.max())  # σ' and tanh' stay > 0.04


def test_every_gradient_matches_finite_differences(cell_name):
    report = check.gradient_check(cell_name, backend="derivation")
    cell = derive.load_cell(cell_name)
    expected = set(cell.parameters) | set(cell.inputs) | {f"{s}0" for s in cell.states}
    assert {r.name for r in report.rows} == expected
    assert report.passed and report.tolerance == 1e-6, report.table()
    assert all(r.scale > 1e-3 for r in report.rows), report.table()  # nothing trivially zero


def _tampered(cell: str, node: str, text: str):
    d = copy.deepcopy(derive.derive(cell))
    d.deltas[node].structured = parse_expression(d.cell, text)
    return d


def test_negative_control_swapped_peepholes_in_dc_fail():
    """p_i and p_f swapped in δc: the check bites on the gradients it should."""
    wrong = _tampered("lstm", "c", "dy[t]*o[t]*dtanh(c[t]) + p_o*do_bar[t] + p_f*di_bar[t+1]"
                                   " + p_i*df_bar[t+1] + dc[t+1]*f[t+1]")
    report = _check(wrong)
    failed = {r.name for r in report.failures}
    assert not report.passed
    assert {"p_i", "p_f", "W_z", "x", "c0", "y0"} <= failed, report.table()


def test_negative_control_wrong_time_step_and_missing_boundary_fail():
    wrong = _tampered("lstm", "c", "dy[t]*o[t]*dtanh(c[t]) + p_o*do_bar[t] + p_i*di_bar[t+1]"
                                   " + p_f*df_bar[t+1] + dc[t+1]*f[t]")  # f[t], not f[t+1]
    assert not _check(wrong).passed
    d = copy.deepcopy(derive.derive("lstm"))
    d.initial["c"] = parse_expression(d.cell, "p_i*di_bar[t] + p_f*df_bar[t]")  # no dc*f term
    report = _check(d)
    assert {r.name for r in report.failures} == {"c0"}, report.table()


def test_a_transposed_recurrent_matrix_is_caught():
    wrong = _tampered("rnn", "y", "Delta[t] + R @ da[t+1]")
    report = _check(wrong)
    assert not report.passed and "R" in {r.name for r in report.failures}


# --- the evaluator ------------------------------------------------------------------------

def _env(rng, cell="lstm", B=2, N=3, M=2):
    c = derive.load_cell(cell)
    p = numeric.random_problem(c, T=3, B=B, M=M, N=N, seed=1)
    return c, numeric.forward(p)


def test_matrix_products_and_outer_follow_the_paper_shapes(rng):
    cell, env = _env(rng)
    W, R = env.params["W_z"], env.params["R_z"]
    x, y = env.values[("x", 1)], env.values[("y", 0)]
    e = parse_expression(cell, "W_z @ x[t] + R_z @ y[t-1]")
    assert np.allclose(numeric.evaluate(e, env, 1), x @ W.T + y @ R.T)
    e = parse_expression(cell, "R_z.T @ y[t-1]")
    assert np.allclose(numeric.evaluate(e, env, 1), y @ R)
    assert not np.allclose(y @ R, y @ R.T)  # a transpose cannot hide
    e = parse_expression(cell, "outer(y[t-1], x[t])")
    out = numeric.evaluate(e, env, 1)
    assert out.shape == (3, 2) and np.allclose(out, sum(np.outer(y[b], x[b]) for b in range(2)))
    e = parse_expression(cell, "dsigmoid(f_bar[t]) - f[t]*(1 - f[t])"
                               " + dtanh(c[t]) + tanh(c[t])**2")
    assert np.allclose(numeric.evaluate(e, env, 1), 1.0)


@pytest.mark.parametrize("text,message", [
    ("W_z @ dz_bar[t]", "W_z is N×M but dz_bar[t] is a vector of size N"),
    ("x[t] + c[t]", "adds a vector of size M and a vector of size N"),
    ("outer(c[t], x[t]) * c[t]", "multiplies a matrix element-wise"),
    ("R_z.T @ x[t]", "needs a vector of size N"),
])
def test_shape_errors_name_the_mismatch(text, message):
    cell = derive.load_cell("lstm")
    with pytest.raises(numeric.DimensionError, match=re.escape(message)):
        numeric.shape_of(parse_expression(cell, text), cell)


def test_shapes_of_the_derived_equations_fit(cell_name):
    d = derive.derive(cell_name)
    for name, nd in d.deltas.items():
        assert numeric.shape_of(nd.structured, d.cell) == numeric.Shape("vector",
                                                                        d.cell.size(name))
    for g in d.params.values():
        shape = numeric.shape_of(g.step, d.cell)
        assert (shape.kind == "matrix") == g.is_matrix
