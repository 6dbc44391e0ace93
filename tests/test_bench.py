"""The benchmark harness: table layout, ratios, fractions of the GEMM peak, the machine it
names and the per-machine record (timings themselves are not tested)."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import derive
from derive import bench

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("bench_script", ROOT / "benchmarks/bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ratio_is_derive_time_over_peer_time_and_peak_a_fraction():
    r = bench.Result(rows=[bench.Row("lstm_np", "S1", "float32", "derive", 10.0, 80.0,
                                     gflop=8.0),
                           bench.Row("lstm_np", "S1", "float32", "torch", 30.0, 100.0,
                                     gflop=8.0),
                           bench.Row("lstm_np", "S1", "float32", "numpy", None, None, "failed")],
                     peak={"float32": 200.0})
    assert r.ratio("lstm_np", "S1", "float32", "torch") == 0.8
    assert r.ratio("lstm_np", "S1", "float32", "numpy") is None
    assert r.of_peak(r.rows[0]) == 8.0 / 0.08 / 200.0          # 100 GFlop/s of 200
    text = bench.table(r)
    assert ("| lstm_np | S1 | float32 | 10.0 | 80.0 | — | 100.0 | — | 0.80 | — | — | "
            "50 % | 40 % |") in text
    assert "failed" in text
    assert "float32 200 GFlop/s" in bench.peak_line(r)
    r.peak_runs = {"float32": [180.0, 200.0]}
    assert "float32 200 GFlop/s (180 at the start, 200 at the end)" in bench.peak_line(r)


def test_useful_flops_are_the_projections_of_the_pass():
    T, B, M, N = bench.SHAPES["S1"]
    assert np.isclose(bench.useful_gflop("lstm_np", (T, B, M, N)),
                      3 * 2 * T * B * 4 * N * (M + N) / 1e9)
    assert np.isclose(bench.useful_gflop("rnn", (T, B, M, N)), 3 * 2 * T * B * N * (M + N) / 1e9)
    # gru: r, u and h_bar read x; r and u read y[t-1], q reads r*y[t-1]: 3 N×M, 3 N×N
    assert np.isclose(bench.useful_gflop("gru", (T, B, M, N)),
                      3 * 2 * T * B * 3 * N * (M + N) / 1e9)


def test_vector_extensions_are_named():
    flags = "fpu sse4_2 avx avx2 fma avx512f avx512bw avx512vl avx512_bf16 avx512cd".split()
    assert bench.vector_extensions(flags) == \
        "SSE4.2, AVX, AVX2, FMA, AVX-512 (F, CD, BW, VL, BF16)"
    assert bench.vector_extensions(["sse4_2", "avx", "avx2", "fma"]) == "SSE4.2, AVX, AVX2, FMA"
    assert bench.vector_extensions(["fpu"]) == "none known"


def test_the_machine_names_its_blas_cores_and_threads():
    k = derive.load_kernel("rnn", "float64")
    np.ones((64, 64)) @ np.ones((64, 64))
    m = bench.machine(k)
    assert m["cpu"] and m["cpus"] >= 1 and m["kernel_threads"] == k.threads
    assert "-O" in m["kernel_flags"]
    kernels_blas = [b for b in m["blas"] if b["package"] == "scipy_openblas32"]
    assert kernels_blas and kernels_blas[0]["core"] and kernels_blas[0]["threads"] == 1
    assert all(b["core"] and b["config"].startswith("OpenBLAS") for b in m["blas"])
    text = bench.describe(m)
    assert f"core {kernels_blas[0]['core']}, 1 thread " in text
    assert bench.machine_key(m).endswith(f"{m['cpus']} CPUs")


def test_a_one_thread_run_names_the_same_machine(monkeypatch):
    """The machine's key counts its usable CPUs, not the kernel's threads: a run with
    DERIVE_NUM_THREADS=1 records into the same section of results.md."""
    both = bench.machine()
    monkeypatch.setenv("DERIVE_NUM_THREADS", "1")
    one = bench.machine()
    assert one["kernel_threads"] == 1
    assert one["cpus"] == both["cpus"] == len(os.sched_getaffinity(0))
    assert bench.machine_key(one) == bench.machine_key(both)


def test_each_timed_run_follows_an_untimed_run_of_the_same_callable():
    """Round-robin over the peers, and every timed run is the second of a back-to-back
    pair (the first wakes the peer's threads after the pause)."""
    log = []
    peers = {name: (lambda n=name: log.append((n, "fwd")), lambda n=name: log.append((n, "all")))
             for name in ("a", "b")}
    medians = bench.interleaved_ms(peers, repeats=2, warmup=0, pause=0)
    assert set(medians) == {"a", "b"}
    pairs = [log[i:i + 2] for i in range(0, len(log), 2)]
    assert all(first == second for first, second in pairs)
    assert [first for first, _ in pairs] == [("a", "fwd"), ("a", "all"), ("b", "fwd"),
                                             ("b", "all")] * 2


def test_gemm_peak_is_a_rate():
    assert bench.gemm_peak("float64", n=32, repeats=1, pause=0) > 0


def test_recording_keeps_the_other_machines_and_their_notes():
    script = _script()
    old = (f"{script.HEADER}\n<!-- machine: A -->\n## A\nold A\n<!-- end of machine -->\n\n"
           f"notes on A\n")
    with_b = script.record(old, "B", "<!-- machine: B -->\n## B\nB\n<!-- end of machine -->")
    assert with_b.index("## B") < with_b.index("## A") and "old A" in with_b
    assert with_b.endswith("notes on A\n")
    again = script.record(with_b, "A", "<!-- machine: A -->\n## A\nnew A\n"
                                       "<!-- end of machine -->")
    assert "old A" not in again and "new A" in again and "## B\nB" in again
    assert again.count("<!-- machine:") == 2 and "notes on A" in again
    recorded = (ROOT / "benchmarks/results.md").read_text()
    assert recorded.count("<!-- machine:") == recorded.count("<!-- end of machine -->") >= 1


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


def test_lstmp_useful_flops_count_the_projection_of_size_P():
    """lstmp at S1 (N=256, P=N//2=128): gates 4N×M on x and 4N×P on y[t-1], W_rm P×N."""
    T, B, M, N = bench.SHAPES["S1"]
    P = N // 2
    assert bench.sizes("lstmp", (T, B, M, N)) == {"M": M, "N": N, "P": P}
    assert np.isclose(bench.useful_gflop("lstmp", (T, B, M, N)),
                      3 * 2 * T * B * (4 * N * (M + P) + P * N) / 1e9)
    assert "P" not in bench.sizes("lstm_np", (T, B, M, N))


def test_lstmp_torch_peer_computes_the_same_sequence_as_the_kernel():
    """The peer nn.LSTM(proj_size=P) holds derive's weights (load_lstmp_weights): its
    output equals the lstmp kernel's on the same x (float64, T=4, B=3, M=5, N=6, P=3)."""
    torch = pytest.importorskip("torch")
    k = derive.load_kernel("lstmp", "float64")
    params = k.init_params(input_size=5, hidden_size=6, proj_size=3, seed=4)
    params["b_f"] = params["b_f"] + 0.5
    x = np.random.default_rng(3).standard_normal((4, 3, 5))
    net = torch.nn.LSTM(5, 6, proj_size=3).double()
    bench.load_lstmp_weights(net, params)
    out, _ = net(torch.from_numpy(x))
    np.testing.assert_allclose(out.detach().numpy(), k.forward(x, params).outputs, rtol=1e-12,
                               atol=1e-14)


@pytest.mark.parametrize("peer", ["derive", "numpy", "gemm", "torch"])
def test_every_peer_runs_lstmp(peer):
    """Each peer of an lstmp row runs forward and forward+backward at P = N // 2."""
    if peer == "torch":
        pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    shape = (3, 2, 5, 6)
    make = {"derive": lambda: bench._derive_peer("lstmp", None, "float64", shape, rng),
            "numpy": lambda: bench._derive_peer("lstmp", "numpy", "float64", shape, rng),
            "gemm": lambda: bench._gemm_peer("lstmp", "float64", shape, rng),
            "torch": lambda: bench._torch_peer("lstmp", "float64", shape, rng)}[peer]
    forward, total = make()
    forward()
    total()


def test_the_table_states_the_projection_size():
    r = bench.Result(rows=[bench.Row("lstmp", "S1", "float32", "derive", 1.0, 2.0),
                           bench.Row("lstmp", "S2", "float32", "derive", 1.0, 2.0)])
    assert ("- lstmp: projection size P = N // 2 (S1 P=128, S2 P=256); torch: "
            "nn.LSTM(proj_size=P) with the same weights") in bench.table(r)


def test_the_script_takes_cells_as_an_option_and_states_the_load(monkeypatch, capsys):
    """benchmarks/bench.py --cells lstmp --shapes S1 S2: those cells and shapes reach
    bench.run (stubbed: timings are not tested), and the load average is printed."""
    script = _script()
    seen = {}

    def run(cells, shapes, repeats, progress):
        seen.update(cells=cells, shapes=shapes, repeats=repeats)
        return bench.Result(rows=[bench.Row("lstmp", "S1", "float32", "derive", 1.0, 2.0)],
                            machine=bench.machine())

    monkeypatch.setattr(script.bench, "run", run)
    assert script.main(["--cells", "lstmp", "--shapes", "S1", "S2", "--repeats", "5"]) == 0
    assert seen == {"cells": ["lstmp"], "shapes": ["S1", "S2"], "repeats": 5}
    out = capsys.readouterr().out
    assert "| lstmp | S1 | float32 |" in out and "load average (1 min):" in out
    with pytest.raises(SystemExit):
        script.main(["--cells", "lstmpp"])
    assert "unknown cell" in capsys.readouterr().err
