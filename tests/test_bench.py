"""The benchmark harness: table layout and ratios (timings themselves are not tested)."""

import subprocess
import sys

from derive import bench


def test_ratio_is_derive_time_over_peer_time():
    r = bench.Result(rows=[bench.Row("lstm_np", "S1", "float32", "derive", 10.0, 80.0),
                           bench.Row("lstm_np", "S1", "float32", "torch", 30.0, 100.0),
                           bench.Row("lstm_np", "S1", "float32", "numpy", None, None, "failed")])
    assert r.ratio("lstm_np", "S1", "float32", "torch") == 0.8
    assert r.ratio("lstm_np", "S1", "float32", "numpy") is None
    text = bench.table(r)
    assert "| lstm_np | S1 | float32 | 10.0 | 80.0 | — | 100.0 | — | 0.80 | — | — |" in text
    assert "failed" in text


def test_bench_rejects_an_unknown_cell_with_exit_2():
    run = subprocess.run([sys.executable, "-m", "derive", "bench", "lstn"],
                         capture_output=True, text=True)
    assert run.returncode == 2 and "did you mean 'lstm'" in run.stderr


def test_bench_names_the_kernels_instruction_set_level(monkeypatch):
    from derive import bench
    from derive.kernel import isa
    monkeypatch.setenv(isa.ENV, "portable")
    assert bench.kernel_isa().startswith("portable (CPU: portable")
    monkeypatch.delenv(isa.ENV)
    assert bench.kernel_isa().startswith(isa.best().name + " ")
