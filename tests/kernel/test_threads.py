"""The kernels' threads: each pass is one OpenMP region whose phases are separated by
barriers, and the work is split over the team OpenMP actually started, which can be
smaller than the threads asked for."""

import os
import subprocess
import sys

SMALLER_TEAM = """
import numpy as np
import derive
import derive.kernel.runtime
derive.kernel.runtime.SERIAL_BELOW = 0      # small shapes, real threads
k = derive.load_kernel("lstm", dtype="float64")
p = k.init_params(input_size=3, hidden_size=4, seed=0)
rng = np.random.default_rng(0)
x = rng.standard_normal((5, 7, 3))
dy = rng.standard_normal((5, 7, 4))
out = []
for threads in (1, 3):
    k.threads = threads
    tr = k.forward(x, p)
    out.append((tr.outputs.copy(), k.backward(tr, dy)))
(y1, g1), (y3, g3) = out
assert np.array_equal(y1, y3)
for name in g1:
    assert np.array_equal(g1[name], g3[name]), name
print("same")
"""


def test_a_team_smaller_than_asked_splits_the_work_over_the_threads_it_has():
    """With OMP_THREAD_LIMIT=1 a call asking for 3 threads gets a team of one: that
    thread does all the rows, all the panels and every product after the loop, exactly
    as a call asking for one thread does (bit for bit)."""
    env = dict(os.environ, OMP_THREAD_LIMIT="1")
    run = subprocess.run([sys.executable, "-c", SMALLER_TEAM], capture_output=True, check=False,
                         text=True, timeout=600, env=env)
    assert run.returncode == 0 and run.stdout.strip() == "same", run.stderr[-3000:]


def test_each_pass_is_one_parallel_region():
    """The generated kernel starts one OpenMP region per entry point (a region's start
    wakes the threads; the phases inside are separated by barriers)."""
    from derive.cell.spec import load_cell
    from derive.derivation import derive
    from derive.kernel.emit import kernel_source
    source = kernel_source(derive(load_cell("lstm_np")))
    assert source.count("with nogil, parallel(num_threads=nt):") == 2
    assert "prange(" not in source
    forward = source[source.index("\ndef forward("):source.index("\ndef backward(")]
    backward = source[source.index("\ndef backward("):]
    assert forward.count("derive_barrier()") == 1       # input GEMM | time loop
    assert backward.count("derive_barrier()") == 2      # panels | time loop | products
    # the products after the loop: parts claimed one at a time by whichever thread is free
    assert backward.count("derive_claim(&claimed)") == 1
    assert "task = c " not in backward


def test_a_cell_without_vector_parameters_compiles_and_is_right(rng):
    """No vector gradients to sum after the time loop (an empty step of the region):
    the kernel still compiles, matches the NumPy reference and passes central
    differences."""
    import numpy as np
    from catalog import cell_path

    import derive
    from derive.check import gradient_check
    cell = cell_path("no_vectors")
    k = derive.load_kernel(cell, "float64", backend="cython")
    r = derive.load_kernel(cell, "float64", backend="numpy")
    T, B, M, N = 5, 3, 4, 6
    params = k.init_params(M, N, seed=1)
    x = rng.standard_normal((T, B, M))
    state0 = {s: 0.5 * rng.standard_normal((B, N)) for s in k.states}
    dy = rng.standard_normal((T, B, N))
    tk, tr = k.forward(x, params, state0), r.forward(x, params, state0)
    np.testing.assert_allclose(tk.outputs, tr.outputs, rtol=0, atol=1e-12)
    gk, gr = k.backward(tk, dy), r.backward(tr, dy)
    assert set(gk) == set(gr) == {"W", "R", "x", "y0"}
    for name in gr:
        np.testing.assert_allclose(gk[name], gr[name], rtol=1e-12, atol=1e-12)
    report = gradient_check(cell, backend="cython", dtype="float64")
    assert report.passed, report.table()


def test_products_after_the_loop_in_more_parts_than_threads(rng, monkeypatch):
    """dX has T·B = 1030 rows: 4 parts of at least 256 rows, more than the 2 or 3
    threads, which claim them one at a time. Every part is computed once (dX is
    written, not added to: a part left out would leave np.empty's garbage, a part done
    twice is harmless here, so the NumPy reference checks every entry), for any team."""
    import numpy as np

    import derive
    import derive.kernel.runtime
    monkeypatch.setattr(derive.kernel.runtime, "SERIAL_BELOW", 0)   # small shapes, real threads
    k = derive.load_kernel("lstm_np", "float64", backend="cython")
    r = derive.load_kernel("lstm_np", "float64", backend="numpy")
    T, B, M, N = 206, 5, 3, 4
    params = k.init_params(M, N, seed=3)
    x = rng.standard_normal((T, B, M))
    state0 = {s: 0.5 * rng.standard_normal((B, N)) for s in k.states}
    dy = rng.standard_normal((T, B, N))
    want = r.backward(r.forward(x, params, state0), dy)
    for threads in (1, 2, 3):
        k.threads = threads
        got = k.backward(k.forward(x, params, state0), dy)
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-10, atol=1e-12,
                                       err_msg=f"{name}, {threads} threads")
    k.threads = derive.kernel.runtime.default_threads()
