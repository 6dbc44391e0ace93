"""Kernel sources of a cell (Cython kernel, NumPy reference), rendered from its derivation.

`sources(d)` maps a file name inside generated/<cell>/ to its text. Owned by the kernel
stage; `derive generate` writes whatever it returns beside the documents.
"""

from __future__ import annotations


def sources(d) -> dict[str, str]:
    """{"kernel.pyx": ..., "reference.py": ...} for the derivation `d` (not yet built)."""
    return {}
