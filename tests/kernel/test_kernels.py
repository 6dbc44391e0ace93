"""Every shipped cell's compiled kernel and NumPy reference, checked numerically.

The shipped kernels were compiled when derive was installed: these tests load them
(a shipped module is recompiled into the cache only if the generator changed since).
"""

import numpy as np
import pytest
from agreement import assert_kernel_equals_reference
from catalog import cell_path

import derive
from derive.check import gradient_check

T, B, M, N = 6, 4, 7, 9


def test_kernel_passes_finite_differences(cell_name):
    report = gradient_check(cell_name, backend="cython", dtype="float64")
    assert report.backend == "cython"
    assert report.passed, report.table()


def test_reference_passes_finite_differences(cell_name):
    report = gradient_check(cell_name, backend="numpy", dtype="float64")
    assert report.passed, report.table()


def test_float32_kernel_agrees_with_float64_within_rounding(cell_name):
    report = gradient_check(cell_name, backend="cython", dtype="float32")
    assert report.passed, report.table()


def test_kernel_matches_the_reference_to_1e12(cell_name, rng):
    _kernel_matches_the_reference(cell_name, rng)


def test_a_kernel_of_relu_softplus_and_sqrt_matches_the_reference_to_1e12(rng):
    _kernel_matches_the_reference(cell_path("functions"), rng)


def _kernel_matches_the_reference(cell, rng):
    k = derive.load_kernel(cell, "float64", backend="cython")
    r = derive.load_kernel(cell, "float64", backend="numpy")
    assert_kernel_equals_reference(k, r, rng, T, B, M, N, seed=7)


# torch's module of the same math: its gate order, and our parameters in its places
# (ih: input weights and biases, hh: recurrent ones; a zero where torch has a bias we lack)
TORCH = {
    "lstm_np": ("LSTM", "ifzo", lambda p, g: p[f"b_{g}"], lambda p, g: 0 * p[f"b_{g}"]),
    "gru": ("GRU", "ruh", lambda p, g: p[f"b_{g}"],
            lambda p, g: p["b_hr"] if g == "h" else 0 * p["b_hr"]),
    "rnn": ("RNN", "", lambda p, g: p["b"], lambda p, g: 0 * p["b"]),
}


@pytest.mark.parametrize("cell", list(TORCH))
def test_kernel_matches_torch_when_installed(rng, cell):
    """lstm_np, gru and rnn are nn.LSTM's, nn.GRU's and nn.RNN's math (float64, 1e-12)."""
    torch = pytest.importorskip("torch")
    module, gates, b_ih, b_hh = TORCH[cell]
    k = derive.load_kernel(cell, "float64")
    params = k.init_params(M, N, seed=1)
    name = (lambda m, g: f"{m}_{g}") if gates else (lambda m, g: m)
    stack = lambda f: torch.from_numpy(np.concatenate([f(g) for g in gates or " "]))
    x = rng.standard_normal((T, B, M))
    state0 = {s: rng.standard_normal((B, N)) for s in k.states}
    net = getattr(torch.nn, module)(M, N).double()
    with torch.no_grad():
        net.weight_ih_l0.copy_(stack(lambda g: params[name("W", g)]))
        net.weight_hh_l0.copy_(stack(lambda g: params[name("R", g)]))
        net.bias_ih_l0.copy_(stack(lambda g: b_ih(params, g)))
        net.bias_hh_l0.copy_(stack(lambda g: b_hh(params, g)))
    tx = torch.from_numpy(x).requires_grad_(True)
    t0 = {s: torch.from_numpy(v[None]).requires_grad_(True) for s, v in state0.items()}
    out, _ = net(tx, (t0["y"], t0["c"]) if "c" in t0 else t0["y"])
    dy = rng.standard_normal((T, B, N))
    out.backward(torch.from_numpy(dy))
    tr = k.forward(x, params, state0)
    np.testing.assert_allclose(tr.outputs, out.detach().numpy(), rtol=0, atol=1e-13)
    g = k.backward(tr, dy)
    np.testing.assert_allclose(g["x"], tx.grad.numpy(), rtol=0, atol=1e-12)
    for s in k.states:
        np.testing.assert_allclose(g[f"{s}0"], t0[s].grad.numpy()[0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.concatenate([g[name("W", q)] for q in gates or " "]),
                               net.weight_ih_l0.grad.numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.concatenate([g[name("R", q)] for q in gates or " "]),
                               net.weight_hh_l0.grad.numpy(), rtol=0, atol=1e-12)
