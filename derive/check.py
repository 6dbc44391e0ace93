"""Stage 7 — check: a kernel's gradients against finite differences of its own forward.

float64: the loss is a random projection of the outputs, L = Σ P ⊙ outputs (P fixed
and seeded, not all ones), and every gradient the backward pass returns — each
parameter, the input x and every initial state — is compared, element by element,
with the fourth-order central difference

    ∂L/∂θ ≈ [8 (L(θ+h) − L(θ−h)) − (L(θ+2h) − L(θ−2h))] / 12h,     h = 1e-3,

whose error (≈ h⁴ from truncation, ≈ 1e-16·|L|/h from rounding, both ≲ 1e-12 here)
is far below the tolerance. The sizes catch the usual mistakes: T ≥ 3 (boundary
terms at t = 0 and t = T−1 and a middle step), batch ≥ 2, M ≠ N (transposes), a
non-zero initial state (t = −1 terms), small weights (gates not saturated).

The error of one element is |analytic − numeric| / max(|analytic|, |numeric|, floor)
with floor = 1e-5 (so tiny entries are compared absolutely); a gradient passes when its
largest error is ≤ 1e-6.

float32: the float32 kernel is compared with the float64 kernel (of the same backend)
on the same inputs rounded to float32. The error of a gradient is
max |g32 − g64| / max |g64|: relative to its largest entry, because an entry near zero
carries the rounding error of the large terms it is a sum of. The tolerance, 1e-4, is
about 1000 float32 roundings (ε = 6e-8): a sequence of T steps and sums over T·B terms
accumulate a few hundred; a wrong formula is off by O(1).
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field

import numpy as np

TOLERANCE = {"float64": 1e-6, "float32": 1e-4}
FLOOR = 1e-5
STEP = 1e-3
SIZES = {"T": 4, "B": 3, "M": 5, "N": 4}


@dataclass
class Row:
    name: str
    shape: tuple
    max_rel_error: float
    max_abs_error: float
    passed: bool


@dataclass
class CheckReport:
    cell: str
    backend: str
    dtype: str
    method: str
    tolerance: float
    floor: float | None
    sizes: dict
    seed: int
    rows: list[Row] = field(default_factory=list)
    output_error: float | None = None

    @property
    def passed(self) -> bool:
        return bool(self.rows) and all(r.passed for r in self.rows)

    @property
    def max_error(self) -> float:
        return max((r.max_rel_error for r in self.rows), default=float("nan"))

    def summary(self) -> str:
        bad = [r.name for r in self.rows if not r.passed]
        head = "passed" if self.passed else f"FAILED ({', '.join(bad)})"
        floor = f", floor {self.floor:g}" if self.floor is not None else ""
        return (f"{head}: {len(self.rows)} gradients of {self.cell} ({self.backend}, "
                f"{self.dtype}), max relative error {self.max_error:.1e} (tolerance "
                f"{self.tolerance:g}{floor})")

    def table(self) -> str:
        s = self.sizes
        lines = [f"{self.method}; T={s['T']} B={s['B']} M={s['M']} N={s['N']}, "
                 f"non-zero initial state, seed {self.seed}",
                 f"{'gradient':<12} {'shape':<12} {'max rel err':>12} {'max abs err':>12}  "
                 f"status"]
        for r in self.rows:
            shape = "(" + ", ".join(map(str, r.shape)) + ("," if len(r.shape) == 1 else "") \
                + ")"
            lines.append(f"{r.name:<12} {shape:<12} {r.max_rel_error:>12.2e} "
                         f"{r.max_abs_error:>12.2e}  {'ok' if r.passed else 'FAIL'}")
        if self.output_error is not None:
            lines.append(f"outputs: max relative error {self.output_error:.2e} vs float64")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["passed"] = self.passed
        d["summary"] = self.summary()
        for r in d["rows"]:
            r["shape"] = list(r["shape"])
        return d


def _problem(kernel, sizes, seed):
    """Parameters, input, initial state and output projection, float64, seeded."""
    rng = np.random.default_rng(seed)
    T, B, M, N = (sizes[k] for k in "TBMN")
    params = {k: np.array(v, dtype=np.float64)
              for k, v in kernel.init_params(M, N, seed=seed).items()}
    x = 0.5 * rng.standard_normal((T, B, M))
    state0 = {s: 0.5 * rng.standard_normal((B, N)) for s in kernel.states}
    P = {o: rng.standard_normal((T, B, N)) for o in kernel.outputs}
    return params, x, state0, P


def _loss(kernel, params, x, state0, P) -> float:
    tr = kernel.forward(x, params, state0)
    outs = tr.outputs if isinstance(tr.outputs, dict) else {kernel.outputs[0]: tr.outputs}
    return float(sum(np.sum(P[o] * outs[o]) for o in kernel.outputs))


def _d_outputs(kernel, P):
    return P[kernel.outputs[0]] if len(kernel.outputs) == 1 else P


def gradient_check(cell, backend: str = "cython", dtype: str = "float64", *,
                   seed: int = 0, sizes: dict | None = None) -> CheckReport:
    """Check every gradient of CELL's kernel; see the module docstring for the method."""
    from derive.kernel.runtime import load_kernel
    dtype = np.dtype(dtype).name
    if dtype not in TOLERANCE:
        raise ValueError(f"dtype must be float32 or float64, not {dtype!r}")
    sizes = dict(SIZES, **(sizes or {}))
    k64 = load_kernel(cell, "float64", backend)
    params, x, state0, P = _problem(k64, sizes, seed)
    if dtype == "float64":
        return _finite_differences(k64, params, x, state0, P, sizes, seed)
    return _against_float64(cell, k64, backend, params, x, state0, P, sizes, seed)


def _finite_differences(k, params, x, state0, P, sizes, seed) -> CheckReport:
    report = CheckReport(k.cell, k.backend, "float64",
                         f"fourth-order central differences (h={STEP:g}) of L = sum(P * "
                         f"outputs)", TOLERANCE["float64"], FLOOR, sizes, seed)
    tr = k.forward(x, params, state0)
    grads = k.backward(tr, _d_outputs(k, P))
    targets = [(n, params[n]) for n in params] + [(k.input, x)] + \
        [(f"{s}0", state0[s]) for s in k.states]
    for name, arr in targets:
        numeric = np.empty_like(arr)
        flat, out = arr.reshape(-1), numeric.reshape(-1)
        for i in range(flat.size):
            keep = flat[i]
            values = []
            for step in (STEP, -STEP, 2 * STEP, -2 * STEP):
                flat[i] = keep + step
                values.append(_loss(k, params, x, state0, P))
            flat[i] = keep
            out[i] = (8 * (values[0] - values[1]) - (values[2] - values[3])) / (12 * STEP)
        g = np.asarray(grads[name])
        diff = np.abs(g - numeric)
        rel = diff / np.maximum(np.maximum(np.abs(g), np.abs(numeric)), FLOOR)
        worst = float(np.max(rel)) if rel.size else 0.0
        worst = worst if np.isfinite(worst) else float("inf")
        report.rows.append(Row(name, tuple(arr.shape), worst, float(np.max(diff)),
                               worst <= report.tolerance))
    return report


def _against_float64(cell, k64, backend, params, x, state0, P, sizes, seed) -> CheckReport:
    from derive.kernel.runtime import load_kernel
    k32 = load_kernel(cell, "float32", backend)
    f32 = np.float32
    p32 = {n: v.astype(f32) for n, v in params.items()}
    x32, s32 = x.astype(f32), {s: v.astype(f32) for s, v in state0.items()}
    P32 = {o: v.astype(f32) for o, v in P.items()}
    # float64 on exactly the float32-rounded inputs
    p64 = {n: v.astype(np.float64) for n, v in p32.items()}
    x64, s64 = x32.astype(np.float64), {s: v.astype(np.float64) for s, v in s32.items()}
    P64 = {o: v.astype(np.float64) for o, v in P32.items()}
    report = CheckReport(k32.cell, k32.backend, "float32",
                         f"float32 kernel vs float64 kernel ({k64.backend}) on the same "
                         f"float32 inputs, error relative to each gradient's largest entry",
                         TOLERANCE["float32"], None, sizes, seed)
    tr32, tr64 = k32.forward(x32, p32, s32), k64.forward(x64, p64, s64)
    o32 = tr32.outputs if isinstance(tr32.outputs, dict) else {"": tr32.outputs}
    o64 = tr64.outputs if isinstance(tr64.outputs, dict) else {"": tr64.outputs}
    report.output_error = float(max(np.max(np.abs(o32[o] - o64[o])) /
                                    max(np.max(np.abs(o64[o])), 1e-30) for o in o64))
    g32 = k32.backward(tr32, _d_outputs(k32, P32))
    g64 = k64.backward(tr64, _d_outputs(k64, P64))
    for name in g64:
        a, b = np.asarray(g32[name], np.float64), np.asarray(g64[name])
        diff = np.abs(a - b)
        scale = max(float(np.max(np.abs(b))), 1e-30)
        worst = float(np.max(diff)) / scale
        worst = worst if np.isfinite(worst) else float("inf")
        report.rows.append(Row(name, tuple(b.shape), worst, float(np.max(diff)),
                               worst <= report.tolerance))
    if report.output_error > report.tolerance:
        report.rows.append(Row("outputs", tuple(next(iter(o64.values())).shape),
                               report.output_error, report.output_error, False))
    return report


def run_check(cell, dtype: str = "float64", backend: str = "cython",
              as_json: bool = False) -> int:
    """`derive check`: print the report (or JSON); exit 1 when a gradient is off."""
    report = gradient_check(cell, backend=backend, dtype=dtype)
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.summary())
        print(report.table())
    sys.stdout.flush()
    return 0 if report.passed else 1
