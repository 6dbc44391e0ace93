"""Stage 1 — the cell: its expression grammar, the SymPy vocabulary of a step, the spec.

* `grammar` parses one expression of a cell file (or of a hand derivation) against the
  grammar, never evaluating code;
* `symbols` is the vocabulary: forward values, deltas, Δ, parameters, matrix products;
* `spec` reads and validates a cell file into a forward graph (`Cell`), and resolves
  a shipped cell's name or a path to its file.
"""

from derive.cell.spec import Cell, load_cell, shipped_cells

__all__ = ["Cell", "load_cell", "shipped_cells"]
