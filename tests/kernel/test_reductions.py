"""Row reductions over the hidden units (mean) in the compiled kernels: layer normalisation.

A mean is a phase boundary: the phase that computes its argument writes it into a
scratch row, the row means are made between phases, the later phases read one scalar
per row; the backward makes the means of its deltas (the adjoints of the forward's
means) the same way. Here: the phase structure, the test cells layer_norm (a mean of a
node, nested one level) and mean_nested (means nested inside means, and a mean of the
previous state feeding the carry) through the check, in float32 and at every
instruction-set level, the kernels against their NumPy references, and the shipped
layer-normalised LSTM (lstm_ln; its check and reference agreement run with every shipped
cell in test_kernels.py) against an independent PyTorch autograd implementation.
"""

import subprocess
import sys

import numpy as np
import pytest
from agreement import assert_kernel_equals_reference
from catalog import cell_path

import derive
from derive.check import gradient_check
from derive.kernel import build, emit, isa, runtime
from derive.kernel import plan as kplan
from derive.kernel.plan import Kind, Storage
from derive.printing.text import text

T, B, M, N = 5, 3, 6, 4
CELLS = ["layer_norm", "mean_nested", "ln_highway"]


def test_a_mean_is_a_phase_boundary_between_its_argument_and_its_readers():
    p = kplan.plan(cell_path("layer_norm"))
    computed = [{st.target.name for st in prog.statements} for prog in p.forward]
    # v | mu = mean(v), d = v - mu | s = sqrt(mean(d²) + ε), n, y
    assert p.phases == 3
    assert "v" in computed[0] and {"mu", "d"} <= computed[1] and {"s", "n", "y"} <= computed[2]
    forward = [(text(r.expr), r.phase) for r in p.reductions if not r.backward]
    assert forward == [("v", 0), ("d**2", 1)]
    # the backward: mean(δs) after its first phase, mean(δmu) (which reads it) after its second
    backward = [(text(r.expr), r.phase) for r in p.reductions if r.backward]
    assert backward == [("ds", 0), ("dmu", 1)] and len(p.backward) == 3
    for k, program in enumerate(p.forward + p.backward):
        means = [p.reduction(s) for s in program.reads if p.refs[s].kind is Kind.MEAN]
        first = k < p.phases                      # a forward phase, else backward k - K
        phase = k if first else k - p.phases
        assert all(r.backward != first and r.phase < phase for r in means)
    assert {b.field for b in p.arrays(Storage.MEANS)} == {"R_f0", "R_f1", "R_b0", "R_b1"}
    src = emit.kernel_source(cell_path("layer_norm"))
    assert src.count("derive_row_means_f64(nb") == 4 and "_forward2_step_f64" in src
    text_plan = kplan.describe(p)
    assert "mean_f1 = mean(d**2) over the N entries of a row" in text_plan


def test_the_plan_command_lists_the_reductions():
    run = subprocess.run([sys.executable, "-m", "derive", "plan", "lstm_ln"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "reductions (row means over the hidden units" in run.stdout
    assert "mean(a_z) over the N entries of a row" in run.stdout


@pytest.mark.parametrize("backend", ["cython", "numpy"])
@pytest.mark.parametrize("name", CELLS)
def test_cells_with_means_pass_the_check(name, backend):
    report = gradient_check(cell_path(name), backend=backend, dtype="float64")
    assert report.passed, report.table()


@pytest.mark.parametrize("name", CELLS)
def test_their_float32_kernels_agree_within_rounding(name):
    report = gradient_check(cell_path(name), backend="cython", dtype="float32")
    assert report.passed, report.table()


@pytest.mark.parametrize("name", CELLS)
def test_their_kernels_equal_their_references_to_1e12(rng, name):
    k = derive.load_kernel(cell_path(name), "float64", backend="cython")
    r = derive.load_kernel(cell_path(name), "float64", backend="numpy")
    assert_kernel_equals_reference(k, r, rng, T, B, M, N, seed=3)


@pytest.mark.parametrize("name", ["layer_norm", "lstm_ln"])
def test_threads_make_the_means_of_their_own_rows(rng, monkeypatch, name):
    """Three threads on 7 batch rows (real threads for small shapes): each makes the
    means of its rows from its offset b0, between its own phases, without a barrier."""
    monkeypatch.setattr(runtime, "SERIAL_BELOW", 0)
    path = cell_path(name) if name in CELLS else name
    k = derive.load_kernel(path, "float64", backend="cython")
    r = derive.load_kernel(path, "float64", backend="numpy")
    monkeypatch.setattr(k, "threads", 3)
    assert_kernel_equals_reference(k, r, rng, T, 7, M, N, seed=3)


@pytest.mark.parametrize("level", isa.LEVELS, ids=isa.NAMES)
def test_every_level_makes_the_same_means(level, monkeypatch, rng):
    """The row means' vectorised sum at each instruction-set level this CPU runs (the
    others must still compile): equal to the reference, float64 and float32 checks."""
    path = cell_path("layer_norm")
    if level not in isa.supported():
        assert build.build(path, level=level, quiet=True).exists()
        return
    monkeypatch.setenv(isa.ENV, level.name)
    k = derive.load_kernel(path, "float64", backend="cython")
    assert k.isa == level.name
    r = derive.load_kernel(path, "float64", backend="numpy")
    assert_kernel_equals_reference(k, r, rng, 4, 3, 5, 37, seed=3)   # N: not a lane multiple
    for dtype in ("float64", "float32"):
        report = gradient_check(path, backend="cython", dtype=dtype)
        assert report.passed, report.table()


@pytest.mark.slow
@pytest.mark.parametrize("level", isa.LEVELS, ids=isa.NAMES)
def test_every_level_runs_the_layer_normalised_lstm(level, monkeypatch, rng):
    if level not in isa.supported():
        assert build.build("lstm_ln", level=level, quiet=True).exists()
        return
    monkeypatch.setenv(isa.ENV, level.name)
    k = derive.load_kernel("lstm_ln", "float64", backend="cython")
    r = derive.load_kernel("lstm_ln", "float64", backend="numpy")
    assert_kernel_equals_reference(k, r, rng, 4, 3, 5, 37, seed=3)
    for dtype in ("float64", "float32"):
        report = gradient_check("lstm_ln", backend="cython", dtype=dtype)
        assert report.passed, report.table()


# --- the layer-normalised LSTM against PyTorch autograd (float64) ---------------------

def _torch_lstm_ln(torch, p, x, y0, c0, dy, eps=1e-5):
    """Outputs and gradients of Σ dy ⊙ y for Ba et al.'s LSTM in TensorFlow's per-gate
    form: each gate LN(W x + R y) with torch's own layer_norm, y = o ⊙ tanh(LN(c))."""
    F = torch.nn.functional
    n = y0.shape[1]
    tp = {k: torch.from_numpy(np.array(v)).requires_grad_(True) for k, v in p.items()}
    tx = torch.from_numpy(x).requires_grad_(True)
    ty0 = torch.from_numpy(y0).requires_grad_(True)
    tc0 = torch.from_numpy(c0).requires_grad_(True)

    def gate(g, y, t):
        a = tx[t] @ tp[f"W_{g}"].T + y @ tp[f"R_{g}"].T
        return F.layer_norm(a, (n,), tp[f"g_{g}"], tp[f"b_{g}"], eps)

    y, c, out = ty0, tc0, []
    for t in range(x.shape[0]):
        z = torch.tanh(gate("z", y, t))
        i, f, o = (torch.sigmoid(gate(g, y, t)) for g in "ifo")
        c = z * i + c * f
        y = o * torch.tanh(F.layer_norm(c, (n,), tp["g_c"], tp["b_c"], eps))
        out.append(y)
    out = torch.stack(out)
    (out * torch.from_numpy(dy)).sum().backward()
    grads = {k: v.grad.numpy() for k, v in tp.items()}
    grads.update(x=tx.grad.numpy(), y0=ty0.grad.numpy(), c0=tc0.grad.numpy())
    return out.detach().numpy(), grads


@pytest.mark.parametrize("backend", ["cython", "numpy"])
def test_the_layer_normalised_lstm_equals_torch_autograd(rng, backend):
    torch = pytest.importorskip("torch")
    n = 5
    k = derive.load_kernel("lstm_ln", "float64", backend=backend)
    params = k.init_params(M, n, seed=5)
    for name, v in params.items():     # gains near 1, every parameter moved off its init
        one = 1.0 if name.startswith("g_") else 0.0
        params[name] = one + v + 0.3 * rng.standard_normal(v.shape)
    x = rng.standard_normal((T, B, M))
    y0, c0 = rng.standard_normal((B, n)), rng.standard_normal((B, n))
    dy = rng.standard_normal((T, B, n))
    out, want = _torch_lstm_ln(torch, params, x, y0, c0, dy)
    tr = k.forward(x, params, {"y": y0, "c": c0})
    np.testing.assert_allclose(tr.outputs, out, rtol=0, atol=1e-10)
    got = k.backward(tr, dy)
    assert set(got) == set(want)
    for name in want:
        assert np.max(np.abs(want[name])) > 1e-3, name         # every gradient is exercised
        np.testing.assert_allclose(got[name], want[name], rtol=0, atol=1e-10, err_msg=name)
