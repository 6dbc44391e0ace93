"""The Kernel API: shapes, views, and clear errors for every kind of bad call."""

import subprocess
import sys

import numpy as np
import pytest

import derive

BACKENDS = ["cython", "numpy"]
T, B, M, N = 4, 3, 5, 6


@pytest.fixture(scope="module", params=BACKENDS)
def kernel(request):
    return derive.load_kernel("lstm", dtype="float64", backend=request.param)


def problem(kernel, rng, dtype=np.float64):
    params = kernel.init_params(M, N, seed=3)
    x = rng.standard_normal((T, B, M)).astype(dtype)
    state0 = {s: rng.standard_normal((B, N)).astype(dtype) for s in kernel.states}
    return params, x, state0


def test_api_shapes_and_names(kernel, rng):
    params, x, state0 = problem(kernel, rng)
    assert kernel.backend in BACKENDS and kernel.dtype == np.float64 and kernel.path
    assert {n: p.shape for n, p in params.items()} == {
        **{f"W_{g}": (N, M) for g in "zifo"}, **{f"R_{g}": (N, N) for g in "zifo"},
        **{f"p_{g}": (N,) for g in "ifo"}, **{f"b_{g}": (N,) for g in "zifo"}}
    tr = kernel.forward(x, params, state0)
    assert tr.outputs.shape == (T, B, N)
    assert set(tr.states) == {"y", "c"} and tr.states["c"].shape == (B, N)
    np.testing.assert_array_equal(tr.states["y"], tr.outputs[-1])
    g = kernel.backward(tr, rng.standard_normal((T, B, N)))
    assert set(g) == set(params) | {"x", "y0", "c0"}
    for name, p in params.items():
        assert g[name].shape == p.shape and g[name].dtype == np.float64
    assert g["x"].shape == x.shape and g["c0"].shape == (B, N)


def test_outputs_are_read_only_views(kernel, rng):
    params, x, state0 = problem(kernel, rng)
    tr = kernel.forward(x, params, state0)
    with pytest.raises(ValueError):
        tr.outputs[0, 0, 0] = 1.0


def test_fused_weights_are_the_traces_own_copy(kernel, rng):
    """forward packs the fused weights into its own copy (the trace owns its weights)."""
    params, x, _ = problem(kernel, rng)
    fused = kernel._fused(params, N, M)
    assert fused[0] is not params["W_z"].base and fused[1] is not params["R_o"].base
    np.testing.assert_array_equal(fused[0], params["W_z"].base)
    np.testing.assert_array_equal(fused[1], params["R_o"].base)
    # any other arrays are packed into a copy, with the same result
    copies = {k: v.copy() for k, v in params.items()}
    assert kernel._fused(copies, N, M)[0] is not fused[0]
    a = kernel.forward(x, params).outputs
    b = kernel.forward(x, copies).outputs
    np.testing.assert_array_equal(a, b)


def test_in_place_updates_of_the_views_reach_the_kernel(kernel, rng):
    params, x, _ = problem(kernel, rng)
    before = kernel.forward(x, params).outputs.copy()
    params["W_i"] *= 0.5
    after = kernel.forward(x, params).outputs
    assert not np.allclose(before, after)


def test_default_state_is_zero_and_backward_repeats(kernel, rng):
    params, x, _ = problem(kernel, rng)
    zeros = {s: np.zeros((B, N)) for s in kernel.states}
    np.testing.assert_array_equal(kernel.forward(x, params).outputs,
                                  kernel.forward(x, params, zeros).outputs)
    tr = kernel.forward(x, params)
    dy = rng.standard_normal((T, B, N))
    g1, g2 = kernel.backward(tr, dy), kernel.backward(tr, dy)
    for k in g1:
        np.testing.assert_array_equal(g1[k], g2[k])


def test_nan_propagates_and_never_crashes(kernel, rng):
    params, x, state0 = problem(kernel, rng)
    x[1, 0, 2] = np.nan
    tr = kernel.forward(x, params, state0)
    assert np.isnan(tr.outputs[1:, 0]).all()           # batch row 0 from step 1 on
    assert np.isfinite(tr.outputs[:, 1:]).all()        # the other rows are untouched
    assert np.isfinite(tr.outputs[0]).all()
    dy = rng.standard_normal((T, B, N))
    dy[2, 1, 0] = np.inf
    g = kernel.backward(tr, dy)
    assert np.isnan(g["W_z"]).any()
    params["p_i"][0] = np.nan
    assert np.isnan(kernel.forward(x, params, state0).outputs).any()


@pytest.mark.parametrize("mutate, match", [
    (lambda a: a.update(x=np.zeros((T, B))), r"x must have shape \(T, B, M\)"),
    (lambda a: a.update(x=np.zeros((T, B, M), np.float32)), "x must have dtype float64"),
    (lambda a: a.update(x=np.zeros((T, M, B)).transpose(0, 2, 1)), "x .* C-contiguous"),
    (lambda a: a.update(x=[[[0.0] * M] * B] * T), "x must be a numpy array"),
    (lambda a: a.update(x=np.zeros((0, B, M))), "T, B, M >= 1"),
    (lambda a: a["params"].pop("R_f"), "missing R_f"),
    (lambda a: a["params"].update(W_q=np.zeros((N, M))), "unknown W_q"),
    (lambda a: a["params"].update(R_z=np.zeros((N, N + 1))),
     r"params\['R_z'\] must have shape \(6, 6\) \(N, N\)"),
    (lambda a: a["params"].update(W_o=np.zeros((N, M + 1))),
     r"params\['W_o'\] must have shape \(6, 5\) \(N, M\) .* M=5 \(from x\)"),
    (lambda a: a["params"].update(p_o=np.zeros(N, np.float32)), r"params\['p_o'\] .*dtype"),
    (lambda a: a["params"].update(b_z=np.zeros((2, N))[:, 0]), r"params\['b_z'\] must have"),
    (lambda a: a["params"].update(b_z=np.zeros((N, 2))[:, 0]), r"b_z.* C-contiguous"),
    (lambda a: a.update(params=[1, 2]), "params must be a dict"),
    (lambda a: a.update(state0={"y": np.zeros((B, N + 1))}), r"state0\['y'\] must have shape"),
    (lambda a: a.update(state0={"h": np.zeros((B, N))}), "unknown states h"),
    (lambda a: a.update(state0=np.zeros((B, N))), "state0 must be None or a dict"),
])
def test_bad_forward_calls_name_the_argument(kernel, rng, mutate, match):
    params, x, state0 = problem(kernel, rng)
    args = {"x": x, "params": dict(params), "state0": state0}
    mutate(args)
    with pytest.raises(ValueError, match=match):
        kernel.forward(args["x"], args["params"], args["state0"])


def test_bad_backward_calls_name_the_argument(kernel, rng):
    params, x, state0 = problem(kernel, rng)
    tr = kernel.forward(x, params, state0)
    with pytest.raises(ValueError, match=r"d_outputs must have shape \(4, 3, 6\)"):
        kernel.backward(tr, np.zeros((T, B, N + 1)))
    with pytest.raises(ValueError, match="d_outputs must have dtype float64"):
        kernel.backward(tr, np.zeros((T, B, N), np.float32))
    with pytest.raises(ValueError, match="missing: y"):
        kernel.backward(tr, {"h": np.zeros((T, B, N))})
    with pytest.raises(ValueError, match="trace must be"):
        kernel.backward("trace", np.zeros((T, B, N)))
    other = derive.load_kernel("lstm", "float32", backend=kernel.backend)
    with pytest.raises(ValueError, match="trace must be"):
        other.backward(tr, np.zeros((T, B, N), np.float32))


def test_bad_load_and_init_calls():
    with pytest.raises(ValueError, match="dtype must be float32 or float64"):
        derive.load_kernel("lstm", dtype="int8")
    with pytest.raises(ValueError, match="backend must be one of"):
        derive.load_kernel("lstm", backend="fortran")
    with pytest.raises(derive.UserError, match="did you mean 'lstm'"):
        derive.load_kernel("lstn", backend="numpy")
    k = derive.load_kernel("lstm", backend="numpy")
    for bad in (0, -1, 2.5, True, "4"):
        with pytest.raises(ValueError, match="hidden_size must be a positive integer"):
            k.init_params(3, bad)


def _random_bad_call(rng, kernel, params, x, state0):
    """One random mutation of a valid call (some mutations stay valid)."""
    args = {"x": x, "params": dict(params), "state0": dict(state0)}
    choice = rng.integers(9)
    dtypes = [np.float32, np.float64, np.int32, np.complex128, np.float16, bool, object]
    if choice == 0:
        shape = tuple(int(s) for s in rng.integers(0, 7, size=rng.integers(0, 5)))
        args["x"] = np.zeros(shape, dtype=dtypes[rng.integers(len(dtypes))])
    elif choice == 1:
        name = list(params)[rng.integers(len(params))]
        shape = tuple(int(s) for s in rng.integers(0, 8, size=rng.integers(0, 4)))
        args["params"][name] = np.zeros(shape, dtype=dtypes[rng.integers(len(dtypes))])
    elif choice == 2:
        args["params"].pop(list(params)[rng.integers(len(params))])
    elif choice == 3:
        name = list(params)[rng.integers(len(params))]
        args["params"][name] = [None, 1.0, "W", (1, 2), {}][rng.integers(5)]
    elif choice == 4:
        s = kernel.states[rng.integers(len(kernel.states))]
        shape = tuple(int(v) for v in rng.integers(0, 8, size=rng.integers(0, 4)))
        args["state0"][s] = np.zeros(shape, dtype=dtypes[rng.integers(len(dtypes))])
    elif choice == 5:
        args["x"] = np.asfortranarray(x) if rng.integers(2) else x[:, :, ::2]
    elif choice == 6:
        args["x"] = x.astype(">f8")
    elif choice == 7:
        name = [n for n in params if params[n].ndim == 2][rng.integers(8)]
        args["params"][name] = params[name].T
    else:
        args["state0"] = [None, 3, "y", np.zeros(3)][rng.integers(4)]
    return args


@pytest.mark.parametrize("seed", range(4))
def test_fuzz_random_bad_calls_raise_value_errors(kernel, seed):
    rng = np.random.default_rng(seed)
    params, x, state0 = problem(kernel, rng)
    dy = rng.standard_normal((T, B, N))
    for _ in range(60):
        args = _random_bad_call(rng, kernel, params, x, state0)
        try:
            tr = kernel.forward(args["x"], args["params"], args["state0"])
        except ValueError as exc:
            assert str(exc)
            continue
        kernel.backward(tr, dy if tr.outputs.shape == dy.shape else
                        np.zeros(tr.outputs.shape))


def test_the_compiled_module_itself_rejects_inconsistent_arrays(rng):
    """Calling the extension directly with wrong arrays raises, it does not crash."""
    k = derive.load_kernel("lstm", backend="cython")
    params, x, state0 = problem(k, rng)
    tr = k.forward(x, params, state0)
    mod = k.module
    S = tuple(np.zeros((T + 1, B, N)) for _ in k.states)
    A = tuple(np.zeros((T, B, N)) for _ in k.stored)
    G = (np.zeros((T, B, 4 * N)), np.zeros((B, 4 * N)))
    with pytest.raises(ValueError, match="must have shape"):
        mod.forward(x, tr.W, tr.V, S, A[:-1] + (np.zeros((T, B, N + 1)),), G)
    with pytest.raises(ValueError, match="must hold 2 arrays"):
        mod.forward(x, tr.W[:1], tr.V, S, A, G)
    with pytest.raises(ValueError):
        mod.forward(x, tr.W, tr.V, S, A, (G[0], np.zeros((B, 4 * N), np.float32)))
    with pytest.raises((ValueError, TypeError)):
        mod.forward(x.astype(np.float32), tr.W, tr.V, S, A, G)
    with pytest.raises(ValueError, match="sizes must be at least 1"):
        mod.forward(np.zeros((0, B, M)), tr.W, tr.V, S, A, G)


@pytest.mark.parametrize("cell", ["lstm", "gru", "lstm_fgr"])
def test_thread_counts_agree(rng, cell, monkeypatch):
    """Each thread owns batch rows: any thread count gives the same numbers (to rounding)."""
    monkeypatch.setattr(derive.kernel.runtime, "SERIAL_BELOW", 0)   # small shapes, real threads
    k = derive.load_kernel(cell, backend="cython")
    Bodd = 5
    params = k.init_params(M, N, seed=2)
    x = rng.standard_normal((T, Bodd, M))
    state0 = {s: rng.standard_normal((Bodd, N)) for s in k.states}
    dy = rng.standard_normal((T, Bodd, N))
    results = []
    for threads in (1, 2, 3, 8):
        k.threads = threads
        tr = k.forward(x, params, state0)
        results.append((tr.outputs.copy(), k.backward(tr, dy)))
    k.threads = derive.kernel.runtime.default_threads()
    out1, g1 = results[0]
    for out, g in results[1:]:
        np.testing.assert_allclose(out, out1, rtol=0, atol=1e-13)
        for name in g1:
            np.testing.assert_allclose(g[name], g1[name], rtol=1e-12, atol=1e-12)


FORKED_CHILD = """
import os, sys, time, warnings
import numpy as np
import derive
import derive.kernel.runtime
derive.kernel.runtime.SERIAL_BELOW = 0      # small shapes, real threads
k = derive.load_kernel("lstm", dtype="float64")
k.threads = 2
p = k.init_params(input_size=3, hidden_size=4, seed=0)
x = np.random.default_rng(0).standard_normal((5, 8, 3))
expected = k.forward(x, p).outputs.copy()
pid = os.fork()
if pid == 0:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tr = k.forward(x, p)
        k.backward(tr, np.ones_like(tr.outputs))
    os._exit(0 if np.array_equal(tr.outputs, expected) else 3)
for _ in range(300):
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        sys.exit(os.waitstatus_to_exitcode(status))
    time.sleep(0.1)
os.kill(pid, 9)
sys.exit(4)
"""


def test_a_forked_child_runs_the_kernel_after_the_parent_did():
    """OpenMP's pool does not survive fork(): the child runs on one thread, never hangs."""
    run = subprocess.run([sys.executable, "-c", FORKED_CHILD], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, (run.returncode, run.stderr[-2000:])


def test_small_calls_run_on_one_thread_and_never_more_threads_than_rows():
    from derive.kernel.runtime import SERIAL_BELOW, _threads
    assert _threads(8, 4, 3, 5, 4) == 1                       # a gradient check's shapes
    assert _threads(8, 100, 3, 128, 256) == 3                 # one batch row per thread
    assert _threads(2, 100, 32, 128, 256) == 2
    assert 4 * 3 * 4 * 9 < SERIAL_BELOW < 200 * 16 * 128 * 192   # S3 runs threaded


# --- issue 9.3: a trace owns its inputs' values -----------------------------------------------

def test_backward_uses_the_values_forward_saw(kernel, rng):
    """A data loader refills x, an optimizer updates the parameters in place and the caller
    reuses its state buffer between forward and backward: the gradients do not change."""
    params, x, state0 = problem(kernel, rng)
    d_out = rng.standard_normal((T, B, N))
    want = kernel.backward(kernel.forward(x, params, state0), d_out)
    tr = kernel.forward(x, params, state0)
    x[...] = rng.standard_normal(x.shape)
    for p in params.values():
        p += 0.5
    for s in state0.values():
        s[...] = 7.0
    got = kernel.backward(tr, d_out)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_one_reading_of_the_sizes_for_the_kernel_and_the_torch_operators():
    """Kernel.state_sizes reads N and P from the states (arrays or (B, n) shapes alike) and
    the fused weights' shapes in sizes give the shapes init_params' buffers have; the
    helpers read a size once, from the first array that has it."""
    from derive.kernel.runtime import read_sizes, shape_of, sizes_text
    k = derive.load_kernel("lstmp", "float64")
    params = k.init_params(input_size=5, hidden_size=4, proj_size=3, seed=0)
    dims = {"M": 5, "N": 4, "P": 3}
    fused = k._fused(params, 4, 5, 3)
    assert [W.shape for W in fused] == k.weight_shapes(dims) \
        == [shape_of(s, dims) for s in k.fused_shapes()]
    states = [np.zeros((2, {"N": 4, "P": 3}[k.size(s)])) for s in k.states]
    assert k.state_sizes(states) == {"N": 4, "P": 3}
    got, source = {"M": 5}, {"M": "x"}
    read_sizes([("A", ((4, "N"), "M"), (16, 7)), ("B", ("N", "P"), (9, 3))], got, source)
    assert got == dims and sizes_text(got, source) == "M=5 (from x) and N=4 (from A) and P=3 (from B)"
