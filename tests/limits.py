"""Helpers for tests of bounded work: a wall-clock limit that interrupts pure-Python work,
and cell files built around a node expression."""

from __future__ import annotations

import contextlib
import signal
import time

#: how far past a stated limit the default suite lets work run before interrupting it. The
#: default suite guards against runaway work (the defects these tests keep fixed took
#: 99 s or never finished), not against a slow or shared machine; the stated figures
#: themselves are asserted by the tests marked slow (`strict=True`).
GUARD = 6


class TimeLimit(Exception):
    """Raised inside the block when it runs past its limit."""


@contextlib.contextmanager
def time_limit(seconds: float, strict: bool = False):
    """Interrupt the block (SIGALRM, main thread) after `seconds` (strict) or GUARD times
    that (the default suite); yields a dict whose 'seconds' is the elapsed time once the
    block is done."""
    seconds = seconds if strict else GUARD * seconds

    def on_alarm(signum, frame):
        raise TimeLimit(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    out = {}
    started = time.perf_counter()
    try:
        yield out
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        out["seconds"] = time.perf_counter() - started


def cell_text(node: str, name: str = "hostile", extra_nodes: str = "") -> str:
    """An Elman-like cell whose output y is `node`, an expression of the pre-activation a."""
    return f'''\
name = "{name}"
inputs = ["x"]
state = ["y"]
outputs = ["y"]

[parameters]
W = ["N", "M"]
R = ["N", "N"]
b = ["N"]

[nodes]
a = "W @ x + R @ y[t-1] + b"
{extra_nodes}y = "{node}"
'''


def nested(function: str, depth: int, inner: str = "a") -> str:
    """function(function(…(inner)…)), `depth` deep."""
    return f"{function}(" * depth + inner + ")" * depth
