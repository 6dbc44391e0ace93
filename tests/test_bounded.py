"""Bounded work for hostile input: every cell file and equation finishes, or is refused
with one line naming the limit, within seconds (issue 9)."""

from __future__ import annotations

import pytest

from derive.cli.main import main
from limits import cell_text, nested, time_limit


def run_cli(argv, capsys):
    """(exit code, stdout, stderr) of `derive ARGV` run in-process."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code, err):
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


# --- 1. nested tanh: exponential in SymPy's tanh evaluation --------------------------------

@pytest.mark.parametrize("function", ["tanh", "sigmoid", "exp", "log"])
def test_a_function_nested_30_deep_in_a_cell_is_derived_in_seconds(tmp_path, capsys, function):
    path = tmp_path / "deep.toml"
    path.write_text(cell_text(nested(function, 30)))
    with time_limit(5) as took:
        code, out, err = run_cli(["equations", path], capsys)
    assert code == 0, err
    assert "da[t] = " in out and took


def test_tanh_nested_30_deep_in_verify_is_decided_in_seconds(capsys):
    rhs = ("dy[t]*o[t]*dtanh(c[t]) + p_o*do_bar[t] + p_i*di_bar[t+1] + p_f*df_bar[t+1] "
           "+ dc[t+1]*f[t+1]")
    with time_limit(5):
        code, out, err = run_cli(["verify", "lstm", f"dc[t] = {rhs} + {nested('tanh', 30, 'c[t]')}"],
                                 capsys)
    assert code == 1 and "DIFFERS" in out, out + err


def test_derived_tanh_keeps_its_derivative_and_printing():
    import sympy as sp

    from derive.cell import symbols as S
    from derive.printing.latex import LatexPrinter
    from derive.printing.text import format_expression
    a = S.value("a")
    e = S.ACTIVATIONS["tanh"](a)
    assert isinstance(e, sp.tanh)
    assert sp.diff(e, a) == 1 - e ** 2
    assert S.ACTIVATIONS["tanh"](-a) == -e and S.ACTIVATIONS["tanh"](sp.S.Zero) == 0
    assert format_expression(e) == "tanh(a[t])"
    assert LatexPrinter().doprint(e).startswith(r"\tanh")
    assert sp.simplify(e.rewrite(sp.exp) - sp.tanh(a).rewrite(sp.exp)) == 0
