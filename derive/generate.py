"""Stage 4b — render: Jinja2 templates lay out the generated files.

Templates are thin: they loop over data prepared in Python (printing, rewrite) and
never decide anything. The environment is strict (an undefined name is an error) and
deterministic (same input, same bytes).

Every generated file starts with a header (`header_lines`), written by each template
in its own comment syntax: generated from which spec (and its hash), by which
template, do not edit, and the command that regenerates it.

`generate` writes, per cell, ``<out>/<cell>/equations.tex`` (standalone LaTeX),
``<out>/<cell>/equations.md`` (Markdown with ``$$`` math for GitHub) and every file of
`derive.kernel.emit.sources`, plus the index ``<out>/README.md``. Everything is rendered
in memory first, then each changed file is written atomically (temporary file +
rename), so an error leaves no half-written file. The temporary files name their
process (`derive.scratch`): those a killed run left (``.<file>.<host>~<pid>~….tmp``) are
removed by the next run, and reported by ``--check``; a running one's are left alone.
"""


from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from derive.cell.catalog import shipped_cells
from derive.cell.spec import Cell, load_cell
from derive.docs.documents import documents, index
from derive.docs.graph import is_picture, pictures
from derive.errors import UserError
from derive.files import checkout_root
from derive.kernel.emit import sources
from derive.printing.templates import INDEX, MARKER
from derive.scratch import is_stale, owner_tag, remove_stale

_TMP = ".*.tmp"  # the glob of _write's temporary files


def cell_files(d) -> dict[str, str | bytes]:
    """{file name: text or bytes} of one cell's folder: the documents, the pictures of the
    flows (SVG and PDF) and the kernel sources."""
    return {**documents(d), **pictures(d), **sources(d)}


def default_out() -> Path:
    """generated/ of this checkout (editable or source install), else ./generated."""
    root = checkout_root()
    return (root if root is not None else Path.cwd()) / "generated"


class GenerateResult(int):
    """The exit code of `generate` (0, or 1 when --check finds the folder stale).

    Its text is a summary for people (`derive` prints "wrote <result>").
    """

    summary: str

    def __new__(cls, code: int, summary: str):
        self = super().__new__(cls, code)
        self.summary = summary
        return self

    def __str__(self):
        return self.summary


@dataclass
class _Plan:
    """What differs between the rendered files and the output folder."""

    missing: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)


def generate(cells=None, out=None, check: bool = False, quiet: bool = False) -> int:
    """Write (or, with `check`, compare) the generated files of `cells` into `out`.

    `cells`: shipped names or spec paths (default: every shipped cell); `out`: the
    output folder (default `default_out()`). Returns 0, or 1 when `check` finds a file
    stale, missing or extra (files of ours, with the header, that would not be
    generated); a bad cell is a UserError. Progress goes to stderr unless `quiet`.
    """
    from derive.derivation import derive

    root = Path(out) if out is not None else default_out()
    if root.exists() and not root.is_dir():
        raise UserError(f"--out {root} is a file, not a folder")
    loaded = [load_cell(c) for c in (cells or shipped_cells())]
    names = [c.name for c in loaded]
    for name in names:
        if names.count(name) > 1:
            raise UserError(f"two cells are named {name!r}; each writes the folder {name}/")
    files: dict[str, str] = {}
    entries: dict[str, tuple[Cell, list[str]]] = {}
    for k, cell in enumerate(loaded, 1):
        if len(loaded) > 1 and not quiet:
            print(f"derive: [{k}/{len(loaded)}] {cell.name}", file=sys.stderr, flush=True)
        rendered = cell_files(derive(cell))
        files.update({f"{cell.name}/{f}": text for f, text in rendered.items()})
        entries[cell.name] = (cell, sorted(f for f in rendered if not is_picture(f)))
    for name in shipped_cells():  # shipped cells generated earlier stay in the index
        if name not in entries and (root / name / "equations.md").is_file():
            cell = load_cell(name)
            entries[name] = (cell, sorted(f for f in _ours(root / name) if not is_picture(f)))
    files[INDEX] = index([entries[n] for n in sorted(entries, key=_index_order)])

    plan = _compare(root, files, names)
    where = _shown(root)
    folders = [root] + [root / n for n in sorted(entries)]
    if check:
        for kind in ("stale", "missing", "extra"):
            for f in getattr(plan, kind):
                print(f"{kind}: {_shown(root / f)}")
        leftovers = [p for folder in folders if folder.is_dir()
                     for p in sorted(folder.glob(_TMP)) if is_stale(p)]
        for p in leftovers:
            print(f"leftover: {_shown(p)} (a killed run's temporary file; `derive generate` "
                  f"removes it)")
        bad = len(plan.stale) + len(plan.missing) + len(plan.extra) + len(leftovers)
        differ = bad - len(leftovers)
        summary = (f"{where}/ is stale ({differ} of {len(files)} files differ"
                   + (f", {len(leftovers)} leftover temporary files" if leftovers else "")
                   + "); regenerate with `derive generate`"
                   if bad else f"{where}/ is up to date ({len(files)} files)")
        if not quiet or bad:
            print(f"derive: {summary}", file=sys.stderr)
        return GenerateResult(1 if bad else 0, summary)
    for folder in folders:
        remove_stale(folder, _TMP)
    for f in plan.missing + plan.stale:
        _write(root / f, files[f])
    for f in plan.extra:
        _remove(root / f)
    changed = len(plan.missing) + len(plan.stale)
    summary = (f"{where}/ ({len(files)} files, {changed} changed"
               + (f", {len(plan.extra)} removed" if plan.extra else "") + ")")
    if not quiet:
        print(f"derive: wrote {summary}", file=sys.stderr)
    return GenerateResult(0, summary)


def _index_order(name: str):
    shipped = shipped_cells()
    return (name not in shipped, shipped.index(name) if name in shipped else 0, name)


def _ours(folder: Path) -> list[str]:
    """Names of the files in `folder` that carry a derive header."""
    out = []
    for p in folder.iterdir() if folder.is_dir() else ():
        if p.is_file():
            try:
                with p.open(encoding="utf-8") as fh:
                    head = [fh.readline() for _ in range(5)]
            except UnicodeDecodeError:   # a binary picture: the header is in its metadata
                head = [p.read_bytes().decode("latin-1")] if p.suffix == ".pdf" else []
            except OSError:
                continue
            if any(MARKER in line for line in head):
                out.append(p.name)
    return out


def _compare(root: Path, files: dict[str, str], cells: list[str]) -> _Plan:
    """Compare byte for byte; extra files are ours (with the header) in the cells' folders."""
    plan = _Plan()
    for rel in sorted(files):
        path = root / rel
        try:
            current = path.read_bytes() if path.is_file() else None
        except OSError:
            current = b""
        if current is None:
            plan.missing.append(rel)
        elif current != _bytes(files[rel]):
            plan.stale.append(rel)
    for name in cells:
        plan.extra += [f"{name}/{f}" for f in sorted(_ours(root / name))
                       if f"{name}/{f}" not in files]
    return plan


def _bytes(content: str | bytes) -> bytes:
    return content if isinstance(content, bytes) else content.encode("utf-8")


def _write(path: Path, text: str | bytes) -> None:
    """Write atomically: a temporary file in the same folder, then rename."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{owner_tag()}", suffix=".tmp",
                                   dir=path.parent)
    except OSError as exc:
        raise UserError(f"cannot write {_shown(path)}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(_bytes(text))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise UserError(f"cannot write {_shown(path)}: {exc.strerror or exc}") from None
        raise


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except OSError as exc:
        raise UserError(f"cannot remove {_shown(path)}: {exc.strerror or exc}") from None


def _shown(path: Path) -> str:
    """`path` relative to the working directory when it is inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
