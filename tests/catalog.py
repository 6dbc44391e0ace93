"""The catalog of test cells: the cell files of tests/cells/, beside the shipped ones.

Every cell a test needs that is not shipped lives there as a file (its first comment
says what it stresses); tests take it by name:

    from catalog import cell_path, cell_text
    derive.load_cell(cell_path("weird"))
"""

from pathlib import Path

FOLDER = Path(__file__).resolve().parent / "cells"
NAMES = tuple(sorted(p.stem for p in FOLDER.glob("*.toml")))


def cell_path(name: str) -> str:
    """The path of tests/cells/<name>.toml (a KeyError for a name not in the catalog)."""
    if name not in NAMES:
        raise KeyError(f"no test cell {name!r} in {FOLDER} (there are: {', '.join(NAMES)})")
    return str(FOLDER / f"{name}.toml")


def cell_text(name: str) -> str:
    """The text of tests/cells/<name>.toml."""
    return Path(cell_path(name)).read_text()
