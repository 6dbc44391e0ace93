"""Every shipped cell's compiled kernel and NumPy reference, checked numerically.

The shipped kernels were compiled when derive was installed: these tests load them
(a shipped module is recompiled into the cache only if the generator changed since).
"""

import numpy as np
import pytest

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
    k = derive.load_kernel(cell_name, "float64", backend="cython")
    r = derive.load_kernel(cell_name, "float64", backend="numpy")
    params = k.init_params(M, N, seed=7)
    x = rng.standard_normal((T, B, M))
    state0 = {s: 0.5 * rng.standard_normal((B, N)) for s in k.states}
    dy = rng.standard_normal((T, B, N))
    tk, tr = k.forward(x, params, state0), r.forward(x, params, state0)
    assert np.max(np.abs(tk.outputs - tr.outputs)) <= 1e-12
    gk, gr = k.backward(tk, dy), r.backward(tr, dy)
    assert set(gk) == set(gr)
    for name in gr:
        scale = max(1.0, float(np.max(np.abs(gr[name]))))
        assert np.max(np.abs(gk[name] - gr[name])) <= 1e-12 * scale, name


def test_lstm_np_matches_torch_when_installed(rng):
    """lstm_np is nn.LSTM's math (gate order i, f, g, o; two biases summed)."""
    torch = pytest.importorskip("torch")
    k = derive.load_kernel("lstm_np", "float64")
    params = k.init_params(M, N, seed=1)
    x = rng.standard_normal((T, B, M))
    h0, c0 = rng.standard_normal((B, N)), rng.standard_normal((B, N))
    lstm = torch.nn.LSTM(M, N).double()
    with torch.no_grad():
        lstm.weight_ih_l0.copy_(torch.from_numpy(np.concatenate(
            [params[f"W_{g}"] for g in "ifzo"])))
        lstm.weight_hh_l0.copy_(torch.from_numpy(np.concatenate(
            [params[f"R_{g}"] for g in "ifzo"])))
        lstm.bias_ih_l0.copy_(torch.from_numpy(np.concatenate([params[f"b_{g}"] for g in "ifzo"])))
        lstm.bias_hh_l0.zero_()
    tx = torch.from_numpy(x).requires_grad_(True)
    th0 = torch.from_numpy(h0[None]).requires_grad_(True)
    tc0 = torch.from_numpy(c0[None]).requires_grad_(True)
    out, _ = lstm(tx, (th0, tc0))
    dy = rng.standard_normal((T, B, N))
    out.backward(torch.from_numpy(dy))
    tr = k.forward(x, params, {"y": h0, "c": c0})
    np.testing.assert_allclose(tr.outputs, out.detach().numpy(), atol=1e-13)
    g = k.backward(tr, dy)
    np.testing.assert_allclose(g["x"], tx.grad.numpy(), atol=1e-12)
    np.testing.assert_allclose(g["y0"], th0.grad.numpy()[0], atol=1e-12)
    np.testing.assert_allclose(g["c0"], tc0.grad.numpy()[0], atol=1e-12)
    np.testing.assert_allclose(np.concatenate([g[f"R_{q}"] for q in "ifzo"]),
                               lstm.weight_hh_l0.grad.numpy(), atol=1e-12)
