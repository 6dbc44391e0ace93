"""Instruction-set levels of the compiled kernels, and which one runs on this CPU.

A kernel's generated source is the same for every level; each level is a separate
compilation of it with its own -m flags, hence its own extension module (the cache key
and the module name differ by level). Inside the source, the per-step small product picks
its tile with the level's compiler macro (`Level.macro`, see derive.kernel.lower.TILES),
and GCC vectorizes the element-wise loops at the level's width (libmvec supplies
`expf`/`tanhf`… in SSE, AVX2 and AVX-512 variants).

The level that runs is the widest one the CPU supports (read from /proc/cpuinfo on
x86-64), unless the environment variable DERIVE_ISA names a lower one (for tests and
comparisons). A level higher than the CPU has, or an unknown name, is a UserError.
This module imports nothing outside the standard library and derive.errors.
"""

from __future__ import annotations

import os
import platform
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from derive.errors import UserError

ENV = "DERIVE_ISA"


@dataclass(frozen=True)
class Level:
    """One instruction-set level: its compiler flags, the CPU features it needs (names
    of /proc/cpuinfo's flags line) and the C macro the compiler defines for it."""

    name: str
    cflags: tuple[str, ...]
    cpu: frozenset[str]
    macro: str


#: the levels, narrowest first; every x86-64 CPU runs the first
LEVELS = (
    Level("portable", (), frozenset(), ""),
    Level("avx2", ("-mavx2", "-mfma"), frozenset({"avx2", "fma"}), "__AVX2__"),
    Level("avx512", ("-mavx2", "-mfma", "-mavx512f", "-mavx512bw", "-mavx512dq",
                     "-mavx512vl", "-mprefer-vector-width=512"),
          frozenset({"avx2", "fma", "avx512f", "avx512bw", "avx512dq", "avx512vl"}),
          "__AVX512F__"),
)
NAMES = tuple(level.name for level in LEVELS)


def level(name: str) -> Level:
    """The level called `name` (a UserError naming the choices otherwise)."""
    for lv in LEVELS:
        if lv.name == name:
            return lv
    raise UserError(f"unknown instruction-set level {name!r}; choose one of "
                    f"{', '.join(NAMES)}")


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The feature flags of this CPU (empty where /proc/cpuinfo is not readable)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    m = re.search(r"^flags\s*:(.*)$", text, re.M)
    return frozenset(m.group(1).split()) if m else frozenset()


def x86_64() -> bool:
    return platform.machine() in ("x86_64", "AMD64")


def supported() -> tuple[Level, ...]:
    """The levels this machine runs, narrowest first (only `portable` off x86-64)."""
    if not x86_64():
        return LEVELS[:1]
    return tuple(lv for lv in LEVELS if lv.cpu <= cpu_flags())


def best() -> Level:
    """The widest level this CPU runs."""
    return supported()[-1]


def selected() -> Level:
    """The level kernels run at: $DERIVE_ISA if set (at most the CPU's), else the best."""
    name = os.environ.get(ENV, "").strip()
    if not name:
        return best()
    if name not in NAMES:
        raise UserError(f"{ENV}={name}: unknown instruction-set level; choose one of "
                        f"{', '.join(NAMES)}")
    wanted = level(name)
    if wanted not in supported():
        raise UserError(f"{ENV}={name}: this CPU supports at most {best().name} "
                        f"({', '.join(lv.name for lv in supported())})")
    return wanted
