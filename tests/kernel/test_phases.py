"""Multi-phase cells: a node of the same step multiplied by a matrix.

The plan splits such a step into phases; the compiled kernel runs them with a per-step
product between (the backward: the transposed products in reverse). Shipped two-phase
cells (gru_rb, mgu) are also checked by tests/kernel/test_kernels.py like every
shipped cell; here: the phase structure, a cell file that is not shipped, and the
reset-before GRU and MGU against independent PyTorch autograd implementations.
"""

import numpy as np
import pytest
from agreement import assert_kernel_equals_reference
from catalog import cell_path

import derive
from derive.cell import symbols as S
from derive.check import gradient_check
from derive.errors import UserError
from derive.kernel import emit
from derive.kernel import plan as kplan
from derive.kernel.plan import Kind, Role, Storage

T, B, M, N = 5, 3, 6, 4


def test_a_cell_has_several_phases_exactly_when_it_projects_a_node_of_its_step_or_averages(
        cell_name):
    p = kplan.plan(cell_name)
    same_step = any(pr.shift == 0 and pr.operand in p.cell.nodes
                    for n in p.cell.nodes.values() for pr in n.projections)
    averages = any(n.elementwise.has(S.Mean) for n in p.cell.nodes.values())
    assert same_step == any(o.role is Role.NODE for o in p.operands)
    assert averages == bool(p.reductions)
    assert (p.phases > 1) == (same_step or averages)
    if same_step or averages:
        return
    assert len(p.backward) == 1
    assert not p.arrays(Storage.ADJOINT)
    assert all(o.role is not Role.NODE for o in p.operands)
    src = emit.kernel_source(cell_name)
    assert "_forward_step_f32" in src and "_forward0_step" not in src


def test_the_reset_before_gru_has_two_phases_around_its_product():
    p = kplan.plan("gru_rb")
    assert p.phases == 2
    s = p.operand("s")
    assert (s.role, s.phase, s.matrices) == (Role.NODE, 0, ("R_h",))
    assert "s" in {st.name for st in p.stored}          # its weight gradient reads it
    # the forward: gates and s in phase 0, the candidate and the state in phase 1
    computed = [{st.target.name for st in prog.statements} for prog in p.forward]
    assert {"r", "u", "s"} <= computed[0] and {"h_bar", "y"} <= computed[1]
    # the backward: phase 1 first (δh_bar into dG), then phase 0 reads Σ R_hᵀ δh_bar
    adjoint = {sym for prog in p.backward for sym in prog.reads
               if p.refs[sym].kind is Kind.ADJOINT}
    assert {p.refs[a].name for a in adjoint} == {"s"}
    assert not any(p.refs[a].kind is Kind.ADJOINT for a in p.backward[0].reads)
    src = emit.kernel_source("gru_rb")
    assert "_forward0_step_f64" in src and "_backward1_step_f64" in src
    assert src.count("derive_small_gemm_f64(") >= 4  # y[t-1], s[t]; carry of y, adjoint of s


def test_an_unshipped_three_phase_cell_compiles_on_first_use_and_passes_the_check():
    path = cell_path("three_phase")
    assert kplan.plan(path).phases == 3
    for backend in ("cython", "numpy"):
        report = gradient_check(path, backend=backend, dtype="float64")
        assert report.passed, report.table()
    report = gradient_check(path, backend="cython", dtype="float32")
    assert report.passed, report.table()


@pytest.mark.parametrize("name", ["three_phase", "same_step_product"])
def test_unshipped_multi_phase_kernel_equals_its_reference_to_1e12(rng, name):
    k = derive.load_kernel(cell_path(name), "float64", backend="cython")
    r = derive.load_kernel(cell_path(name), "float64", backend="numpy")
    assert_kernel_equals_reference(k, r, rng, T, B, M, N, seed=3)


def test_a_vector_multiplied_at_t_and_at_t_minus_1_is_refused_naming_the_node():
    path = cell_path("operand_twice")
    derive.derive(path)
    with pytest.raises(UserError, match="node 'q' multiplies U by 'y' of the same step"):
        kplan.plan(path)


# --- independent PyTorch autograd implementations (float64) ---------------------------

def _torch_run(torch, step, params, x, state0, dy):
    """Outputs and gradients of Σ dy · y over a loop of `step` (torch autograd)."""
    tp = {n: torch.from_numpy(v.copy()).requires_grad_(True) for n, v in params.items()}
    tx = torch.from_numpy(x).requires_grad_(True)
    y0 = torch.from_numpy(state0["y"]).requires_grad_(True)
    y, out = y0, []
    for t in range(x.shape[0]):
        y = step(torch, tp, tx[t], y)
        out.append(y)
    out = torch.stack(out)
    (out * torch.from_numpy(dy)).sum().backward()
    grads = {n: v.grad.numpy() for n, v in tp.items()}
    grads.update(x=tx.grad.numpy(), y0=y0.grad.numpy())
    return out.detach().numpy(), grads


def _gru_reset_before(torch, p, x, y):
    """Cho et al. 2014 (arXiv:1406.1078 v3), Keras reset_after=False."""
    lin = lambda W, v: v @ p[W].T
    r = torch.sigmoid(lin("W_r", x) + lin("R_r", y) + p["b_r"])
    u = torch.sigmoid(lin("W_u", x) + lin("R_u", y) + p["b_u"])
    h = torch.tanh(lin("W_h", x) + lin("R_h", r * y) + p["b_h"])
    return u * y + (1 - u) * h


def _mgu(torch, p, x, y):
    """Zhou et al. 2016 (arXiv:1603.09420), the minimal gated unit."""
    lin = lambda W, v: v @ p[W].T
    f = torch.sigmoid(lin("W_f", x) + lin("R_f", y) + p["b_f"])
    h = torch.tanh(lin("W_h", x) + lin("R_h", f * y) + p["b_h"])
    return (1 - f) * y + f * h


@pytest.mark.parametrize("cell, step", [("gru_rb", _gru_reset_before), ("mgu", _mgu)])
def test_two_phase_cells_equal_an_independent_torch_autograd_implementation(rng, cell, step):
    torch = pytest.importorskip("torch")
    k = derive.load_kernel(cell, "float64")
    params = k.init_params(M, N, seed=5)
    params = {n: v + 0.3 * rng.standard_normal(v.shape) for n, v in params.items()}
    x = rng.standard_normal((T, B, M))
    state0 = {"y": rng.standard_normal((B, N))}
    dy = rng.standard_normal((T, B, N))
    out, want = _torch_run(torch, step, params, x, state0, dy)
    tr = k.forward(x, params, state0)
    np.testing.assert_allclose(tr.outputs, out, rtol=0, atol=1e-10)
    got = k.backward(tr, dy)
    assert set(got) == set(want)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=0, atol=1e-10, err_msg=name)
