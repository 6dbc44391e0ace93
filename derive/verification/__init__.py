"""Stage 8 — verify: hand derivations (text notation or LaTeX) against the derived truth.

* `notation`, `latex` read the text notation and LaTeX; `equation` reads one equation
  in either;
* `context` holds what one cell's verifications share: the derived truth of a target,
  the canonical form across steps, random unrolled sequences;
* `verdict` decides the verdict (`verify`), `diagnosis` names and classifies the
  wrong terms, `report` is the result as text or JSON.

The API's function is `derive.verify` (this package is `derive.verification`).
"""

from derive.verification.report import Verification
from derive.verification.verdict import verify

__all__ = ["Verification", "verify"]
