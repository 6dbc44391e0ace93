"""Bounded work for hostile input: every cell file and equation finishes, or is refused
with one line naming the limit, within seconds (issue 9)."""

from __future__ import annotations

import pytest
from limits import cell_text, nested, time_limit

from derive.cli.main import main


def run_cli(argv, capsys):
    """(exit code, stdout, stderr) of `derive ARGV` run in-process."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code, err):
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


# --- 1. nested tanh: exponential in SymPy's tanh evaluation --------------------------------

@pytest.mark.parametrize("function", ["tanh", "sigmoid", "exp", "log", "relu", "softplus",
                                      "sqrt"])
def test_a_function_nested_30_deep_in_a_cell_is_derived_in_seconds(tmp_path, capsys, function):
    path = tmp_path / "deep.toml"
    path.write_text(cell_text(nested(function, 30)))
    with time_limit(5) as took:
        code, out, err = run_cli(["equations", path], capsys)
    assert code == 0, err
    assert "da[t] = " in out and took


@pytest.mark.parametrize("level,depth", [("relu(a * mean({0}) + sqrt(softplus(a)))", 20),
                                         ("mean({0}) * a + mean(a * {0})", 9)])
def test_nested_means_are_derived_in_seconds(tmp_path, capsys, level, depth):
    """Each mean is pulled back once (one term per mean, not one per path: the second
    form reaches the innermost mean along 2**9 paths)."""
    node = "a"
    for _ in range(depth):
        node = level.format(node)
    path = tmp_path / "deep.toml"
    path.write_text(cell_text(node))
    with time_limit(5):
        code, out, err = run_cli(["equations", path], capsys)
    assert code == 0 and "da[t] = " in out, err


@pytest.mark.slow
def test_the_stated_five_seconds_hold_for_tanh_nested_30_deep(tmp_path, capsys):
    """The figure the README states, on a quiet machine: a cell file and a verify input
    with tanh nested 30 deep are done in under 5 s each."""
    path = tmp_path / "deep.toml"
    path.write_text(cell_text(nested("tanh", 30)))
    with time_limit(5, strict=True):
        assert run_cli(["equations", path], capsys)[0] == 0
    with time_limit(5, strict=True):
        code, out, err = run_cli(["verify", "lstm", f"dc[t] = {nested('tanh', 30, 'c[t]')}"],
                                 capsys)
    assert code == 1, out + err


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


# --- 2, 5, 6. literals and constants: bounded, finite, real; refused where written ---------

CELL_CONSTANTS = [  # (node expression, words of the message)
    ("tanh(a) ** (9**9**9)", "exponents must be numbers of size at most 16"),
    ("a * 2**99999999", "exponents must be numbers of size at most 16"),
    ("a * 1e400", "1e400 is not finite"),
    ("a * " + "7" * 5000, "more than 400 digits"),
    ("a * 10**15**2", "exponents must be numbers of size at most 16"),
    ("a * (10**16)**16 * (10**16)**16", "more than 400 digits"),
    ("a * 10**16**2 * 10**300", "exponents must be numbers of size at most 16"),
    ("a * (10**16)**16 * (10**10)**10", "not a finite real number in float64"),
    ("a / 0", "division by zero"),
    ("a / (2 - 2)", "division by zero"),
    ("a * 0 ** -1", "0 raised to a negative power"),
    ("log(0 - 1) * a", "not a finite real number"),
    ("log(a - a) + a", "log(0) is not a finite real number"),
    ("a * (-1) ** (1/2)", "not a finite real number"),
    ("a * exp(1000)", "not a finite real number in float64"),
    ("a * exp(700) * exp(700)", "not a finite real number in float64"),
]


@pytest.mark.parametrize("node,words", CELL_CONSTANTS, ids=[c[0][:30] for c in CELL_CONSTANTS])
def test_cell_constants_are_refused_with_file_line_and_column(tmp_path, capsys, node, words):
    path = tmp_path / "bad.toml"
    path.write_text(cell_text(node))
    with time_limit(5):
        code, out, err = run_cli(["equations", path], capsys)
    one_line_error(code, err)
    assert f"{path}:13: node y:" in err and words in err and "(column " in err, err


VERIFY_CONSTANTS = [
    ("dc[t] = dy[t] * 1e400", "1e400 is not finite"),
    ("dc[t] = dy[t] * " + "7" * 5000, "more than 400 digits"),
    ("dc[t] = dy[t] * 2**99999999", "exponents must be numbers of size at most 16"),
    ("dc[t] = dy[t] / 0", "division by zero"),
    ("dc[t] = dy[t] * log(0 - 1)", "not a finite real number"),
    ("dc[t] = dy[t] * 0 ** -1", "0 raised to a negative power"),
]
LATEX_CONSTANTS = [
    (r"\delta c^{(t)} = \delta y^{(t)} " + "7" * 5000, "more than 400 digits"),
    (r"\delta c^{(t)} = \delta y^{(t)} \frac{1}{0}", "division by zero"),
    (r"\delta c^{(t)} = \delta y^{(t)} \log\left(0 - 1\right)", "not a finite real number"),
]


@pytest.mark.parametrize("equation,words", VERIFY_CONSTANTS + LATEX_CONSTANTS,
                         ids=[c[0][8:40] for c in VERIFY_CONSTANTS + LATEX_CONSTANTS])
def test_verify_constants_are_refused_in_one_line(capsys, equation, words):
    latex = ["--latex"] if equation.startswith("\\") else []
    with time_limit(5):
        code, out, err = run_cli(["verify", "lstm", *latex, equation], capsys)
    one_line_error(code, err)
    assert words in err and out == "", err


def test_small_constants_still_load(tmp_path):
    import derive
    path = tmp_path / "ok.toml"
    path.write_text(cell_text("a ** 0.5 * (1/3) + 1e-8 + 2**16 * a + exp(2) * a "
                              "+ 1e300 * 1e-300 * a + 1e-70 * a"))
    derive.derive(derive.load_cell(path))


# --- 5, 8. long chains and deep nesting: work, or one line naming the limit -----------------

def test_a_flat_sum_of_400_terms_is_not_too_deeply_nested(tmp_path, capsys):
    path = tmp_path / "sum.toml"
    path.write_text(cell_text(" + ".join(f"{k % 7 + 1} * tanh(a)" if k % 2 else "a"
                                         for k in range(400))))
    with time_limit(5):
        code, out, err = run_cli(["equations", path], capsys)
    assert code == 0, err
    rhs = " + ".join(["dy[t]"] * 400)
    with time_limit(5):
        code, out, err = run_cli(["verify", "lstm", f"dc[t] = {rhs}"], capsys)
    assert code == 1 and "DIFFERS" in out, err


@pytest.mark.parametrize("node,words", [
    (" + ".join(["a"] * 1500), "more than 1000 operands in a row (the limit)"),
    (" * ".join(["a"] * 1500), "more than 1000 operands in a row (the limit)"),
    (nested("tanh", 150), "nested too deeply (the limit is 100 levels)"),
    ("-" * 150 + "a", None),
    ("(" * 250 + "a" + ")" * 250, "nested too deeply (the limit is 100 levels)"),
], ids=["sum of 1500", "product of 1500", "tanh 150 deep", "150 minus signs", "250 parentheses"])
def test_long_chains_and_deep_nesting_are_refused_or_work(tmp_path, capsys, node, words):
    path = tmp_path / "chain.toml"
    path.write_text(cell_text(node))
    with time_limit(5):
        code, out, err = run_cli(["equations", path], capsys)
    if words is None:
        assert code == 0, err
    else:
        one_line_error(code, err)
        assert words in err, err


def _chain_of_nodes(n: int) -> str:
    nodes = 'n0 = "tanh(a)"\n' + "".join(f'n{k} = "tanh(n{k - 1})"\n' for k in range(1, n))
    return cell_text(f"n{n - 1} * 1", extra_nodes=nodes)


def test_a_chain_of_1500_nodes_is_refused_naming_the_limit(tmp_path, capsys):
    path = tmp_path / "chain.toml"
    path.write_text(_chain_of_nodes(1500))
    with time_limit(5):
        code, out, err = run_cli(["equations", path], capsys)
    one_line_error(code, err)
    assert "at most 100 nodes (the limit)" in err, err


def test_a_chain_at_the_limit_is_derived_in_seconds(tmp_path, capsys):
    path = tmp_path / "chain.toml"
    path.write_text(_chain_of_nodes(98))  # + a and y: 100 nodes
    with time_limit(10):
        code, out, err = run_cli(["equations", path], capsys)
    assert code == 0 and "da[t] = " in out, err


# --- 8. messages: no NumPy warning; "cannot decide" says what is true ---------------------

C = ("dy[t]*o[t]*dtanh(c[t]) + p_o*do_bar[t] + p_i*di_bar[t+1] + p_f*df_bar[t+1] "
     "+ dc[t+1]*f[t+1]")


@pytest.mark.parametrize("term", ["exp(100000*c[t])", "dy[t]**16*exp(700)*exp(c[t])"])
def test_verify_prints_no_numpy_overflow_warning(capsys, term):
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        code, out, err = run_cli(["verify", "lstm", f"dc[t] = {C} + {term}"], capsys)
    assert code == 1 and "DIFFERS" in out and err == "", err


def test_cannot_decide_does_not_claim_a_plainly_non_zero_difference_is_irreducible(capsys):
    with time_limit(10):
        code, out, err = run_cli(["verify", "lstm", f"dc[t] = {C} + 1e-12*dy[t]"], capsys)
    assert code == 1 and "CANNOT DECIDE" in out, out + err
    assert "could not reduce their difference to zero" not in out
    assert "within the tolerance" in out and "non-zero but below the tolerance" in out


def _fibonacci(n: int) -> str:
    """Nodes that each read the two before: the paths from n0 grow like Fibonacci numbers."""
    nodes = 'n0 = "tanh(a)"\nn1 = "sigmoid(a)"\n' + "".join(
        f'n{k} = "n{k - 1} * n{k - 2} + tanh(n{k - 1})"\n' for k in range(2, n))
    return cell_text(f"n{n - 1} * 1", extra_nodes=nodes)


def test_nodes_feeding_several_later_nodes_stay_polynomial(tmp_path, capsys):
    """Folding every path made δa exponential (16 nodes: 7 s to print, 20: 90 s)."""
    import derive
    from derive.derivation.backward import MAX_FOLDED_FLOWS
    path = tmp_path / "fib.toml"
    path.write_text(_fibonacci(16))
    with time_limit(5):
        code, out, err = run_cli(["equations", path], capsys)
    assert code == 0, err
    d = derive.derive(derive.load_cell(path))
    assert sum(len(nd.flows) for nd in d.deltas.values()) <= MAX_FOLDED_FLOWS * len(d.cell.nodes)
    path.write_text(_fibonacci(60))
    with time_limit(5):
        code, out, err = run_cli(["equations", path], capsys)
    one_line_error(code, err)
    assert "operations; the limit is 200000" in err, err


def test_functions_of_constants_are_read_as_floats_in_bounded_time(tmp_path, capsys):
    """SymPy evaluated exp(tanh(log(sigmoid(…2…)))) in arbitrary precision: over 20 s at 48
    levels (found by the long fuzzing profile)."""
    constant = "exp(tanh(log(sigmoid(" * 12 + "2" + "))))" * 12
    with time_limit(5):
        code, out, err = run_cli(["verify", "lstm", f"dc[t] = dy[t]*{constant}"], capsys)
    assert code == 1 and "DIFFERS" in out, err
    path = tmp_path / "const.toml"
    path.write_text(cell_text(f"a * {constant}"))
    with time_limit(5):
        code, out, err = run_cli(["equations", path], capsys)
    assert code == 0, err
