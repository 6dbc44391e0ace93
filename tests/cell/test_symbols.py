"""Symbols carry their meaning: cells with overlapping names live side by side in one process."""

import pickle
import subprocess
import sys
import textwrap

import pytest
import sympy as sp

import derive
from derive.cell import symbols as S

# a valid cell whose node `da` prints like rnn's delta of `a` (da[t]); its output is `h`
DA_CELL = textwrap.dedent("""\
    name    = "dacell"
    inputs  = ["x"]
    state   = ["h"]
    outputs = ["h"]

    [parameters]
    W = ["N", "M"]
    R = ["N", "N"]

    [nodes]
    da = "W @ x + R @ h[t-1]"
    h  = "tanh(da)"
    """)

# a cell where `a` is an input and `y` a parameter-free node with two outputs (Delta_y[t])
TWO_OUT = textwrap.dedent("""\
    name    = "twoout"
    inputs  = ["a"]
    state   = ["y"]
    outputs = ["y", "g"]

    [parameters]
    W = ["N", "M"]
    R = ["N", "N"]

    [nodes]
    u = "W @ a + R @ y[t-1]"
    g = "sigmoid(u)"
    y = "g * y[t-1] + tanh(u)"
    """)

# equations that verify equal in each cell, in the cell's own names
EQUATIONS = {
    "rnn": ["da[t] = dy[t]*dtanh(a[t])", "dy[t] = Delta[t] + R.T @ da[t+1]"],
    "dacell": ["dda[t] = dh[t]*(1 - h[t]**2)", "dh[t] = Delta[t] + R.T @ dda[t+1]"],
    "twoout": ["dy[t] = Delta_y[t] + dy[t+1]*g[t+1] + R.T @ du[t+1]"],
}


def test_a_symbol_carries_its_meaning():
    node = S.value("da")
    grad = S.delta("a")
    assert node.name == grad.name == "da[t]"
    assert node != grad and len({node, grad}) == 2
    assert S.ref(node) == S.Ref("value", "da", 0) and S.ref(grad) == S.Ref("delta", "a", 0)
    assert S.ref(sp.Symbol("da[t]")) is None
    assert S.value("da") is node                     # one object per meaning
    e = node * grad + sp.tanh(grad)
    assert sp.diff(e, grad) == node + 1 - sp.tanh(grad) ** 2
    assert pickle.loads(pickle.dumps(e)) == e


def test_shift_time_moves_every_kind_and_keeps_the_meaning():
    e = (S.value("c", -1) * S.delta("f_bar", 1) + S.incoming("y", 0, single=False)
         + S.carried("c", 0) + S.param("p_f"))
    moved = S.shift_time(e, 2)
    assert moved == (S.value("c", 1) * S.delta("f_bar", 3) + S.incoming("y", 2, single=False)
                     + S.carried("c", 2) + S.param("p_f"))
    assert {s.name for s in moved.free_symbols} == {
        "c[t+1]", "df_bar[t+3]", "Delta_y[t+2]", "carry_c[t+2]", "p_f"}
    assert S.shift_time(moved, -2) == e


def _write(tmp_path, text, name):
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("order", ["shipped first", "files first"])
def test_cells_with_overlapping_names_in_one_process(tmp_path, order):
    """Derive, generate, build, check and verify several cells in one process, either order."""
    from derive.check import gradient_check
    from derive.generate import generate

    cells = ["rnn", _write(tmp_path, DA_CELL, "dacell"), _write(tmp_path, TWO_OUT, "twoout")]
    if order == "files first":
        cells.reverse()
    for cell in cells:
        d = derive.derive(cell)
        assert d.deltas                                  # derived
        for equation in EQUATIONS[d.cell.name]:
            v = derive.verify(cell, equation)
            assert v.equal, v.report()
    assert generate(cells, out=str(tmp_path / "out")) == 0
    for cell in cells:
        assert gradient_check(cell, backend="cython").passed
    assert "da" in (tmp_path / "out" / "dacell" / "equations.md").read_text()


def test_generate_two_cells_sharing_a_printed_name_from_the_command_line(tmp_path):
    path = _write(tmp_path, DA_CELL, "dacell")
    run = subprocess.run([sys.executable, "-m", "derive", "generate", "rnn", path, "--out",
                          str(tmp_path / "out")], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    assert (tmp_path / "out" / "rnn" / "equations.md").is_file()
    assert (tmp_path / "out" / "dacell" / "equations.md").is_file()
