"""Stage 1 — the cell: its expression grammar, the SymPy vocabulary of a step, the spec.

* `catalog` finds a cell's spec: a shipped cell's name or a path (no SymPy);
* `grammar` parses one expression of a cell file (or of a hand derivation) against the
  grammar, never evaluating code;
* `symbols` is the vocabulary: forward values, deltas, Δ, parameters, matrix products;
* `spec` reads and validates a cell file into a forward graph (`Cell`);
* `canonical` is the one normal form of expressions over a cell (activations as stored
  outputs, matrix products distributed, multiplied out).

Names are imported on first use, so `derive.cell.catalog` loads without SymPy.
"""

from __future__ import annotations

import importlib

_EXPORTS = {"Cell": "spec", "load_cell": "spec", "shipped_cells": "catalog"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'derive.cell' has no attribute {name!r}")
