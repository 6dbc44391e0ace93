"""torch.nn.LSTM(M, N, proj_size=P) as the oracle of the LSTMP cell (derive/cells/lstmp.toml).

Our parameters go into weight_ih_l0, weight_hh_l0, weight_hr_l0 and bias_ih_l0 (torch's
gate order i, f, g = z, o; bias_hh_l0 zero); torch autograd's outputs and gradients come
back in our names. Used by tests/derivation/test_sizes.py (the derivation) and
tests/kernel/test_lstmp.py (the kernels). float64 arrays in, NumPy arrays out.
"""

import numpy as np

GATES = "ifzo"   # torch's order: input, forget, cell (g), output


def torch_lstmp(torch, params: dict, x, y0, c0, dy) -> tuple[np.ndarray, dict]:
    """(outputs (T, B, P), {gradient name: array}) of L = Σ dy ⊙ y for nn.LSTM with
    proj_size, from x (T, B, M) and the initial states y0 (B, P), c0 (B, N)."""
    N, M = params["W_z"].shape
    P = params["W_rm"].shape[0]
    net = torch.nn.LSTM(M, N, proj_size=P).double()
    cat = lambda prefix: torch.from_numpy(np.concatenate([params[f"{prefix}_{g}"]  # noqa: E731
                                                          for g in GATES]))
    with torch.no_grad():
        net.weight_ih_l0.copy_(cat("W"))
        net.weight_hh_l0.copy_(cat("R"))
        net.weight_hr_l0.copy_(torch.from_numpy(np.asarray(params["W_rm"])))
        net.bias_ih_l0.copy_(cat("b"))
        net.bias_hh_l0.zero_()
    tx = torch.from_numpy(np.asarray(x, np.float64)).requires_grad_(True)
    h0 = torch.from_numpy(np.asarray(y0, np.float64)[None]).requires_grad_(True)
    c0_ = torch.from_numpy(np.asarray(c0, np.float64)[None]).requires_grad_(True)
    out, _ = net(tx, (h0, c0_))
    (out * torch.from_numpy(np.asarray(dy, np.float64))).sum().backward()
    grads = {"x": tx.grad, "y0": h0.grad[0], "c0": c0_.grad[0], "W_rm": net.weight_hr_l0.grad}
    for k, q in enumerate(GATES):
        rows = slice(k * N, (k + 1) * N)
        grads.update({f"W_{q}": net.weight_ih_l0.grad[rows],
                      f"R_{q}": net.weight_hh_l0.grad[rows], f"b_{q}": net.bias_ih_l0.grad[rows]})
    return out.detach().numpy(), {k: v.numpy() for k, v in grads.items()}
