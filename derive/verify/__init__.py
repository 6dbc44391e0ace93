"""Stage 8 — verify: hand derivations (text notation or LaTeX) against the derived truth."""

from derive.verify.verification import Verification, verify

__all__ = ["Verification", "verify"]
