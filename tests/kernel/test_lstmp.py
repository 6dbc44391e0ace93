"""LSTMP (derive/cells/lstmp.toml): kernels with a second node size P.

Its y (the output and recurrent state) has P entries, its gates, c and m have N; the
step runs as two phases of one size each (N: the gates, c and m; P: y = W_rm m). Like
every shipped cell it passes the finite-difference checks and equals its reference in
tests/kernel/test_kernels.py; here, with M ≠ N ≠ P: the compiled kernel and the NumPy
reference against torch.nn.LSTM(M, N, proj_size=P) (float64, outputs and every
gradient), the reference at sizes where threads split the batch, the sizes of the
runtime's arrays, and the size mixes a kernel still refuses.
"""

import numpy as np
import pytest
from agreement import assert_kernel_equals_reference, random_call
from lstmp_torch import torch_lstmp

import derive
from derive.cell.catalog import resolve
from derive.errors import UserError
from derive.kernel import plan as kplan
from derive.kernel.plan import Storage
from derive.kernel.runtime import Kernel

T, B, M, N, P = 5, 6, 7, 9, 4


@pytest.mark.parametrize("backend", ["cython", "numpy"])
def test_lstmp_kernel_equals_torch_lstm_with_proj_size(backend, rng):
    torch = pytest.importorskip("torch")
    k = derive.load_kernel("lstmp", "float64", backend=backend)
    k.threads = 2
    params, x, state0, dy = random_call(k, rng, T, B, M, N, seed=11, P=P)
    tr = k.forward(x, params, state0)
    g = k.backward(tr, dy)
    out, want = torch_lstmp(torch, params, x, state0["y"], state0["c"], dy)
    assert tr.outputs.shape == (T, B, P)
    np.testing.assert_allclose(tr.outputs, out, rtol=0, atol=1e-10)
    assert set(g) == set(want)
    for name, value in want.items():
        np.testing.assert_allclose(g[name], value, rtol=0, atol=1e-10, err_msg=name)


def test_lstmp_kernel_equals_its_reference_on_two_threads(rng):
    k = derive.load_kernel("lstmp", "float64", backend="cython")
    r = derive.load_kernel("lstmp", "float64", backend="numpy")
    k.threads = 2
    # T·B·N·(N+M) above SERIAL_BELOW: the batch rows are split between the threads
    assert_kernel_equals_reference(k, r, rng, 4, 33, 70, 96, seed=5, P=40)


def test_the_plan_puts_p_sized_vectors_in_p_wide_arrays():
    p = kplan.plan("lstmp")
    assert p.phases == 2
    assert {b.field: b.shape for b in p.buffers if "P" in "".join(b.shape)} == {
        "W_y": ("4 * N", "P"), "W_m": ("P", "N"), "S_y": ("T + 1", "B", "P"),
        "G_m": ("B", "P"), "dY_y": ("T", "B", "P"), "dG1": ("T", "B", "P"),
        "C_y": ("B", "P"), "dW_y": ("4 * N", "P"), "dW_m": ("P", "N")}
    assert p.layout()["sizes"] == {"y": "P"}
    assert p.buffer(Storage.ADJOINT, "m").shape == ("B", "N")


def test_runtime_takes_p_as_proj_size_and_shapes_every_array_by_its_size(rng):
    k = derive.load_kernel("lstmp", "float64", backend="numpy")
    with pytest.raises(ValueError, match="proj_size .* is required"):
        k.init_params(M, N)
    with pytest.raises(ValueError, match="not a size of this cell"):
        derive.load_kernel("lstm", "float64", backend="numpy").init_params(M, N, proj_size=P)
    params = k.init_params(M, N, seed=1, proj_size=P)
    assert params["W_rm"].shape == (P, N) and params["R_z"].shape == (N, P)
    x = rng.standard_normal((T, B, M))
    tr = k.forward(x, params, {"y": rng.standard_normal((B, P))})
    assert tr.states["y"].shape == (B, P) and tr.states["c"].shape == (B, N)
    with pytest.raises(ValueError, match=r"state0\['y'\] must have shape \(6, 4\) \(B, P\)"):
        k.forward(x, params, {"y": np.zeros((B, N))})
    with pytest.raises(ValueError, match=r"must have shape \(5, 6, 4\) \(T, B, P\)"):
        k.backward(tr, np.zeros((T, B, N)))
    g = k.backward(tr, rng.standard_normal((T, B, P)), d_finals={"c": np.ones((B, N))})
    assert g["y0"].shape == (B, P) and g["c0"].shape == (B, N)
    bad = dict(params, W_rm=np.zeros((P + 1, N)))
    with pytest.raises(ValueError, match=r"params\['R_z'\] must have shape \(9, 5\) \(N, "
                                         r"P\) with M=7 \(from x\) and N=9 \(from W_z\) and "
                                         r"P=5 \(from W_rm\), not \(9, 4\)"):
        k.forward(x, bad)
    assert isinstance(k, Kernel) and k.size("y") == "P" and k.size("c") == "N"


def _variant(old: str, new: str, extra: str = "") -> str:
    text = resolve("lstmp").text
    assert old in text
    return text.replace(old, new).replace("[nodes]", f"{extra}\n[nodes]")


@pytest.mark.parametrize("old, new, extra, message", [
    ('y     = "W_rm @ m"', 'y     = "W_rm @ m + b_y"', 'b_y = ["P"]',
     "vector parameter 'b_y' has size P"),
    ('y     = "W_rm @ m"', 'y     = "W_rm @ m + q"\nq = "W_q @ x"', 'W_q = ["P", "M"]',
     "are computed in the same phase; a phase has nodes of one size"),
])
def test_a_kernel_refuses_what_mixes_sizes_in_one_line(tmp_path, old, new, extra, message):
    path = tmp_path / "mixed.toml"
    path.write_text(_variant(old, new, extra))
    with pytest.raises(UserError, match=message) as info:
        kplan.plan(str(path))
    assert "\n" not in str(info.value)
