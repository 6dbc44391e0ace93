"""Errors that reach users.

`UserError` and its subclasses are mistakes in what a user gave us (a spec, an
equation, a command-line argument). The command line prints them as one line on
stderr and exits with code 2; no traceback.
"""

from __future__ import annotations

import difflib


class UserError(Exception):
    """A mistake in user input; the message says what is wrong and how to fix it."""


class SpecError(UserError):
    """A cell spec is invalid: the message names the file, the line and the fix."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None):
        self.path, self.line, self.detail = path, line, message
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line else f"{path}: "
        super().__init__(where + message)


class ExpressionError(UserError):
    """An expression does not follow the grammar; `column` is 1-based when known."""

    def __init__(self, message: str, *, text: str = "", column: int | None = None):
        self.text, self.column, self.detail = text, column, message
        if column is not None:
            message = f"{message} (column {column}: {_excerpt(text, column)})"
        super().__init__(message)


def _excerpt(text: str, column: int, width: int = 24) -> str:
    start = max(0, column - 1 - width // 2)
    piece = text[start:start + width]
    return repr(piece) if piece else "end of input"


def suggest(name: str, known) -> str:
    """' (did you mean X?)' for the closest known name, or ''."""
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
