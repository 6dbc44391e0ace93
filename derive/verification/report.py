"""The report of a verification: the verdict, the wrong terms, a counterexample; as text
(what `derive verify` prints) or as JSON.

`derive.verification.verdict` decides the verdict, `derive.verification.diagnosis` finds and
classifies the wrong terms (`Difference.kind` is one of `diagnosis.KINDS`).
"""

from __future__ import annotations

import math

from dataclasses import asdict, dataclass, field

import numpy as np

VERDICTS = ("equal", "differs", "cannot decide")


@dataclass
class Difference:
    """One wrong term: its flow, its kind (one of KINDS), the expected and the found term."""

    flow: str
    kind: str
    expected: str
    found: str
    detail: str = ""


@dataclass
class Counterexample:
    """A point of a random unrolled sequence where the two sides differ.

    `values` holds every symbol either side reads at step `step` (time index t = step),
    as nested lists: vectors are (batch, size) rows, parameters their matrices.
    """

    seed: int
    step: int
    sizes: dict
    values: dict[str, list]
    expected: list
    found: list
    max_abs_difference: float
    relative_difference: float


@dataclass
class Verification:
    """The verdict on one equation, with everything a report needs."""

    cell: str
    equation: str
    target: str
    expected: str = ""
    found: str = ""
    verdict: str = "cannot decide"
    reason: str = ""
    method: str = ""
    differences: list[Difference] = field(default_factory=list)
    difference: str = ""
    canonical_difference: str = ""
    counterexample: Counterexample | None = None
    numeric: dict = field(default_factory=dict)
    shift: int = 0
    seconds: float = 0.0

    @property
    def equal(self) -> bool | None:
        """True (equal), False (differs) or None (cannot decide)."""
        return {"equal": True, "differs": False}.get(self.verdict)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["equal"] = self.equal
        return out

    def report(self) -> str:
        """A human-readable report (what `derive verify` prints)."""
        lines = [f"{self.equation.strip()}"]
        head = f"  {self.verdict.upper()}"
        if self.verdict == "equal":
            head += f" ({self.method})"
        elif self.reason:
            head += f": {self.reason}"
        lines.append(head)
        if self.shift:
            lines.append(f"  (compared with the derived term shifted by {self.shift:+d} step"
                         f"{'s' * (abs(self.shift) != 1)}: the gradient sums over t)")
        if self.verdict != "equal":
            lines.append(f"  derived:  {self.target} = {self.expected}")
            lines.append(f"  yours:    {self.target} = {self.found}")
        for k, diff in enumerate(self.differences, 1):
            lines.append(f"  {k}. {diff.flow}: {diff.kind}")
            if diff.expected:
                lines.append(f"       expected {diff.expected}")
            if diff.found:
                lines.append(f"       found    {diff.found}")
            if diff.detail:
                lines.append(f"       ({diff.detail})")
        if self.difference and self.verdict != "equal":
            lines.append(f"  difference (derived - yours): {self.difference}")
        ce = self.counterexample
        if ce is not None:
            lines.append(f"  counterexample: random sequence seed {ce.seed}, step t = {ce.step}, "
                         f"N = {ce.sizes['N']}, M = {ce.sizes['M']}, batch {ce.sizes['B']}: "
                         f"max |derived - yours| = {ce.max_abs_difference:.3g} "
                         f"(relative {ce.relative_difference:.3g})")
            lines.append(f"    derived = {_short(ce.expected)}")
            lines.append(f"    yours   = {_short(ce.found)}")
            for name, value in ce.values.items():
                lines.append(f"    {name} = {_short(value)}")
        return "\n".join(lines)


def _short(value) -> str:
    return np.array2string(np.asarray(value), precision=4, separator=", ",
                           max_line_width=10_000).replace("\n", "")


def counts(results: list[Verification]) -> dict[str, int]:
    """How many results have each verdict."""
    return {verdict: sum(v.verdict == verdict for v in results) for verdict in VERDICTS}


def as_json(cell: str, results: list[Verification]) -> dict:
    """One JSON document for the verifications of one cell.

    Strict JSON (RFC 8259 has no infinities): a non-finite number of a counterexample
    (an overflowing right side) is written as the string "inf", "-inf" or "nan".
    """
    return _finite({"cell": cell, "equal": all(v.equal for v in results),
                    "counts": counts(results), "results": [v.to_dict() for v in results]})


def _finite(value):
    """`value` with every non-finite float replaced by its name as a string."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def as_text(results: list[Verification]) -> str:
    """The reports one after the other, and a tally when there are several."""
    text = "\n\n".join(v.report() for v in results) + "\n"
    if len(results) > 1:
        text += f"\n{len(results)} equations: " + ", ".join(
            f"{n} {k}" for k, n in counts(results).items()) + "\n"
    return text
