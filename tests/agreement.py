"""A compiled kernel against its NumPy reference: same outputs and gradients to 1e-12."""

import numpy as np


def random_call(k, rng, T: int, B: int, M: int, N: int, seed: int = 7, P: int = 3):
    """Random parameters (seed), input, non-zero initial states and output gradient for
    kernel k: (params, x, state0, dy), each array of its vector's size (P for a cell with
    a second node size, like LSTMP's output)."""
    dims = {"N": N, "P": P}
    params = k.init_params(M, N, seed=seed, **({"proj_size": P} if k.has_proj_size else {}))
    x = rng.standard_normal((T, B, M))
    state0 = {s: 0.5 * rng.standard_normal((B, dims[k.size(s)])) for s in k.states}
    dy = rng.standard_normal((T, B, dims[k.size(k.outputs[0])]))
    return params, x, state0, dy


def assert_kernel_equals_reference(k, r, rng, T: int, B: int, M: int, N: int,
                                   seed: int = 7, P: int = 3) -> None:
    """Outputs within 1e-12, every gradient within 1e-12 of its scale (at least 1), for
    a random call (`random_call`)."""
    params, x, state0, dy = random_call(k, rng, T, B, M, N, seed, P)
    tk, tr = k.forward(x, params, state0), r.forward(x, params, state0)
    assert np.max(np.abs(tk.outputs - tr.outputs)) <= 1e-12
    gk, gr = k.backward(tk, dy), r.backward(tr, dy)
    assert set(gk) == set(gr)
    for name in gr:
        scale = max(1.0, float(np.max(np.abs(gr[name]))))
        assert np.max(np.abs(gk[name] - gr[name])) <= 1e-12 * scale, name
