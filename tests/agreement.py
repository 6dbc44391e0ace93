"""A compiled kernel against its NumPy reference: same outputs and gradients to 1e-12."""

import numpy as np


def assert_kernel_equals_reference(k, r, rng, T: int, B: int, M: int, N: int,
                                   seed: int = 7) -> None:
    """Random parameters (seed), input, non-zero initial states and output gradient:
    outputs within 1e-12, every gradient within 1e-12 of its scale (at least 1)."""
    params = k.init_params(M, N, seed=seed)
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
