"""The backward's options: final-state gradients (C_in) and the flags that skip products.

C_in is checked against central differences of L = Σ dY·y + Σ_s d_s·s[T]; the flags
against the full backward (the computed gradients bit for bit, the skipped ones left
untouched), on both backends.
"""

import numpy as np
import pytest

import derive

BACKENDS = ["cython", "numpy"]
T, B, M, N = 4, 3, 5, 6


def problem(kernel, rng):
    params = kernel.init_params(M, N, seed=3)
    params = {k: v.copy() for k, v in params.items()}
    x = rng.standard_normal((T, B, M))
    state0 = {s: rng.standard_normal((B, N)) for s in kernel.states}
    return params, x, state0


def loss(kernel, params, x, state0, dY, d_finals):
    tr = kernel.forward(x, params, state0)
    outputs = tr.outputs if isinstance(tr.outputs, dict) else {kernel.outputs[0]: tr.outputs}
    return (sum(float(np.sum(dY[o] * outputs[o])) for o in kernel.outputs)
            + sum(float(np.sum(d * tr.states[s])) for s, d in d_finals.items()))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell", ["lstm", "gru", "lstm_np"])
def test_final_state_gradients_match_central_differences(rng, cell, backend):
    k = derive.load_kernel(cell, dtype="float64", backend=backend)
    params, x, state0 = problem(k, rng)
    dY = {o: rng.standard_normal((T, B, N)) for o in k.outputs}
    d_finals = {s: rng.standard_normal((B, N)) for s in k.states}
    tr = k.forward(x, params, state0)
    g = k.backward(tr, dY if len(k.outputs) > 1 else dY[k.outputs[0]], d_finals)
    without = k.backward(tr, dY if len(k.outputs) > 1 else dY[k.outputs[0]])
    assert not np.allclose(g[k.input], without[k.input])    # the final states count
    # directional derivatives along random directions of every argument
    for _ in range(3):
        v = {n: rng.standard_normal(p.shape) for n, p in params.items()}
        vx = rng.standard_normal(x.shape)
        vs = {s: rng.standard_normal((B, N)) for s in k.states}
        eps = 1e-6

        def at(h, v=v, vx=vx, vs=vs):
            return loss(k, {n: params[n] + h * v[n] for n in params}, x + h * vx,
                        {s: state0[s] + h * vs[s] for s in k.states}, dY, d_finals)

        numeric = (at(eps) - at(-eps)) / (2 * eps)
        analytic = (sum(float(np.sum(g[n] * v[n])) for n in params)
                    + float(np.sum(g[k.input] * vx))
                    + sum(float(np.sum(g[f"{s}0"] * vs[s])) for s in k.states))
        assert abs(numeric - analytic) <= 1e-7 * max(1.0, abs(analytic))


def test_unknown_or_misshapen_final_gradients_are_rejected(rng):
    k = derive.load_kernel("lstm", dtype="float64")
    params, x, state0 = problem(k, rng)
    tr = k.forward(x, params, state0)
    dy = rng.standard_normal((T, B, N))
    with pytest.raises(ValueError, match="unknown states h"):
        k.backward(tr, dy, {"h": np.zeros((B, N))})
    with pytest.raises(ValueError, match=r"d_finals\['c'\] must have shape \(3, 6\)"):
        k.backward(tr, dy, {"c": np.zeros((B, N + 1))})
    with pytest.raises(ValueError, match="C_in\\[1\\] must have shape"):
        k.module.backward(*_arrays(k, tr, {"y": dy}), 1, (np.zeros((B, N)), np.zeros((B, 1))))
    with pytest.raises(ValueError, match="want_dW must hold 2 flags"):
        k.module.backward(*_arrays(k, tr, {"y": dy}), 1, None, None, (True,))
    with pytest.raises(ValueError, match="want_dX must hold 1 flags"):
        k.module.backward(*_arrays(k, tr, {"y": dy}), 1, None, (True, True))


def _arrays(k, tr, dy, fill=0.0):
    """The arguments of the module's backward for a trace, outputs pre-filled with `fill`."""
    Tt, Bb, Mm, Nn = tr.sizes
    dG = tuple(np.empty((Tt, Bb, len(g["nodes"]) * Nn)) for g in k.groups)
    C = tuple(np.empty((Bb, Nn)) for _ in k.states)
    acc = tuple(np.full(Nn, fill) for _ in k.vectors)
    dW = tuple(np.full((len(o["blocks"]) * Nn, {"N": Nn, "M": Mm}[o["size"]]), fill)
               for o in k.operands)
    dX = (np.full((Tt, Bb, Mm), fill),)
    dY = tuple(dy[o] for o in k.outputs)
    return tr.X, tr.W, tr.V, tr.S, tr.A, dY, dG, C, acc, dW, dX


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("threads", [1, 2])
def test_skipped_products_leave_their_outputs_untouched(rng, cell, backend, threads):
    k = derive.load_kernel(cell, dtype="float64", backend=backend)
    params, x, state0 = problem(k, rng)
    tr = k.forward(x, params, state0)
    dy = {o: rng.standard_normal((T, B, N)) for o in k.outputs}
    d_finals = tuple(rng.standard_normal((B, N)) for _ in k.states)
    full = _arrays(k, tr, dy)
    k.module.backward(*full, threads, d_finals)
    nW, nV = len(k.operands), len(k.vectors)
    for want_dX, want_dW, want_acc in [
            ((False,), None, None), ((True,), (False,) * nW, (False,) * nV),
            ((False,), (False,) + (True,) * (nW - 1), (True,) * nV),
            ((False,), (True,) + (False,) * (nW - 1), (False,) + (True,) * (nV - 1) if nV
             else ())]:
        part = _arrays(k, tr, dy, fill=7.0)
        k.module.backward(*part, threads, d_finals, want_dX, want_dW, want_acc)
        flags = (list(want_dX) + list(want_dW or (True,) * nW) + list(want_acc or (True,) * nV))
        outputs = list(zip(list(part[10]) + list(part[9]) + list(part[8]),
                           list(full[10]) + list(full[9]) + list(full[8])))
        for flag, (got, want) in zip(flags, outputs):
            if flag:
                np.testing.assert_array_equal(got, want)
            else:
                assert np.all(got == 7.0)
        for got, want in zip(part[7], full[7]):      # the initial-state gradients
            np.testing.assert_array_equal(got, want)
