"""relu, softplus and sqrt in compiled kernels (equal to their NumPy reference: in
test_kernels.py, with every shipped cell); the IndRNN kernel against PyTorch autograd;
the CLI's check of a cell with a reduction (mean; the reductions: test_reductions.py)."""

import subprocess
import sys

import numpy as np
import pytest
from catalog import cell_path

import derive
from derive.check import gradient_check

T, B, M, N = 5, 3, 6, 4
FUNCTIONS = cell_path("functions")


@pytest.mark.parametrize("backend", ["cython", "numpy"])
def test_a_cell_with_relu_softplus_and_sqrt_passes_the_check(backend):
    report = gradient_check(FUNCTIONS, backend=backend, dtype="float64")
    assert report.passed, report.table()


def test_its_float32_kernel_agrees_within_rounding():
    report = gradient_check(FUNCTIONS, backend="cython", dtype="float32")
    assert report.passed, report.table()


def test_indrnn_matches_pytorch_autograd(rng):
    """h = relu(W x + u * h[t-1] + b) in a few lines of torch (float64, 1e-10)."""
    torch = pytest.importorskip("torch")
    k = derive.load_kernel("indrnn", "float64")
    params = k.init_params(M, N, seed=3)
    params["u"] = rng.uniform(0.5, 1.0, N)       # a recurrence that matters
    x = rng.standard_normal((T, B, M))
    h0 = rng.standard_normal((B, N))
    dh = rng.standard_normal((T, B, N))
    tp = {n: torch.from_numpy(np.array(v)).requires_grad_(True) for n, v in params.items()}
    tx = torch.from_numpy(x).requires_grad_(True)
    th0 = torch.from_numpy(h0).requires_grad_(True)
    h, outs = th0, []
    for t in range(T):
        h = torch.relu(tx[t] @ tp["W"].T + tp["u"] * h + tp["b"])
        outs.append(h)
    out = torch.stack(outs)
    out.backward(torch.from_numpy(dh))
    tr = k.forward(x, params, {"h": h0})
    np.testing.assert_allclose(tr.outputs, out.detach().numpy(), rtol=0, atol=1e-10)
    assert 0 < (tr.outputs > 0).mean() < 1             # both sides of the kink are used
    g = k.backward(tr, dh)
    np.testing.assert_allclose(g["x"], tx.grad.numpy(), rtol=0, atol=1e-10)
    np.testing.assert_allclose(g["h0"], th0.grad.numpy(), rtol=0, atol=1e-10)
    for n in params:
        np.testing.assert_allclose(g[n], tp[n].grad.numpy(), rtol=0, atol=1e-10)


def test_the_cli_checks_a_cell_with_a_reduction():
    """mean(v) compiles (it was refused before the kernels made row reductions; the
    reductions themselves: test_reductions.py)."""
    run = subprocess.run([sys.executable, "-m", "derive", "check", cell_path("layer_norm")],
                         capture_output=True, text=True)
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr
    assert run.stdout.startswith("passed: 7 gradients of layer_norm (cython, float64)")


@pytest.mark.parametrize("backend", ["cython", "numpy"])
def test_nan_propagates_through_relu_and_its_derivative(backend, rng):
    k = derive.load_kernel("indrnn", "float64", backend=backend)
    params = k.init_params(M, N, seed=2)
    x = rng.standard_normal((T, B, M))
    x[1, 0, 2] = np.nan
    tr = k.forward(x, params, {"h": rng.standard_normal((B, N))})
    assert np.isnan(tr.outputs[1:, 0]).all() and not np.isnan(tr.outputs[:, 1:]).any()
    g = k.backward(tr, rng.standard_normal((T, B, N)))
    assert np.isnan(g["W"]).all() and np.isnan(g["x"][:2, 0]).any()
