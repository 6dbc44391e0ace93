"""Sizes: a second node size P (LSTMP: N cell units, a projected output of size P) and
an input used element-wise (its size is then the node's).

The spec infers every node's size from its parameters; the derivation and its numeric
evaluation (derive.numeric, `derive check --backend derivation`) work in N, M and P;
the compiled kernels take P (tests/kernel/test_lstmp.py).
"""

import numpy as np
import pytest
from catalog import cell_path
from lstmp_torch import torch_lstmp

import derive
from derive import numeric
from derive.cell.catalog import resolve
from derive.cell.spec import parse_spec
from derive.check import gradient_check
from derive.errors import SpecError

T, B, M, N, P = 5, 3, 6, 5, 3


def test_sizes_are_inferred_from_the_parameters():
    cell = derive.load_cell("lstmp")
    assert {n: cell.size(n) for n in ("y", "m", "c", "z_bar", "x")} == {
        "y": "P", "m": "N", "c": "N", "z_bar": "N", "x": "M"}


def test_a_node_mixing_two_sizes_is_a_spec_error_naming_it():
    source = resolve("lstmp").text.replace('y     = "W_rm @ m"', 'y     = "W_rm @ m + b_z"')
    with pytest.raises(SpecError, match="node y: combines vectors of sizes N and P"):
        parse_spec(source, "bad.toml")


def test_the_lstmp_derivation_passes_finite_differences_with_p_unlike_n_and_m():
    report = gradient_check("lstmp", backend="derivation")
    assert report.passed, report.table()
    shapes = {r.name: r.shape for r in report.rows}
    assert shapes["W_rm"] == (3, 4) and shapes["R_z"] == (4, 3) and shapes["y0"] == (3, 3)


def test_the_lstmp_derivation_equals_torch_lstm_with_proj_size(rng):
    """derive.numeric on the LSTMP derivation = nn.LSTM(M, N, proj_size=P), float64."""
    torch = pytest.importorskip("torch")
    cell = derive.load_cell("lstmp")
    d = derive.derive(cell)
    problem = numeric.random_problem(cell, T=T, B=B, M=M, N=N, P=P, seed=4)
    out, want = torch_lstmp(torch, problem.params, problem.x["x"], problem.initial["y"],
                            problem.initial["c"], problem.projection["y"])
    env = numeric.forward(problem)
    ours = np.stack([env.values[("y", t)] for t in range(T)])
    np.testing.assert_allclose(ours, out, rtol=0, atol=1e-10)
    g = numeric.backward(d, problem, env)
    assert set(want) == set(g)
    for name, value in want.items():
        np.testing.assert_allclose(g[name], value, rtol=0, atol=1e-10, err_msg=name)


def test_an_input_used_element_wise_has_the_size_of_its_node_and_the_derivation_checks():
    path = cell_path("input_elementwise")
    assert derive.load_cell(path).size("x") == "N"
    report = gradient_check(path, backend="derivation")    # was a broadcasting traceback
    assert report.passed, report.table()
    source = open(path).read().replace('W = ["N", "N"]', 'W = ["N", "M"]')
    with pytest.raises(SpecError, match=r"W has shape \['N', 'M'\] but x has size N"):
        parse_spec(source, "bad.toml")
