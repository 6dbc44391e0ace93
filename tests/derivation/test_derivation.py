"""The derived equations against the paper (Greff et al., "LSTM: A Search Space Odyssey",
section 2) and the variants' changes."""

import pytest
import sympy as sp
from catalog import cell_path

import derive
from derive.cell import symbols as S
from derive.verification.notation import parse_expression

# the paper's backward pass of the vanilla LSTM, written as a person would type it (the
# text notation of `derive verify`, see the README)
PAPER = {
    "y": "Delta[t] + R_z.T @ dz_bar[t+1] + R_i.T @ di_bar[t+1] + R_f.T @ df_bar[t+1]"
         " + R_o.T @ do_bar[t+1]",
    "o_bar": "dy[t] * tanh(c[t]) * dsigmoid(o_bar[t])",
    "c": "dy[t]*o[t]*dtanh(c[t]) + p_o*do_bar[t] + p_i*di_bar[t+1] + p_f*df_bar[t+1]"
         " + dc[t+1]*f[t+1]",
    "f_bar": "dc[t] * c[t-1] * dsigmoid(f_bar[t])",
    "i_bar": "dc[t] * z[t] * dsigmoid(i_bar[t])",
    "z_bar": "dc[t] * i[t] * dtanh(z_bar[t])",
    "x": "W_z.T @ dz_bar[t] + W_i.T @ di_bar[t] + W_f.T @ df_bar[t] + W_o.T @ do_bar[t]",
}
# per-step terms of the parameter gradients, indexed by the delta's step
PAPER_PARAMS = {
    **{f"W_{g}": f"outer(d{g}_bar[t], x[t])" for g in "zifo"},
    **{f"R_{g}": f"outer(d{g}_bar[t], y[t-1])" for g in "zifo"},
    **{f"b_{g}": f"d{g}_bar[t]" for g in "zifo"},
    "p_i": "c[t-1] * di_bar[t]", "p_f": "c[t-1] * df_bar[t]", "p_o": "c[t] * do_bar[t]",
}


def same(d, a, b) -> bool:
    return d.canonical(a - b) == 0


@pytest.mark.parametrize("node", list(PAPER))
def test_lstm_structured_equations_match_the_paper(node):
    d = derive.derive("lstm")
    expected = parse_expression(d.cell, PAPER[node])
    assert same(d, d.structured(node), expected), (node, d.structured(node))


@pytest.mark.parametrize("param", list(PAPER_PARAMS))
def test_lstm_parameter_gradients_match_the_paper(param):
    d = derive.derive("lstm")
    assert same(d, d.params[param].step, parse_expression(d.cell, PAPER_PARAMS[param]))


def test_lstm_initial_state_gradients_are_the_t0_boundary_terms():
    d = derive.derive("lstm")
    c0 = parse_expression(d.cell, "p_i*di_bar[t] + p_f*df_bar[t] + dc[t]*f[t]")
    y0 = parse_expression(d.cell, "R_z.T @ dz_bar[t] + R_i.T @ di_bar[t] + R_f.T @ df_bar[t]"
                                  " + R_o.T @ do_bar[t]")
    assert same(d, d.initial["c"], c0) and same(d, d.initial["y"], y0)


def test_a_wrong_equation_is_not_equal():
    """The comparison itself bites: swapping p_i and p_f in δc is detected."""
    d = derive.derive("lstm")
    wrong = parse_expression(d.cell, PAPER["c"].replace("p_i*di", "p_f*di").replace(
        "p_f*df", "p_i*df"))
    assert not same(d, d.structured("c"), wrong)


def test_expanded_forms_contain_no_delta_of_step_t(cell_name):
    d = derive.derive(cell_name)
    for name, nd in d.deltas.items():
        for sym in nd.expanded.free_symbols:
            r = S.ref(sym)
            assert not (r and r.kind == "delta" and r.shift <= 0), (name, sym)


def test_flows_sum_to_the_structured_form(cell_name):
    d = derive.derive(cell_name)
    for nd in d.deltas.values():
        assert sp.expand(sp.Add(*[f.term for f in nd.flows]) - nd.structured) == 0


VARIANTS = {
    # CIFG: f = 1 - i, so the input gate sees both the write and the keep
    ("lstm_cifg", "i_bar"): "dc[t] * (z[t] - c[t-1]) * dsigmoid(i_bar[t])",
    # NFG: the cell carries its delta back with no forget factor
    ("lstm_nfg", "c"): "dy[t]*o[t]*dtanh(c[t]) + p_o*do_bar[t] + p_i*di_bar[t+1] + dc[t+1]",
    # NIG: the block input is written with weight 1
    ("lstm_nig", "z_bar"): "dc[t] * dtanh(z_bar[t])",
    # NOG: y = tanh(c)
    ("lstm_nog", "c"): "dy[t]*dtanh(c[t]) + p_i*di_bar[t+1] + p_f*df_bar[t+1] + dc[t+1]*f[t+1]",
    # NIAF: g(x) = x
    ("lstm_niaf", "z_bar"): "dc[t] * i[t]",
    # NOAF: h(x) = x
    ("lstm_noaf", "c"): "dy[t]*o[t] + p_o*do_bar[t] + p_i*di_bar[t+1] + p_f*df_bar[t+1]"
                        " + dc[t+1]*f[t+1]",
    ("lstm_noaf", "o_bar"): "dy[t] * c[t] * dsigmoid(o_bar[t])",
    # NP: no peephole terms in δc
    ("lstm_np", "c"): "dy[t]*o[t]*dtanh(c[t]) + dc[t+1]*f[t+1]",
    # FGR: the gate activations receive the gate-to-gate recurrent terms
    ("lstm_fgr", "i"): "dc[t]*z[t] + R_ii.T @ di_bar[t+1] + R_fi.T @ df_bar[t+1]"
                       " + R_oi.T @ do_bar[t+1]",
    ("lstm_fgr", "f"): "dc[t]*c[t-1] + R_if.T @ di_bar[t+1] + R_ff.T @ df_bar[t+1]"
                       " + R_of.T @ do_bar[t+1]",
    ("lstm_fgr", "o"): "dy[t]*tanh(c[t]) + R_io.T @ di_bar[t+1] + R_fo.T @ df_bar[t+1]"
                       " + R_oo.T @ do_bar[t+1]",
    ("lstm_fgr", "i_bar"): "di[t] * dsigmoid(i_bar[t])",
    # GRU (torch form) and the Elman RNN
    ("gru", "y"): "Delta[t] + dy[t+1]*u[t+1] + R_r.T @ dr_bar[t+1] + R_u.T @ du_bar[t+1]"
                  " + R_h.T @ dq[t+1]",
    ("gru", "h_bar"): "dy[t] * (1 - u[t]) * dtanh(h_bar[t])",
    ("gru", "u_bar"): "dy[t] * (y[t-1] - h[t]) * dsigmoid(u_bar[t])",
    ("gru", "q"): "dh_bar[t] * r[t]",
    ("gru", "r_bar"): "dh_bar[t] * q[t] * dsigmoid(r_bar[t])",
    ("rnn", "a"): "dy[t] * dtanh(a[t])",
    ("rnn", "y"): "Delta[t] + R.T @ da[t+1]",
}


@pytest.mark.parametrize("cell,node", list(VARIANTS))
def test_variant_backward_matches_its_forward_change(cell, node):
    d = derive.derive(cell)
    expected = parse_expression(d.cell, VARIANTS[(cell, node)])
    assert same(d, d.structured(node), expected), d.structured(node)


def test_fgr_state_carries_the_gates():
    d = derive.derive("lstm_fgr")
    assert d.cell.states == ("y", "c", "i", "f", "o")
    assert set(d.initial) == {"y", "c", "i", "f", "o"}


def test_cells_with_differently_named_outputs_coexist_in_one_process():
    """`Delta[t]` is shared by every single-output cell, whatever its output is called."""
    from derive import check
    spec = cell_path("elman_h")
    derive.derive("lstm")
    d = derive.derive(spec)
    assert d.structured("h") == parse_expression(d.cell, "Delta[t] + R.T @ da[t+1]")
    assert check.finite_difference_check(check.of_derivation(d)).passed
    derive.derive("lstm")  # and back
