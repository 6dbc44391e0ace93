"""Cells with several inputs and cells that use an input element-wise, on the kernel path.

The test cells: two_inputs (x and u, each through its own matrix), input_elementwise
(W @ x + x * b: both), input_only_elementwise (R @ y[t-1] + x: no matrix multiplies x),
no_matrices (no matrix at all: no operand, no GEMM) and sru (Lei et al. 2018: three projections of x and the highway term (1 - r) * x).
Each passes the finite-difference check of its compiled kernel and of its NumPy
reference (float64), the float32 rounding check, and the kernel equals the reference to
1e-12; the SRU equals an independent PyTorch autograd implementation written here.
"""

import numpy as np
import pytest
from agreement import assert_kernel_equals_reference, random_call
from catalog import cell_path

import derive
from derive.check import gradient_check
from derive.kernel import plan as rewrite
from derive.kernel.plan import Role, Storage

CELLS = ["two_inputs", "input_elementwise", "input_only_elementwise", "no_matrices", "sru"]
T, B, M, N = 5, 3, 6, 4


# --- the plan --------------------------------------------------------------------------------

def test_each_input_is_an_operand_with_its_own_array_and_size():
    p = rewrite.plan(cell_path("two_inputs"))
    assert [(o.name, o.role, o.size) for o in p.operands] == [
        ("x", Role.INPUT, "M_x"), ("u", Role.INPUT, "M_u"), ("y", Role.STATE, "N")]
    assert p.inputs == ("x", "u")
    assert [b.shape for b in p.arrays(Storage.INPUT)] == [("T", "B", "M_x"), ("T", "B", "M_u")]
    assert [b.field for b in p.arrays(Storage.INPUT_GRADIENT)] == ["dX_x", "dX_u"]
    # used only through matrices: no step reads an input or writes its gradient
    assert not any(w.buffer.storage is Storage.INPUT_GRADIENT for w in p.backward[0].writes)


@pytest.mark.parametrize("name, operand", [("input_elementwise", True), ("sru", True),
                                           ("input_only_elementwise", False)])
def test_an_input_used_element_wise_is_read_by_the_steps_and_gets_its_part_of_dx(name,
                                                                                 operand):
    p = rewrite.plan(cell_path(name))
    assert p.input_size("x") == "N"
    assert any(o.name == "x" for o in p.operands) == operand
    reads = {p.refs[s] for prog in p.forward for s in prog.reads}
    assert rewrite.Ref(rewrite.Kind.INPUT, "x") in reads
    writes = [w for prog in p.backward for w in prog.writes
              if w.buffer.storage is Storage.INPUT_GRADIENT]
    assert [w.buffer.name for w in writes] == ["x"]
    assert "x" not in {s.name for s in p.stored}          # x is an argument, not stored


def test_the_gemm_of_an_input_used_element_wise_too_adds_to_the_steps_part():
    from derive.kernel.lower import lower
    finish = {t.gradient: t.call.args for t in lower(rewrite.plan(cell_path("sru"))).finish}
    assert finish[("dX", 0)][10] == "1"                   # beta: dX += dG · W_x
    finish = {t.gradient: t.call.args
              for t in lower(rewrite.plan(cell_path("two_inputs"))).finish}
    assert finish[("dX", 0)][10] == "0" and finish[("dX", 1)][10] == "0"
    finish = lower(rewrite.plan(cell_path("input_only_elementwise"))).finish
    assert ("dX", 0) not in {t.gradient for t in finish}  # no matrix: no GEMM


# --- the gradients ---------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["cython", "numpy", "derivation"])
@pytest.mark.parametrize("name", CELLS)
def test_every_gradient_passes_finite_differences(name, backend):
    report = gradient_check(cell_path(name), backend=backend)
    assert report.passed, report.table()
    inputs = derive.load_cell(cell_path(name)).inputs
    assert set(inputs) <= {r.name for r in report.rows}
    for r in report.rows:        # every gradient is exercised, not all but zero
        assert r.scale > 1e-3, r.name


@pytest.mark.parametrize("name", CELLS)
def test_float32_kernels_agree_with_float64_within_rounding(name):
    report = gradient_check(cell_path(name), dtype="float32")
    assert report.passed, report.table()


@pytest.mark.parametrize("name", CELLS)
def test_the_kernel_equals_its_numpy_reference(rng, name):
    k = derive.load_kernel(cell_path(name), "float64")
    r = derive.load_kernel(cell_path(name), "float64", backend="numpy")
    assert_kernel_equals_reference(k, r, rng, T, B, M, N, seed=7)


@pytest.mark.parametrize("name", ["two_inputs", "sru"])
def test_the_kernel_on_two_threads_equals_its_numpy_reference(rng, name):
    k = derive.load_kernel(cell_path(name), "float64")
    r = derive.load_kernel(cell_path(name), "float64", backend="numpy")
    k.threads = 2        # a call this large is split by batch rows between the threads
    assert_kernel_equals_reference(k, r, rng, 16, 8, 64, 64, seed=3)


@pytest.mark.parametrize("backend", ["cython", "numpy"])
def test_inputs_of_different_sizes_get_their_own_gradients(rng, backend):
    k = derive.load_kernel(cell_path("two_inputs"), "float64", backend=backend)
    params, x, state0, dy = random_call(k, rng, T, B, M, N)
    assert {n: a.shape[2] for n, a in x.items()} == {"x": M, "u": M + 1}
    assert params["U"].shape == (N, M + 1)
    g = k.backward(k.forward(x, params, state0), dy)
    assert g["x"].shape == (T, B, M) and g["u"].shape == (T, B, M + 1)
    # δu = Uᵀ δh and δx = Wᵀ δh share δh: the gradients differ by their matrices only
    dh = np.linalg.lstsq(params["W"].T, g["x"].reshape(-1, M).T, rcond=None)[0]
    np.testing.assert_allclose((params["U"].T @ dh).T.reshape(T, B, M + 1), g["u"],
                               rtol=0, atol=1e-12)


# --- the calling convention ------------------------------------------------------------------

def _arrays(k, tr, dy, fill=0.0):
    """The arguments of the module's backward for a trace, outputs pre-filled with `fill`."""
    Tt, Bb = tr.X[0].shape[:2]
    dims = tr.dims
    dG = tuple(np.empty((Tt, Bb, len(g["nodes"]) * dims["N"])) for g in k.groups)
    C = tuple(np.empty((Bb, dims["N"])) for _ in k.states)
    acc = tuple(np.full(dims["N"], fill) for _ in k.vectors)
    dW = tuple(np.full(w.shape, fill) for w in tr.W)
    dX = tuple(np.full(a.shape, fill) for a in tr.X)
    return tr.X, tr.W, tr.V, tr.S, tr.A, (dy,), dG, C, acc, dW, dX


@pytest.mark.parametrize("backend", ["cython", "numpy"])
@pytest.mark.parametrize("name", ["sru", "input_only_elementwise", "two_inputs"])
def test_an_unwanted_input_gradient_is_left_untouched(rng, name, backend):
    """want_dX per input: a skipped dX keeps its contents (the steps' element-wise part
    is not written either); the wanted ones equal the full backward's."""
    k = derive.load_kernel(cell_path(name), "float64", backend=backend)
    params, x, state0, dy = random_call(k, rng, T, B, M, N)
    tr = k.forward(x, params, state0)
    full = _arrays(k, tr, dy)
    k.module.backward(*full, 1)
    n = len(k.inputs)
    for flags in {(False,) * n, (True,) + (False,) * (n - 1), (False,) + (True,) * (n - 1)}:
        part = _arrays(k, tr, dy, fill=7.0)
        k.module.backward(*part, 1, None, flags)
        for flag, got, want in zip(flags, part[10], full[10]):
            if flag:
                np.testing.assert_array_equal(got, want)
            else:
                assert np.all(got == 7.0)


def test_a_one_input_cell_takes_an_array_or_a_dict(rng):
    k = derive.load_kernel(cell_path("sru"), "float64")
    params, x, state0, dy = random_call(k, rng, T, B, M, N)
    a, b = k.forward(x, params, state0), k.forward({"x": x}, params, state0)
    np.testing.assert_array_equal(a.outputs, b.outputs)
    assert set(k.backward(a, dy)) == set(params) | {"x", "c0"}


@pytest.mark.parametrize("mutate, match", [
    (lambda a: a.update(x=a["x"]["x"]), r"x must be a dict \{input: \(T, B, size\) array\}: "
                                         r"two has 2 inputs \(x, u\)"),
    (lambda a: a["x"].pop("u"), r"x must hold exactly the inputs of two \(x, u\) "
                                r"\(missing: u; unknown: -\)"),
    (lambda a: a["x"].update(z=a["x"]["x"]), r"unknown: z"),
    (lambda a: a["x"].update(u=a["x"]["u"][:, :2]),
     r"x\['u'\] must have shape \(5, 3, 7\) \(T, B, M_u\)"),
    (lambda a: a["x"].update(u=a["x"]["u"][..., :2]),
     r"params\['U'\] must have shape \(4, 2\) \(N, M_u\) .*M_u=2 \(from u\)"),
    (lambda a: a["x"].update(u=a["x"]["u"][0]), r"x\['u'\] must have shape \(T, B, M_u\) "
                                                r"\(3 dimensions\)"),
    (lambda a: a["x"].update(u=a["x"]["u"].astype(np.float32)), r"x\['u'\] must have dtype"),
    (lambda a: a["x"].update(u=list(a["x"]["u"])), r"x\['u'\] must be a numpy array"),
])
def test_bad_inputs_name_the_input(rng, mutate, match):
    k = derive.load_kernel(cell_path("two_inputs"), "float64")
    params, x, state0, _dy = random_call(k, rng, T, B, M, N)
    args = {"x": dict(x)}
    mutate(args)
    with pytest.raises(ValueError, match=match):
        k.forward(args["x"], params, state0)


def test_init_params_takes_each_inputs_size():
    k = derive.load_kernel(cell_path("two_inputs"), "float64", backend="numpy")
    p = k.init_params({"x": 3, "u": 8}, N)
    assert p["W"].shape == (N, 3) and p["U"].shape == (N, 8) and p["R"].shape == (N, N)
    assert k.init_params(5, N)["U"].shape == (N, 5)         # an int: every input
    with pytest.raises(ValueError, match=r"input_size must give the size of each input of "
                                         r"two \(x, u\): missing u"):
        k.init_params({"x": 3}, N)
    with pytest.raises(ValueError, match=r"unknown v"):
        k.init_params({"x": 3, "u": 3, "v": 3}, N)
    with pytest.raises(ValueError, match=r"input_size\['u'\] must be a positive integer"):
        k.init_params({"x": 3, "u": 0}, N)
    e = derive.load_kernel(cell_path("input_elementwise"), "float64", backend="numpy")
    assert e.init_params(N, N)["W"].shape == (N, N)
    with pytest.raises(ValueError, match=r"input 'x' of odd is used element-wise: its size "
                                         r"is N \(hidden_size=4\), not input_size=6"):
        e.init_params(M, N)


def test_an_element_wise_input_must_have_its_nodes_size(rng):
    k = derive.load_kernel(cell_path("input_only_elementwise"), "float64", backend="numpy")
    params = k.init_params(N, N)
    with pytest.raises(ValueError, match=r"x must have shape \(5, 3, 4\) \(T, B, N\) with "
                                         r"N=4 \(from R\)"):
        k.forward(rng.standard_normal((T, B, N + 1)), params)


# --- an independent oracle: the SRU in PyTorch autograd ----------------------------------------

def torch_sru(torch, params, x, c0, dh):
    """h over the sequence and every gradient of Σ dh ⊙ h, by PyTorch autograd on the
    SRU's equations (Lei et al. 2018, eqs. 1-4), float64."""
    p = {n: torch.tensor(v, requires_grad=True) for n, v in params.items()}
    X = torch.tensor(x, requires_grad=True)
    C0 = torch.tensor(c0, requires_grad=True)
    c, hs = C0, []
    for t in range(x.shape[0]):
        f = torch.sigmoid(X[t] @ p["W_f"].T + p["v_f"] * c + p["b_f"])
        r = torch.sigmoid(X[t] @ p["W_r"].T + p["v_r"] * c + p["b_r"])
        c = f * c + (1 - f) * (X[t] @ p["W"].T)
        hs.append(r * c + (1 - r) * X[t])
    h = torch.stack(hs)
    (h * torch.tensor(dh)).sum().backward()
    grads = {n: v.grad.numpy() for n, v in p.items()}
    return h.detach().numpy(), dict(grads, x=X.grad.numpy(), c0=C0.grad.numpy())


@pytest.mark.parametrize("backend", ["cython", "numpy"])
def test_the_sru_kernel_equals_pytorch_autograd(rng, backend):
    torch = pytest.importorskip("torch")
    k = derive.load_kernel(cell_path("sru"), "float64", backend=backend)
    params, x, state0, dy = random_call(k, rng, T, B, M, N)
    h, want = torch_sru(torch, params, x, state0["c"], dy)
    tr = k.forward(x, params, state0)
    np.testing.assert_allclose(tr.outputs, h, rtol=0, atol=1e-10)
    g = k.backward(tr, dy)
    assert set(g) == set(want)
    for name, value in want.items():
        np.testing.assert_allclose(g[name], value, rtol=0, atol=1e-10, err_msg=name)


def test_recurrent_runs_the_sru_like_pytorch_autograd(rng):
    torch = pytest.importorskip("torch")
    from derive.torch import Recurrent
    m = Recurrent(cell_path("sru"), N, N).double()
    params = {n: getattr(m, n + "_l0").detach().numpy().copy() for n in m.shapes}
    x = rng.standard_normal((T, B, N))
    c0 = rng.standard_normal((B, N))
    dh = rng.standard_normal((T, B, N))
    h, want = torch_sru(torch, params, x, c0, dh)
    xt = torch.tensor(x, requires_grad=True)
    ct = torch.tensor(c0[None], requires_grad=True)
    out, finals = m(xt, {"c": ct})
    np.testing.assert_allclose(out.detach().numpy(), h, rtol=0, atol=1e-10)
    (out * torch.tensor(dh)).sum().backward()
    np.testing.assert_allclose(xt.grad.numpy(), want["x"], rtol=0, atol=1e-10)
    np.testing.assert_allclose(ct.grad.numpy()[0], want["c0"], rtol=0, atol=1e-10)
    for name in params:
        np.testing.assert_allclose(getattr(m, name + "_l0").grad.numpy(), want[name],
                                   rtol=0, atol=1e-10, err_msg=name)


def test_recurrent_refuses_what_it_cannot_run():
    pytest.importorskip("torch")
    from derive.torch import Recurrent
    with pytest.raises(ValueError, match=r"derive.torch runs cells with one input; two has "
                                         r"2 \(x, u\)"):
        Recurrent(cell_path("two_inputs"), M, N)
    with pytest.raises(ValueError, match=r"sru uses its input element-wise, so every layer's "
                                         r"input has its size N=4; layer 0 gets 6"):
        Recurrent(cell_path("sru"), M, N)
    with pytest.raises(ValueError, match=r"layer 1 gets 8"):
        Recurrent(cell_path("sru"), N, N, num_layers=2, bidirectional=True)
    assert Recurrent(cell_path("sru"), N, N, num_layers=2).num_layers == 2



@pytest.mark.parametrize("name, sizes", [("two_inputs", r"x \(size M_x\), u \(size M_u\)"),
                                         ("sru", r"x \(size N\)")])
def test_derive_analyze_refuses_these_cells_in_one_line(name, sizes):
    from derive.analyze import Settings, analyze_cell
    from derive.errors import UserError
    with pytest.raises(UserError, match=f"derive analyze takes cells with one input used "
                                        f"through matrices only; .* has {sizes}"):
        analyze_cell(cell_path(name), Settings(steps=5))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_the_report_names_only_the_sizes_the_cell_has(dtype):
    """A cell whose input is used only element-wise has no size M: the report's sizes
    line says T, B and N (it printed an M=5 that nothing had); lstm's says M too."""
    first = gradient_check(cell_path("input_only_elementwise"), dtype=dtype).table()
    first = first.split("\n")[0]
    assert " T=4 B=3 N=4," in first and "M=" not in first, first
    lstm = gradient_check("lstm", backend="numpy").table().split("\n")[0]
    assert " T=4 B=3 M=5 N=4," in lstm, lstm
