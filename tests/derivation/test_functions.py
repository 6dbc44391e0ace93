"""The derivation of relu, softplus, sqrt and the reduction mean: the forms it writes
(derivatives from stored outputs, the mean's adjoint) and its own numeric check."""

import copy

import numpy as np
import pytest
import sympy as sp
from catalog import cell_path

import derive
from derive import check, numeric
from derive.cell import symbols as S
from derive.verification.notation import parse_expression


def _check(d):
    return check.finite_difference_check(check.of_derivation(d))


def _is(d, name, text):
    want = parse_expression(d.cell, text)
    assert sp.expand(d.structured(name) - want) == 0, d.structured(name)


def test_relu_derivative_is_read_from_the_stored_output():
    d = derive.derive("indrnn")
    _is(d, "a", "dh[t]*step(h[t])")
    _is(d, "h", "Delta[t] + u*da[t+1]")
    assert d.initial["h"] == S.param("u") * S.delta("a")


def test_softplus_and_sqrt_derivatives():
    d = derive.derive(cell_path("functions"))
    _is(d, "a_bar", "dy[t]*sigmoid(a_bar[t])*tanh(c[t]) "
                    "+ p*dc[t]*sigmoid(a_bar[t])/(2*sqrt(a[t] + c[t-1]**2 + 1/2))")
    _is(d, "s_bar", "dc[t]*step(s[t])/2")
    _is(d, "c", "dy[t]*a[t]*(1 - tanh(c[t])**2) + p*dc[t+1]*c[t]/sqrt(a[t+1] + c[t]**2 + 1/2)")


def test_the_adjoint_of_mean_is_mean_broadcast_back():
    d = derive.derive(cell_path("layer_norm"))
    # mu = mean(v), d = v - mu: dv gets mean(dmu) (each unit: the sum of dmu over N)
    _is(d, "v", "mean(dmu[t]) + d[t]*mean(ds[t])/s[t] + g*dn[t]/s[t]")
    _is(d, "mu", "-g*dn[t]/s[t] - d[t]*mean(ds[t])/s[t]")
    _is(d, "s", "-g*dn[t]*d[t]/s[t]**2")
    flows = {f.label: f.mean for f in d.deltas["v"].flows}
    assert flows == {"mu[t] through mean": True, "d[t] -> s[t] through mean": True,
                     "d[t] -> n[t]": False}, flows
    assert {"mu", "s", "n"} <= set(d.kept)  # a mean's consumer keeps its delta
    assert d.activations.constants == {"mu", "s"}


def test_a_mean_of_a_centred_vector_contributes_nothing():
    """mean(v - mean(v)) = 0: the nested form drops that path instead of printing a 0."""
    d = derive.derive(cell_path("mean_nested"))
    text = str(d.structured("v"))
    assert "Mean(2*Mean(v[t]) - 2*v[t])" not in text and "Mean(-2*v[t]" not in text
    assert len([f for f in d.deltas["v"].flows if f.mean]) == 2


@pytest.mark.parametrize("name", ["functions", "layer_norm", "mean_nested"])
def test_the_derivations_own_check_passes(name):
    report = _check(derive.derive(cell_path(name)))
    assert report.passed, report.table()
    assert all(r.scale > 1e-3 for r in report.rows), report.table()


def test_the_check_bites_when_the_adjoint_of_mean_is_dropped():
    d = copy.deepcopy(derive.derive(cell_path("layer_norm")))
    d.deltas["v"].structured = parse_expression(
        d.cell, "dmu[t] + d[t]*mean(ds[t])/s[t] + g*dn[t]/s[t]")  # mean(dmu) -> dmu
    report = _check(d)
    assert not report.passed
    assert {r.name for r in report.failures} >= {"W", "R", "b", "x"}


def test_the_layer_norm_normalises_over_the_hidden_units():
    d = derive.derive(cell_path("layer_norm"))
    p = check.random_problem(check.of_derivation(d))
    s = p.sizes
    env = numeric.forward(numeric.Problem(d.cell, p.params, p.inputs, p.initial,
                                          p.projection, s["T"], s["B"], s["N"], s["M"]))
    for t in range(s["T"]):
        v = env.values[("v", t)]
        z = (v - v.mean(axis=1, keepdims=True)) / np.sqrt(v.var(axis=1, keepdims=True) + 1e-3)
        want = np.tanh(p.params["g"] * z + p.params["beta"])
        np.testing.assert_allclose(env.values[("y", t)], want, rtol=0, atol=1e-14)


def test_relu_cells_are_checked_away_from_the_kinks():
    """Seed 0 puts a relu argument of indrnn within 2e-4 of 0, where a difference of step
    ±2h crosses the kink and fails; the check takes the first seed that stays 20 h away,
    and says which."""
    subject = check.of_derivation(derive.derive("indrnn"))
    assert subject.kinks is not None
    assert subject.kinks(check.random_problem(subject, seed=0)) < 2 * check.STEP
    problem = check.screened_problem(subject, seed=0)
    assert problem.seed > 0 and subject.kinks(problem) > check.KINK_MARGIN
    report = check.finite_difference_check(subject)
    assert report.passed and report.seed == problem.seed, report.table()
    unscreened = check.finite_difference_check(
        check.Subject(**{**subject.__dict__, "kinks": None}))
    assert not unscreened.passed  # the kink is real: the screening is what passes it
    assert check.of_derivation(derive.derive("rnn")).kinks is None


def test_the_layer_norm_derivation_equals_pytorch_autograd():
    """The derived backward of tests/cells/layer_norm.toml, evaluated by derive.numeric,
    against PyTorch autograd of the same cell written in a few lines (float64, 1e-10):
    an oracle for the adjoint of mean independent of finite differences."""
    torch = pytest.importorskip("torch")
    d = derive.derive(cell_path("layer_norm"))
    p = check.random_problem(check.of_derivation(d), seed=3)
    s = p.sizes
    prob = numeric.Problem(d.cell, p.params, p.inputs, p.initial, p.projection,
                           s["T"], s["B"], s["N"], s["M"])
    grads = numeric.backward(d, prob, numeric.forward(prob))
    tp = {n: torch.from_numpy(v.copy()).requires_grad_(True) for n, v in p.params.items()}
    x = torch.from_numpy(p.inputs["x"].copy()).requires_grad_(True)
    y0 = torch.from_numpy(p.initial["y"].copy()).requires_grad_(True)
    y, loss = y0, 0
    for t in range(s["T"]):
        v = x[t] @ tp["W"].T + y @ tp["R"].T + tp["b"]
        z = v - v.mean(dim=1, keepdim=True)
        y = torch.tanh(tp["g"] * z / torch.sqrt((z * z).mean(dim=1, keepdim=True) + 0.001)
                       + tp["beta"])
        loss = loss + (torch.from_numpy(p.projection["y"][t]) * y).sum()
    loss.backward()
    for name, got in [*((n, tp[n].grad) for n in tp), ("x", x.grad), ("y0", y0.grad)]:
        np.testing.assert_allclose(grads[name], got.numpy(), rtol=0, atol=1e-10,
                                   err_msg=name)
