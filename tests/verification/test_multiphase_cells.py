"""derive verify on the multi-phase cells (a node of the same step multiplied by a
matrix, or a mean over the hidden units) and the second node size: correct hand
derivations verify equal, a wrong one differs with its wrong term named."""

import pytest

import derive

CORRECT = [
    ("gru_rb", "ds[t] = R_h.T @ dh_bar[t]"),
    ("gru_rb", "dr_bar[t] = ds[t]*y[t-1]*r[t]*(1 - r[t])"),
    ("gru_rb", "dh_bar[t] = dy[t]*(1 - u[t])*dtanh(h_bar[t])"),
    ("mgu", "ds[t] = R_h.T @ dh_bar[t]"),
    ("mgu", "df_bar[t] = (ds[t]*y[t-1] + dy[t]*(h[t] - y[t-1]))*f[t]*(1 - f[t])"),
    ("lstmp", "dm[t] = W_rm.T @ dy[t]"),
    ("lstmp", "dc[t] = dm[t]*o[t]*dtanh(c[t]) + dc[t+1]*f[t+1]"),
    # the layer-normalised LSTM: the adjoint of d = a - mean(a), and of s = sqrt(mean(d²) + ε)
    ("lstm_ln", "da_z[t] = dd_z[t] - mean(dd_z[t])"),
    ("lstm_ln", "dd_c[t] = g_c*dc_hat[t]/s_c[t] + d_c[t]*mean(ds_c[t])/s_c[t]"),
]

WRONG = [   # (cell, equation, the flow the difference names)
    ("gru_rb", "ds[t] = R_h @ dh_bar[t]", "h_bar[t]"),
    ("mgu", "df_bar[t] = (ds[t]*y[t-1] + dy[t]*(h[t] + y[t-1]))*f[t]*(1 - f[t])", "y[t]"),
    ("lstmp", "dc[t] = dm[t]*dtanh(c[t]) + dc[t+1]*f[t+1]", "m[t]"),
    ("lstm_ln", "da_z[t] = dd_z[t]", "d_z[t]"),                    # the mean's adjoint missing
    ("lstm_ln", "dd_c[t] = g_c*dc_hat[t]/s_c[t] - d_c[t]*mean(ds_c[t])/s_c[t]", "s_c[t]"),
]


@pytest.mark.parametrize("cell, equation", CORRECT)
def test_correct_hand_derivations_verify_equal(cell, equation):
    v = derive.verify(cell, equation)
    assert v.equal, v.differences


@pytest.mark.parametrize("cell, equation, flow", WRONG)
def test_a_wrong_term_is_named(cell, equation, flow):
    v = derive.verify(cell, equation)
    assert not v.equal
    assert len(v.differences) == 1 and flow in v.differences[0].flow, v.differences
