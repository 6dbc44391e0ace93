"""Fuzzing the grammar (issue 9): random compositions of every function and operator,
literals of every size, deep nesting and long chains, in cell files and in `derive verify`.

Properties, for every generated input, through the command line's `main()` in-process:
exit 0, 1 or 2; never a traceback (any exception fails); a one-line error for exit 2; done
within `LIMIT` seconds. For cells that load, the derivation passes a float64
central-difference gradient check (where the forward pass is finite and the finite
differences are well conditioned: two step sizes agree), and a few are compiled and
`derive check`ed (slow profile only: about 20 s of compiling each).

Profiles: the default (CI) runs `CI_EXAMPLES` examples per property, derandomized (the
same examples on every run); the long one (`-m slow`) runs `LONG_EXAMPLES`, also
derandomized with its own database-free settings.
"""

from __future__ import annotations

import contextlib
import io
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from limits import cell_text, time_limit

from derive.cli.main import main

LIMIT = 10            # seconds per input (the acceptance figure for nested tanh is 5)
CI_EXAMPLES = 80
LONG_EXAMPLES = 2000

FUNCTIONS = ["tanh", "sigmoid", "exp", "log"]
NOTATION_FUNCTIONS = FUNCTIONS + ["dsigmoid", "dtanh"]
OPERATORS = ["+", "-", "*", "/"]


def _settings(examples: int):
    return settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                           HealthCheck.data_too_large])


CI = _settings(CI_EXAMPLES)
LONG = _settings(LONG_EXAMPLES)


# --- strategies ---------------------------------------------------------------------------

def literals():
    """Numbers of every size: small, huge, tiny, not finite, over Python's 4300 digits."""
    return st.one_of(
        st.integers(0, 20).map(str),
        st.integers(0, 10 ** 600).map(str),
        st.floats(min_value=0, allow_nan=False, allow_infinity=False).map(repr),
        st.sampled_from(["1e400", "1e-400", "0.5", "0", "0.0", "1e308", "2.5e-8", "9" * 5000,
                         "1" + "0" * 450]),
    )


def exponents():
    return st.one_of(st.integers(0, 5).map(str), st.integers(-3, -1).map(lambda k: f"({k})"),
                     st.sampled_from(["0.5", "(1/3)", "17", "(9**9**9)", "2**99999999",
                                      "(-1)", "1e400", "16"]))


def expressions(leaves, functions):
    """Random compositions of `functions` and every operator over `leaves` and literals."""
    base = st.one_of(st.sampled_from(leaves), literals())

    def extend(inner):
        return st.one_of(
            st.tuples(st.sampled_from(functions), inner).map(lambda t: f"{t[0]}({t[1]})"),
            st.tuples(inner, st.sampled_from(OPERATORS), inner)
            .map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
            st.tuples(inner, exponents()).map(lambda t: f"({t[0]})**{t[1]}"),
            inner.map(lambda e: f"-{e}"),
        )

    small = st.recursive(base, extend, max_leaves=12)
    nested = st.tuples(st.lists(st.sampled_from(functions), min_size=1, max_size=160), small) \
        .map(lambda t: "".join(f + "(" for f in t[0]) + t[1] + ")" * len(t[0]))
    chain = st.tuples(st.lists(small, min_size=2, max_size=1500), st.sampled_from(OPERATORS)) \
        .map(lambda t: f" {t[1]} ".join(t[0]))
    return st.one_of(small, small, nested, chain)


CELL_LEAVES = ["a", "a", "y[t-1]", "b"]
VERIFY_LEAVES = ["c[t]", "dy[t]", "o[t]", "f[t+1]", "dc[t+1]", "p_o", "Delta[t]", "z_bar[t]",
                 "(R_z.T @ dz_bar[t+1])", "i[t-1]", "df_bar[t+1]", "p_i"]
TARGETS = ["dc[t]", "dy[t]", "dp_f[t]", "dc0", "dW_z[t]", "do_bar[t+1]"]


def cell_nodes():
    """A node y of an Elman-like cell (y must read a, the projection, to be a valid cell)."""
    return expressions(CELL_LEAVES, FUNCTIONS).map(
        lambda e: e if re.search(r"\ba\b", e) else f"({e}) * a")


def equations():
    return st.tuples(st.sampled_from(TARGETS), expressions(VERIFY_LEAVES, NOTATION_FUNCTIONS)) \
        .map(lambda t: f"{t[0]} = {t[1]}")


LATEX_LEAVES = [r"c^{(t)}", r"\delta y^{(t)}", r"o^{(t)}", r"f^{(t+1)}", r"\delta c^{(t+1)}",
                r"p_{o}", r"\Delta^{(t)}", r"\bar{z}^{(t)}", r"R_{z}^{\top} \delta\bar{z}^{(t+1)}"]
LATEX_TARGETS = [r"\delta c^{(t)}", r"\delta y^{(t)}", r"\delta\bar{o}^{(t)}"]


def latex_expressions():
    """The same compositions written in the LaTeX that `derive equations` prints."""
    base = st.one_of(st.sampled_from(LATEX_LEAVES), literals())

    def extend(inner):
        return st.one_of(
            st.tuples(st.sampled_from([r"\tanh", r"\sigma", r"\exp", r"\log"]), inner)
            .map(lambda t: f"{t[0]}\\left({t[1]}\\right)"),
            st.tuples(inner, st.sampled_from(["+", "-", r"\odot"]), inner)
            .map(lambda t: f"\\left({t[0]} {t[1]} {t[2]}\\right)"),
            st.tuples(inner, inner).map(lambda t: f"\\frac{{{t[0]}}}{{{t[1]}}}"),
            st.tuples(inner, st.integers(0, 20)).map(lambda t: f"\\left({t[0]}\\right)^{{{t[1]}}}"),
        )

    small = st.recursive(base, extend, max_leaves=10)
    chain = st.lists(small, min_size=2, max_size=600).map(" + ".join)
    return st.one_of(small, small, chain)


def latex_equations():
    return st.tuples(st.sampled_from(LATEX_TARGETS), latex_expressions()) \
        .map(lambda t: f"{t[0]} = {t[1]}")


# --- properties -----------------------------------------------------------------------------

_TMP = Path(tempfile.mkdtemp(prefix="derive-fuzz-"))


def run(argv) -> tuple[int, str, str]:
    """`derive ARGV` in-process within LIMIT seconds: (code, stdout, stderr); an exception
    (a traceback) propagates and fails the property."""
    out, err = io.StringIO(), io.StringIO()
    with time_limit(LIMIT), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def assert_clean_exit(code: int, err: str):
    assert code in (0, 1, 2), (code, err)
    assert "Traceback" not in err, err
    if code == 2:
        assert len(err.strip().splitlines()) == 1 and err.startswith("derive: error: "), err


def cell_property(node: str) -> Path | None:
    """The cell file's properties; its path when it loaded."""
    path = _TMP / "fuzz.toml"
    path.write_text(cell_text(node.replace("\\", "\\\\").replace('"', '\\"'), name="fuzz"))
    code, out, err = run(["equations", path])
    assert_clean_exit(code, err)
    event(f"equations exit {code}")
    if code != 0:
        return None
    assert "da[t] = " in out
    gradient_property(path)
    return path


def relative_error(got: np.ndarray, want: np.ndarray, floor: float = 1e-4) -> float:
    """max |got − want| / max(|got|, |want|, floor), entry by entry (inf where not finite)."""
    error = np.abs(got - want) / np.maximum(np.maximum(np.abs(got), np.abs(want)), floor)
    return float(np.max(error)) if np.all(np.isfinite(error)) else np.inf


def gradient_property(path: Path):
    """The derivation against central differences, where they can be trusted."""
    from derive import check
    from derive.derivation import derive
    subject = check.of_derivation(derive(path))
    with np.errstate(all="ignore"), time_limit(LIMIT):
        problem = check.random_problem(subject, dict(T=3, B=2, M=2, N=3), seed=11)
        values = np.concatenate([np.ravel(v) for v in subject.outputs(problem).values()])
        if not (np.all(np.isfinite(values)) and np.max(np.abs(values)) < 1e4):
            event("gradient check: forward not finite or over 1e4")
            return
        grads = subject.gradients(problem)
        if not all(np.all(np.isfinite(g)) for g in grads.values()):
            event("gradient check: backward overflows in float64")
            return  # like tanh(1e304 / a): 0 * inf in float64, not a wrong derivation
        fd = {name: check.central_differences(subject, problem, array)
              for name, array in problem.targets()}
        fd2 = {name: check.central_differences(subject, problem, array, step=check.STEP / 2)
               for name, array in problem.targets()}
    for name in fd:
        if relative_error(fd2[name], fd[name]) > 1e-7:
            event("gradient check: finite differences ill-conditioned")
            return  # the finite differences disagree with themselves: no verdict
    for name in fd:
        assert relative_error(grads[name], fd[name]) <= 1e-6, name
    event("gradient check: passed")


def verify_property(equation: str, latex: bool = False):
    code, out, err = run(["verify", "lstm", *(["--latex"] if latex else []), equation])
    assert_clean_exit(code, err)
    event(f"verify exit {code}")
    if code in (0, 1):
        assert any(v in out for v in ("EQUAL", "DIFFERS", "CANNOT DECIDE")), out


@CI
@given(cell_nodes())
def test_fuzzed_cell_files_exit_cleanly_in_time_and_derive_correct_gradients(node):
    cell_property(node)


@CI
@given(equations())
def test_fuzzed_equations_exit_cleanly_in_time(equation):
    verify_property(equation)


@CI
@given(latex_equations())
def test_fuzzed_latex_equations_exit_cleanly_in_time(equation):
    verify_property(equation, latex=True)


@pytest.mark.slow
@LONG
@given(cell_nodes())
def test_fuzzed_cell_files_long(node):
    cell_property(node)


@pytest.mark.slow
@LONG
@given(equations())
def test_fuzzed_equations_long(equation):
    verify_property(equation)


@pytest.mark.slow
@LONG
@given(latex_equations())
def test_fuzzed_latex_equations_long(equation):
    verify_property(equation, latex=True)


# --- a few compiled and checked (slow: a compile each) ----------------------------------------

def compilable_nodes():
    """Smooth, bounded compositions (no log, no division): every one must compile and pass
    `derive check`."""
    leaves = ["a", "y[t-1]", "b", "0.5", "2"]
    base = st.sampled_from(leaves)

    def extend(inner):
        return st.one_of(
            st.tuples(st.sampled_from(["tanh", "sigmoid"]), inner).map(lambda t: f"{t[0]}({t[1]})"),
            st.tuples(inner, st.sampled_from(["+", "-", "*"]), inner)
            .map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
        )
    return st.recursive(base, extend, max_leaves=8).map(
        lambda e: f"tanh({e}) + a" if not re.search(r"\ba\b", e) else f"tanh({e})")


@pytest.mark.slow
@settings(max_examples=3, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(compilable_nodes())
def test_a_few_fuzzed_cells_compile_and_pass_derive_check(node):
    path = _TMP / "fuzz_check.toml"
    path.write_text(cell_text(node, name="fuzz_check"))
    code = main(["check", str(path)])
    assert code == 0, node
