"""`derive verify CELL EQUATION... [--file F] [--latex] [--json]`: the command's input and
output; the verdicts are `derive.verify`'s."""

from __future__ import annotations

import json
import sys

from derive.cell.spec import load_cell
from derive.errors import UserError
from derive.verification import report
from derive.verification.context import context
from derive.verification.equation import read_equation
from derive.verification.verdict import check


def read_equations(equations: list[str], file: str | None, latex: bool) -> list[tuple[str, str]]:
    """[(where, equation)] from the command line and a file (one a line, comments skipped)."""
    out = [(f"equation {k}", e) for k, e in enumerate(equations, 1)]
    if file is not None:
        try:
            with open(file, encoding="utf-8") as fh:
                text = fh.read(1_000_001)
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"cannot read {file}: {exc}") from None
        if len(text) > 1_000_000:
            raise UserError(f"{file} is larger than 1 MB")
        for number, line in enumerate(text.splitlines(), 1):
            body = _strip_comment(line, latex).strip()
            if body:
                out.append((f"{file}:{number}", body))
    if not out:
        raise UserError("nothing to verify: give an EQUATION (like \"dc[t] = ...\") or --file F")
    return out


def _strip_comment(line: str, latex: bool) -> str:
    if latex:
        out = []
        for k, ch in enumerate(line):
            if ch == "%" and (k == 0 or line[k - 1] != "\\"):
                break
            out.append(ch)
        return "".join(out)
    return line.split("#", 1)[0]


def run_verify(cell, equations: list[str], file: str | None = None, latex: bool = False,
               as_json: bool = False) -> int:
    """`derive verify`: 0 when every equation is equal, 1 when any differs or is undecided,
    2 (a UserError) for bad input — every equation is read before any is verified."""
    loaded = load_cell(cell)
    items = read_equations(list(equations or []), file, latex)
    parsed = []
    for where, text in items:
        try:
            parsed.append((text, read_equation(loaded, text, latex)))
        except UserError as exc:
            prefix = f"{where}: " if (file is not None or len(items) > 1) else ""
            raise UserError(f"{prefix}{exc}") from None
    ctx = context(loaded)
    results = []
    for text, equation in parsed:
        try:
            results.append(check(ctx, text, equation))
        except UserError as exc:
            raise UserError(f"{text.strip()[:60]}: {exc}") from None
    if as_json:
        sys.stdout.write(json.dumps(report.as_json(loaded.name, results), indent=2,
                                    ensure_ascii=False, allow_nan=False) + "\n")
    else:
        sys.stdout.write(report.as_text(results))
    return 0 if all(v.equal for v in results) else 1
