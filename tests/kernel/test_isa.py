"""Instruction-set levels: each level's kernel is a separate compilation of the same source
with its own small-product tiles; the widest level the CPU runs is chosen at load time,
DERIVE_ISA forces a lower one. Every level this CPU runs is checked against the NumPy
reference and by float64 finite differences; a level it cannot run is still compiled."""

import os
import subprocess
import sys

import pytest
from agreement import assert_kernel_equals_reference

import derive
from derive.check import gradient_check
from derive.errors import UserError
from derive.kernel import build, isa
from derive.cell.spec import load_cell
from derive.derivation import derive as derive_cell
from derive.kernel.emit import kernel_source
from derive.kernel.lower import TILES

# B rows split over 2 threads give 13-14 rows each: a block of the level's rows (8 at
# avx512), a 4-row block and a remainder of single rows at every level; N = 37 fills the
# two-vector panels of every level (up to 32 floats) and leaves a partial one
SIZES = {"T": 4, "B": 27, "M": 5, "N": 37}


def _runs(level):
    return level in isa.supported()


def test_tiles_fill_one_vector_register_per_level():
    for per_type in TILES:
        widths = {t.macro: t.lanes * {"float": 4, "double": 8}[t.ctype] for t in per_type}
        assert widths == {"__AVX512F__": 64, "__AVX2__": 32, "": 16}
        assert [t.macro for t in per_type] == [lv.macro for lv in reversed(isa.LEVELS)]
        assert {t.macro: t.rows for t in per_type} == {"__AVX512F__": 8, "__AVX2__": 4, "": 4}
        assert {t.macro: t.ahead for t in per_type} == {"__AVX512F__": 16, "__AVX2__": 0, "": 0}


def test_the_kernel_source_instantiates_each_levels_tile():
    source = kernel_source(derive_cell(load_cell("rnn")))
    for per_type in TILES:
        for t in per_type:
            assert (f"DERIVE_SMALL_GEMM({t.ctype}, {t.suffix}, {t.lanes}, {t.rows}, {t.ahead})"
                    in source)


def test_the_selected_level_is_the_best_unless_forced(monkeypatch):
    monkeypatch.setattr(isa, "cpu_flags", lambda: frozenset({"avx2", "fma", "sse2"}))
    monkeypatch.setattr(isa, "x86_64", lambda: True)
    monkeypatch.delenv(isa.ENV, raising=False)
    assert isa.selected().name == "avx2"
    monkeypatch.setenv(isa.ENV, "portable")
    assert isa.selected().name == "portable"
    monkeypatch.setenv(isa.ENV, "avx512")
    with pytest.raises(UserError, match="supports at most avx2"):
        isa.selected()
    monkeypatch.setenv(isa.ENV, "sse9")
    with pytest.raises(UserError, match="DERIVE_ISA=sse9: unknown instruction-set level"):
        isa.selected()


def test_levels_have_their_own_flags_cache_key_and_module_name():
    text = build.spec_source("rnn")[1]
    paths = {lv.name: build.cached_path("rnn", text, level=lv) for lv in isa.LEVELS}
    assert len({folder for folder, _ in paths.values()}) == len(isa.LEVELS)
    assert len({mod for _, mod in paths.values()}) == len(isa.LEVELS)
    if isa.x86_64() and build._has_mvec():
        assert "-mavx512f" in build.compile_flags(level=isa.level("avx512"))["cflags"]
        assert "-mavx2" not in build.compile_flags(level=isa.level("portable"))["cflags"]


def test_a_level_above_the_cpu_is_a_one_line_error():
    above = [lv for lv in isa.LEVELS if lv not in isa.supported()]
    env = dict(os.environ, **{isa.ENV: above[0].name if above else "sse9"})
    proc = subprocess.run([sys.executable, "-m", "derive", "check", "rnn"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and isa.ENV in proc.stderr


def _check_level(cell, level, monkeypatch, rng):
    if not _runs(level):   # this CPU cannot run it: it must still compile
        assert build.build(cell, level=level, quiet=True).exists()
        return
    monkeypatch.setenv(isa.ENV, level.name)
    k = derive.load_kernel(cell, "float64", backend="cython")
    assert k.isa == level.name
    r = derive.load_kernel(cell, "float64", backend="numpy")
    assert_kernel_equals_reference(k, r, rng, *(SIZES[s] for s in "TBMN"), seed=3)
    report = gradient_check(cell, backend="cython", dtype="float64", sizes=SIZES)
    assert report.passed, report.table()
    report = gradient_check(cell, backend="cython", dtype="float32", sizes=SIZES)
    assert report.passed, report.table()


@pytest.mark.parametrize("level", isa.LEVELS, ids=isa.NAMES)
def test_every_level_matches_the_reference(level, monkeypatch, rng):
    _check_level("rnn", level, monkeypatch, rng)


@pytest.mark.slow
@pytest.mark.parametrize("cell", ["lstm_np", "gru", "lstmp"])
@pytest.mark.parametrize("level", isa.LEVELS, ids=isa.NAMES)
def test_every_level_matches_the_reference_slow(cell, level, monkeypatch, rng):
    _check_level(cell, level, monkeypatch, rng)


def test_a_level_the_cpu_lacks_compiles_but_is_not_selected(monkeypatch):
    """As on an AVX2-only machine: the AVX-512 build is still produced, never loaded."""
    monkeypatch.setattr(isa, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    monkeypatch.setattr(isa, "x86_64", lambda: True)
    monkeypatch.delenv(isa.ENV, raising=False)
    wide = isa.level("avx512")
    assert wide not in isa.supported() and isa.selected().name == "avx2"
    assert build.build("rnn", level=wide, quiet=True).exists()
    monkeypatch.setenv(isa.ENV, "avx512")
    with pytest.raises(UserError, match="supports at most avx2"):
        derive.load_kernel("rnn", "float64", backend="cython")
