"""A compiled kernel against its NumPy reference: same outputs and gradients to 1e-12."""

import numpy as np


def input_sizes(k, M: int, N: int, P: int = 3) -> dict:
    """{input: size} for kernel k: M, M + 1, … for the inputs of size M (each its own),
    N or P for an input used element-wise."""
    dims, out, extra = {"N": N, "P": P}, {}, 0
    for x, size in k.input_sizes.items():
        out[x] = dims.get(size, M + extra)
        extra += size not in dims
    return out


def random_call(k, rng, T: int, B: int, M: int, N: int, seed: int = 7, P: int = 3):
    """Random parameters (seed), input, non-zero initial states and output gradient for
    kernel k: (params, x, state0, dy), each array of its vector's size (P for a cell with
    a second node size, like LSTMP's output). x: one array for a cell with one input, a
    dict {input: array} (of sizes `input_sizes`) for one with several."""
    dims = {"N": N, "P": P}
    sizes = input_sizes(k, M, N, P)
    params = k.init_params(sizes, N, seed=seed,
                           **({"proj_size": P} if k.has_proj_size else {}))
    x = {name: rng.standard_normal((T, B, m)) for name, m in sizes.items()}
    x = x[k.input] if len(x) == 1 else x
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
