"""Pictures with matplotlib, deterministic: same figure, same bytes.

Figures are plain `matplotlib.figure.Figure` objects (no pyplot, no backend switch, no
global figure registry), drawn and saved inside `style()`: fixed settings (`svg.hashsalt`,
text of SVG drawn as paths, DejaVu fonts as shipped with matplotlib) applied with
`matplotlib.rc_context`, so the caller's settings (a notebook's) are left as they were.
No date goes into the metadata, so SVG, PDF and PNG files depend only on the figure and
on matplotlib's version. `import derive` never imports matplotlib; only drawing does.
"""

from __future__ import annotations

import io
import os
from contextlib import contextmanager
from pathlib import Path

from derive.errors import UserError

FORMATS = ("svg", "png", "pdf")

_RC = {
    "svg.hashsalt": "derive",
    "svg.fonttype": "path",
    "pdf.fonttype": 3,
    "font.family": "DejaVu Sans",
    "mathtext.fontset": "dejavusans",
    "figure.dpi": 100,
    "savefig.dpi": 100,
    "path.simplify": True,
}


@contextmanager
def style():
    """derive's fixed matplotlib settings, for drawing and saving a figure."""
    import matplotlib
    with matplotlib.rc_context(_RC):
        yield matplotlib.rcParams


def new_figure(**kwargs):
    """A matplotlib Figure outside pyplot (call inside `style()`)."""
    from matplotlib.figure import Figure
    return Figure(**kwargs)


def _metadata(fmt: str, description: str | None) -> dict:
    if fmt == "svg":
        return {"Date": None, "Creator": "derive", **({"Description": description}
                                                        if description else {})}
    if fmt == "pdf":
        return {"CreationDate": None, "ModDate": None, "Creator": "derive",
                "Producer": "derive (matplotlib)", **({"Subject": description}
                                                      if description else {})}
    return {"Software": "derive (matplotlib)", **({"Description": description}
                                                  if description else {})}


def figure_bytes(fig, fmt: str, description: str | None = None) -> bytes:
    """The figure as `fmt` (svg, pdf, png) bytes; `description` goes into the metadata."""
    if fmt not in FORMATS:
        raise UserError(f"unknown picture format {fmt!r}; use one of {', '.join(FORMATS)}")
    buf = io.BytesIO()
    old = os.environ.pop("SOURCE_DATE_EPOCH", None)
    try:
        with style():
            fig.savefig(buf, format=fmt, metadata=_metadata(fmt, description))
    finally:
        if old is not None:
            os.environ["SOURCE_DATE_EPOCH"] = old
    return buf.getvalue()


def check_output(path: str) -> str:
    """The format of an output path (by its suffix); a UserError when it cannot be written."""
    p = Path(path)
    fmt = p.suffix[1:].lower()
    if fmt not in FORMATS:
        raise UserError(f"{path}: the file name must end in .svg, .png or .pdf")
    if p.exists() and p.is_dir():
        raise UserError(f"{path} is a folder")
    if not p.parent.is_dir():
        raise UserError(f"{path}: the folder {p.parent} does not exist")
    return fmt


def save_figure(fig, path: str, description: str | None = None) -> None:
    """Write the figure to `path` (format from the suffix), atomically."""
    fmt = check_output(path)
    data = figure_bytes(fig, fmt, description)
    write_bytes(path, data)


def write_bytes(path: str, data: bytes) -> None:
    """Write a file atomically (a temporary file in the same folder, then rename)."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, p)
    except OSError as exc:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
