"""benchmarks/phases.py, the per-phase profile: the instrumented copy of a kernel times
every call of its nogil functions and every parallel region, and computes what the
plain kernel computes (timings themselves are not tested)."""

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest

from derive.cell.spec import load_cell
from derive.derivation import derive
from derive.kernel import isa
from derive.kernel.emit import kernel_source
from derive.kernel.runtime import Kernel, load_kernel

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("phases_script",
                                                  ROOT / "benchmarks/phases.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Logged:
    """A kernel module whose forward and backward calls first call on_call(name, args)."""

    def __init__(self, module, on_call):
        self._module, self._on_call, self.__file__ = module, on_call, module.__file__

    def __getattr__(self, attr):
        value = getattr(self._module, attr)
        if attr not in ("forward", "backward"):
            return value

        def call(*args):
            self._on_call(attr, args)
            return value(*args)
        return call


def test_every_call_of_the_time_loops_and_every_region_is_timed():
    phases = _script()
    source = kernel_source(derive(load_cell("lstm_np")))
    text, labels, regions = phases.instrument(source, "cpu")
    assert labels == ["input GEMM (G_x = X·W_xᵀ, all steps)",
                      "packing the recurrent weights",
                      "per-step small product, forward", "element-wise forward",
                      "element-wise backward", "per-step small product, backward",
                      "after-loop GEMM: d[W_z W_i W_f W_o] = dG0ᵀ · x",
                      "after-loop GEMM: d[R_z R_i R_f R_o] = dG0ᵀ · y[t-1]",
                      "after-loop GEMM: dX_x = dG0 · W_x"]
    assert regions == ["forward: prepare", "backward: pack_backward"]   # one per pass
    assert "#define DERIVE_PHASE_CLOCK CLOCK_THREAD_CPUTIME_ID" in text
    # each call is preceded by a start and followed by its phase's sum, both dtypes
    lines = text.split("\n")
    for callee in ("derive_small_gemm_f32", "derive_small_gemm_f64", "_gemm(",
                   "_forward_step_f32(", "_backward_step_f64("):
        at = [i for i, line in enumerate(lines) if line.strip().startswith(callee)
              and "cdef" not in line]
        assert at, callee
        for i in at:
            assert lines[i - 1].strip() == "_t0 = derive_prof_start()", (callee, lines[i - 1])
    adds = re.findall(r"derive_prof_add\((\d+), _t0\)", text)
    assert sorted(set(map(int, adds))) == list(range(len(labels)))
    assert len(adds) == 2 * (len(labels) + 1)   # packing occurs twice per dtype
    assert len(re.findall(r"derive_region_begin\(\d+\)", text)) == len(regions)
    assert "derive_now() - t0" not in phases.instrument(source, "cpu")[0]


@pytest.mark.slow
def test_the_instrumented_kernel_computes_what_the_plain_one_does(tmp_path):
    phases = _script()
    source = kernel_source(derive(load_cell("lstm_np")))
    profiled, labels, regions = phases.instrument(source, "wall")
    level = isa.selected()
    plain = phases.compiled(source, "test_plain", level, tmp_path)
    timed = phases.compiled(profiled, "test_profiled", level, tmp_path)
    T, B, M, N = 5, 3, 4, 6
    rng = np.random.default_rng(1)
    x = rng.standard_normal((T, B, M))
    dy = rng.standard_normal((T, B, N))
    out = []
    for module in (plain, timed):
        k = Kernel(module, "cython", "float64", Path(module.__file__))
        params = k.init_params(input_size=M, hidden_size=N, seed=3)
        trace = k.forward(x, params)
        out.append((trace, k.backward(trace, dy)))
    (t0, g0), (t1, g1) = out
    np.testing.assert_array_equal(t0.outputs, t1.outputs)
    for name in g0:
        np.testing.assert_array_equal(g0[name], g1[name])
    busy, wall, lag = timed._profile(1, len(labels), len(regions))
    assert all(v > 0 for v in busy[0]) and all(v > 0 for v in wall)
    assert sum(busy[0]) <= sum(wall) + 1e-4
    assert all(0 <= late <= w for late, w in zip(lag, wall))
    assert timed._profile(1, len(labels), len(regions))[0][0] == [0.0] * len(labels)


def test_each_timed_run_follows_a_pause_and_an_untimed_run_in_a_new_order(monkeypatch):
    """Without them, the run after the GEMMs alone shares a core with OpenBLAS's spinning
    thread: a rotation made one variant always follow them (1.6 times slower at S1)."""
    phases = _script()
    log = []
    module = load_kernel("lstm_np", "float64").module
    variants = {v: (_Logged(module, lambda attr, args, v=v: log.append((v, attr))), None,
                    [], []) for v in ("a", "b")}
    monkeypatch.setattr(phases.time, "sleep", lambda seconds: log.append(("pause",)))
    monkeypatch.setattr(phases.bench, "_gemm_peer",
                        lambda *args: (None, lambda: log.append(("gemm", "run"))))
    rounds = 6
    phases.run(variants, "lstm_np", (3, 2, 5, 4), "float64", 1, rounds=rounds, pause=0.0)

    warmup = [("a", "forward"), ("a", "backward"), ("b", "forward"), ("b", "backward"),
              ("gemm", "run")]
    assert log[:5] == warmup
    runs = {v: [(v, "forward"), (v, "backward")] for v in ("a", "b")}
    runs["gemm"] = [("gemm", "run")]
    order, at = [], 5
    while at < len(log):           # each: a pause, the untimed run, the timed run
        assert log[at] == ("pause",), log[at:at + 5]
        who = log[at + 1][0]
        calls = runs[who]
        assert log[at + 1:at + 1 + 2 * len(calls)] == calls + calls, log[at:at + 5]
        order.append(who)
        at += 1 + 2 * len(calls)
    per_round = [order[r * 3:(r + 1) * 3] for r in range(rounds)]
    assert len(order) == 3 * rounds and all(sorted(r) == ["a", "b", "gemm"] for r in per_round)
    after_gemm = {r[r.index("gemm") + 1] for r in per_round if r.index("gemm") < 2}
    assert after_gemm == {"a", "b"}, per_round     # no variant always follows the GEMMs


def test_a_cell_with_a_projection_runs_with_p_half_of_n(monkeypatch):
    """lstmp needs proj_size: the run gives it P = N // 2, as bench.py does, and the
    output gradient dy has P columns (the run failed on init_params before)."""
    phases = _script()
    module = load_kernel("lstmp", "float64").module
    seen = []

    def dy_shape(attr, args):
        if attr == "backward":
            seen.append(args[5][0].shape)           # dY: one (T, B, P) array

    monkeypatch.setattr(phases.time, "sleep", lambda seconds: None)
    monkeypatch.setattr(phases.bench, "_gemm_peer", lambda *args: (None, lambda: None))
    result = phases.run({"a": (_Logged(module, dy_shape), None, [], [])}, "lstmp",
                        (3, 2, 5, 8), "float64", 1, rounds=2, pause=0.0)
    assert seen and set(seen) == {(3, 2, 4)}
    assert result["a", "plain"]["total"] > 0
