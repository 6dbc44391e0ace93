"""The functions relu, softplus, sqrt and the reduction mean in cell files: what they
mean, and a one-line error naming the file, line and problem for each misuse."""

import subprocess
import sys

import pytest
import sympy as sp
from catalog import cell_text

import derive
from derive.cell import symbols as S
from derive.errors import SpecError

GOOD = cell_text("tiny")
Y = 'y = "tanh(a)"'

# (rule, new line 13 of tiny, words the message must contain)
BAD = [
    ("relu of two arguments", 'y = "relu(a, a)"', ["relu() takes 1 argument, got 2"]),
    ("sqrt of none", 'y = "sqrt()"', ["sqrt() takes 1 argument, got 0"]),
    ("mean of two arguments", 'y = "tanh(a) + mean(a, a)"', ["mean() takes 1 argument, got 2"]),
    ("mean of a number", 'y = "tanh(a) + mean(2)"', ["mean() averages a vector", "is a number"]),
    ("mean of an input", 'y = "tanh(a) + mean(x)"',
     ["mean() averages over the hidden units", "x is an input"]),
    ("sqrt of a negative constant", 'y = "tanh(a) + sqrt(0 - 1)"', ["not a finite real"]),
    ("a typo", 'y = "relus(a)"', ["unknown function 'relus'", "did you mean 'relu'"]),
    ("mean as a name", 'y = "tanh(a)"\nmean = "a * 2"', ["'mean' is a reserved word"]),
    ("relu as a name", 'y = "tanh(a)"\nrelu = "a * 2"', ["'relu' is a reserved word"]),
]


@pytest.mark.parametrize("rule,line,words", BAD, ids=[b[0] for b in BAD])
def test_each_misuse_names_file_line_and_problem(tmp_path, rule, line, words):
    path = tmp_path / "cell.toml"
    path.write_text(GOOD.replace(Y, line))
    with pytest.raises(SpecError) as info:
        derive.load_cell(path)
    message = str(info.value)
    assert message.startswith(str(path)) and "\n" not in message, message
    for w in words:
        assert w in message, message


def test_the_cli_reports_a_wrong_arity_in_one_line_with_exit_2(tmp_path):
    path = tmp_path / "cell.toml"
    path.write_text(GOOD.replace(Y, 'y = "relu(a, b)"'))
    run = subprocess.run([sys.executable, "-m", "derive", "equations", str(path)],
                         capture_output=True, text=True)
    assert run.returncode == 2 and run.stdout == "" and "Traceback" not in run.stderr
    (line,) = run.stderr.strip().splitlines()
    assert f"{path}:13:" in line and "relu() takes 1 argument, got 2" in line


def test_functions_and_mean_parse_into_the_vocabulary(tmp_path):
    path = tmp_path / "cell.toml"
    path.write_text(GOOD.replace(Y, 'y = "relu(a) + softplus(a) * sqrt(a**2 + 1) - mean(a)"'))
    e = derive.load_cell(path).nodes["y"].elementwise
    a = S.value("a")
    assert e == S.relu(a) + S.softplus(a) * S.sqrt(a ** 2 + 1) - S.Mean(a)


def test_functions_of_constants_are_their_float64_values(tmp_path):
    path = tmp_path / "cell.toml"
    path.write_text(GOOD.replace(Y, 'y = "tanh(a) + relu(0 - 2) + relu(3) + sqrt(4) '
                                    '+ softplus(0)"'))
    e = derive.load_cell(path).nodes["y"].elementwise
    const = e - S.tanh(S.value("a"))
    assert const.is_Float and float(const) == pytest.approx(3 + 2 + 0.6931471805599453,
                                                            abs=1e-15)


def test_the_derivatives_are_written_from_the_stored_output():
    a = S.value("a")
    assert sp.diff(S.relu(a), a) == S.step(S.relu(a))          # [relu(a) > 0] = [a > 0]
    assert sp.diff(S.softplus(a), a) == S.sigmoid(a)
    assert sp.diff(S.sqrt(a), a) == 1 / (2 * S.sqrt(a))
    assert S.drelu(a) == S.step(S.relu(a))
    assert sp.diff(S.step(a), a) == 0
    assert S.sqrt(a) ** 2 == a and S.sqrt(a) ** 4 == a ** 2


def test_mean_is_linear_and_takes_row_constants_outside():
    a, b = S.value("a"), S.value("b")
    m = S.Mean
    got = S.distribute_linear(m(2 * a * m(b) + 3 * b / S.sqrt(m(a ** 2) + 1) - a))
    assert sp.expand(got - (2 * m(a) * m(b) + 3 * m(b) / S.sqrt(m(a ** 2) + 1) - m(a))) == 0
    assert m(m(a)) == m(a) and m(sp.Integer(3)) == 3
    assert S.mean_of(a * b * S.value("s"), frozenset({"s"})) == S.value("s") * m(a * b)
