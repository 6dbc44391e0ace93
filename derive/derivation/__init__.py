"""Stage 2 — the derivation: reverse mode over a cell's graph with SymPy (`backward`)."""

from derive.derivation.backward import Derivation, Flow, derive

__all__ = ["Derivation", "Flow", "derive"]
