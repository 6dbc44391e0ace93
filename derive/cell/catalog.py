"""Where a cell's spec lives: the shipped cells by name, or a path to a spec file.

This module imports no SymPy, so loading a cached kernel (derive.kernel.build) resolves
cells with it and stays fast; derive.cell.spec reads what it finds.
"""

from __future__ import annotations

import ast
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from derive.errors import SpecError, suggest


@dataclass(frozen=True)
class Source:
    """A cell's spec text and where it comes from (`path` as written in generated headers)."""

    text: str
    path: str
    shipped: bool


def shipped_cells() -> list[str]:
    """Names of the cells shipped with the package: lstm, its variants, then the others."""
    names = sorted(p.name[:-5] for p in resources.files("derive.cells").iterdir()
                   if p.name.endswith(".toml"))
    return sorted(names, key=lambda n: (n not in ("lstm",), not n.startswith("lstm"), n))


def resolve(cell: str) -> Source:
    """The spec of a shipped cell's name, or of a path to a spec file (a SpecError if none)."""
    shipped = shipped_cells()
    if cell in shipped:
        text = resources.files("derive.cells").joinpath(cell + ".toml").read_text("utf-8")
        return Source(text, f"derive/cells/{cell}.toml", True)
    path = Path(cell)
    if path.suffix == ".toml" or path.exists() or "/" in cell:
        if not path.is_file():
            raise SpecError(f"no such cell file (shipped cells: {', '.join(shipped)})", path=cell)
        try:
            return Source(path.read_text("utf-8"), str(path), False)
        except (OSError, UnicodeDecodeError) as exc:
            raise SpecError(f"cannot read the file: {exc}", path=cell) from None
    raise SpecError(f"unknown cell {cell!r}{suggest(cell, shipped)}; shipped cells: "
                    f"{', '.join(shipped)}, or give a path to a .toml spec")


#: functions whose derivative jumps at 0: a finite difference across it is meaningless
KINKED = ("relu",)


def has_kinks(text: str) -> bool:
    """Whether the cell file `text` applies a function of `KINKED` (read without SymPy;
    a file that does not parse has none: the spec loader reports it)."""
    try:
        nodes = tomllib.loads(text).get("nodes", {})
    except tomllib.TOMLDecodeError:
        return False
    for expr in nodes.values() if isinstance(nodes, dict) else ():
        try:
            tree = ast.parse(str(expr).strip(), mode="eval")
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            continue
        if any(isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
               and n.func.id in KINKED for n in ast.walk(tree)):
            return True
    return False
