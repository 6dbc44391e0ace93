"""derive: symbolic back-propagation for recurrent cells, from spec to compiled kernel.

    import derive
    cell = derive.load_cell("lstm")              # a shipped name or a path to a .toml spec
    d = derive.derive(cell)                      # structured, expanded and flows of every δ
    v = derive.verify(cell, "dc[t] = ...")       # a hand derivation against the derived truth
    k = derive.load_kernel("lstm", dtype="float64")   # the compiled, gradient-checked kernel
    g, norm = derive.clip_grad_norm(grads, max_norm)  # the article's gradient clipping

Names are imported on first use, so `import derive` stays cheap (SymPy is loaded only
by what needs it).
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "Cell": "cell", "load_cell": "cell", "shipped_cells": "cell",
    "Derivation": "derivation", "derive": "derivation",
    "ExpressionError": "errors", "SpecError": "errors", "UserError": "errors",
    "verify": "verification", "Verification": "verification",
    "load_kernel": "kernel.runtime", "Kernel": "kernel.runtime",
    "clip_grad_norm": "clip",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'derive' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
