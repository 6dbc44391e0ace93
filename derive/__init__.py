"""derive: symbolic back-propagation for recurrent cells, from spec to compiled kernel.

    import derive
    cell = derive.load_cell("lstm")      # a shipped name or a path to a .toml spec
    d = derive.derive(cell)              # structured, expanded and flows of every δ
"""

from .derivation import Derivation, derive
from .errors import ExpressionError, SpecError, UserError
from .spec import Cell, load_cell, shipped_cells

__all__ = ["Cell", "Derivation", "ExpressionError", "SpecError", "UserError", "derive",
           "load_cell", "shipped_cells"]
__version__ = "0.1.0"
