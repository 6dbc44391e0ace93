"""Stage 8 — verify: hand derivations (text notation or LaTeX) against the derived truth.

* `notation`, `latex` read the text notation and LaTeX; `equation` reads one equation
  in either;
* `context` holds what one cell's verifications share: the derived truth of a target,
  the canonical form across steps, random unrolled sequences;
* `verification` decides the verdict (`verify`), `diagnosis` names and classifies the
  wrong terms, `report` is the result as text or JSON.

`derive.verify` is this package and the API's function at once: importing any of its
modules binds the package to the name `derive.verify`, so the package is callable, and
``derive.verify(cell, equation)`` is `verification.verify` whatever was imported first.
"""

import sys
import types

from derive.verify.report import Verification
from derive.verify.verification import verify

__all__ = ["Verification", "verify"]


class _Package(types.ModuleType):
    def __call__(self, cell, equation: str, latex: bool = False) -> Verification:
        return verify(cell, equation, latex=latex)


sys.modules[__name__].__class__ = _Package
