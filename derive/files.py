"""Where derive's own files are: its templates, installed or in a checkout.

In a checkout (a folder with pyproject.toml and templates/ beside the package) the
checkout's templates/ is used, so a plain checkout on ``PYTHONPATH`` works and an
editable install follows the tree it was made from; an installed package reads the
package ``derive.templates`` that pyproject.toml maps templates/ to.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path

#: the checkout this package lies in, if it lies in one
_ROOT = Path(__file__).resolve().parent.parent


def checkout_root() -> Path | None:
    """The root of the checkout this package is imported from, or None when installed."""
    if (_ROOT / "pyproject.toml").is_file() and (_ROOT / "templates").is_dir():
        return _ROOT
    return None


@lru_cache(maxsize=1)
def template_dir() -> Path:
    """The folder of the Jinja2 templates (``*.j2``)."""
    root = checkout_root()
    if root is not None:
        return root / "templates"
    return Path(str(resources.files("derive.templates")))
