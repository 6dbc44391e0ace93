"""The gradient check: report, command line, and that it catches a wrong gradient.

The derivation's own check (the same check with the derivation as its subject) is in
test_numeric.py; every shipped kernel's is in test_kernels.py.
"""

import json
import subprocess
import sys

import numpy as np
import pytest

from derive import check
from derive.kernel import runtime


def test_report_is_complete_and_json_able():
    report = check.gradient_check("rnn", backend="numpy", dtype="float64")
    assert report.passed and report.dtype == "float64"
    assert [r.name for r in report.rows] == ["W", "R", "b", "x", "y0"]
    s = report.sizes
    assert s["T"] >= 3 and s["B"] >= 2 and s["M"] != s["N"]
    assert "floor 1e-05" in report.summary() and "passed" in report.summary()
    table = report.table()
    assert "max rel err" in table and "max |g|" in table and "y0" in table and "non-zero initial state" in table
    data = json.loads(json.dumps(report.to_dict()))
    assert data["passed"] is True and data["rows"][0]["name"] == "W"


def test_float32_report_compares_with_float64():
    report = check.gradient_check("gru", backend="numpy", dtype="float32")
    assert report.passed, report.table()
    assert report.tolerance == check.TOLERANCE["float32"] and report.output_error < 1e-5
    assert "float64" in report.method


def test_a_wrong_gradient_fails_the_check(monkeypatch):
    real = runtime.Kernel.backward

    def off_by_a_bit(self, trace, d_outputs):
        grads = real(self, trace, d_outputs)
        grads["R_i"] = grads["R_i"] * (1 + 1e-4)   # a 0.01 % error in one gradient
        return grads

    monkeypatch.setattr(runtime.Kernel, "backward", off_by_a_bit)
    report = check.gradient_check("lstm", backend="numpy")
    assert not report.passed
    assert [r.name for r in report.rows if not r.passed] == ["R_i"]
    assert "FAILED (R_i)" in report.summary()
    assert check.run_check("lstm", backend="numpy") == 1


def test_a_transposed_initial_state_gradient_fails(monkeypatch):
    real = runtime.Kernel.backward

    def swapped(self, trace, d_outputs):
        grads = real(self, trace, d_outputs)
        grads["c0"] = grads["c0"][::-1].copy()     # batch rows swapped
        return grads

    monkeypatch.setattr(runtime.Kernel, "backward", swapped)
    report = check.gradient_check("lstm_cifg", backend="numpy")
    assert [r.name for r in report.rows if not r.passed] == ["c0"]


def test_cli_check_json_and_exit_codes():
    run = subprocess.run([sys.executable, "-m", "derive", "check", "rnn", "--backend", "numpy",
                          "--json"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    data = json.loads(run.stdout)
    assert data["passed"] and data["cell"] == "rnn" and data["backend"] == "numpy"
    run = subprocess.run([sys.executable, "-m", "derive", "check", "nope.toml"],
                         capture_output=True, text=True)
    assert run.returncode == 2 and "no such cell file" in run.stderr
    assert "Traceback" not in run.stderr


def test_kernel_and_derivation_are_checked_on_the_same_problem():
    """One problem for every subject: the kernel's and the derivation's gradients agree."""
    kernel = check.subject("gru", "cython")
    unrolled = check.subject("gru", "derivation")
    p = check.random_problem(kernel, seed=3)
    assert p.sizes == {k: v for k, v in check.SIZES.items() if k != "P"} \
        and check.random_problem(unrolled, seed=3).params.keys() \
        == p.params.keys()
    gk, gd = kernel.gradients(p), unrolled.gradients(p)
    assert set(gk) == set(gd) == {name for name, _ in p.targets()}
    for name in gd:
        np.testing.assert_allclose(gk[name], gd[name], rtol=0, atol=1e-12, err_msg=name)


def test_a_missing_gradient_fails(monkeypatch):
    real = runtime.Kernel.backward
    monkeypatch.setattr(runtime.Kernel, "backward",
                        lambda self, tr, d: {k: v for k, v in real(self, tr, d).items()
                                             if k != "b"})
    report = check.gradient_check("rnn", backend="numpy")
    assert [r.name for r in report.failures] == ["b"]


def test_cli_checks_the_derivation_in_float64_only():
    run = subprocess.run([sys.executable, "-m", "derive", "check", "rnn", "--backend",
                          "derivation"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("passed: 5 gradients of rnn (derivation, float64)")
    run = subprocess.run([sys.executable, "-m", "derive", "check", "rnn", "--backend",
                          "derivation", "--dtype", "float32"], capture_output=True, text=True)
    assert run.returncode == 2 and "float64 only" in run.stderr
    assert "Traceback" not in run.stderr


def test_unknown_dtype_is_an_error():
    with pytest.raises(ValueError, match="float32 or float64"):
        check.gradient_check("rnn", backend="numpy", dtype=np.int16)


def test_the_report_prints_the_sizes_it_used_with_P_for_lstmp(capsys):
    """derive check lstmp names N and P (and the arrays have those sizes: W_rm is P×N);
    a cell of one size N names no P."""
    assert check.run_check("lstmp", backend="numpy") == 0
    out = capsys.readouterr().out
    s = check.SIZES
    assert f"T={s['T']} B={s['B']} M={s['M']} N={s['N']} P={s['P']}, non-zero" in out
    assert f"W_rm         ({s['P']}, {s['N']})" in out
    assert f"R_z          ({s['N']}, {s['P']})" in out
    assert check.run_check("rnn", backend="numpy") == 0
    out = capsys.readouterr().out
    assert f"M={s['M']} N={s['N']}, non-zero" in out and "P=" not in out
    assert check.run_check("lstmp", backend="numpy", as_json=True) == 0
    assert json.loads(capsys.readouterr().out)["sizes"] == s
