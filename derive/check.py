"""Stage 7 — check: every gradient of a cell against finite differences of its forward pass.

One check for everything that computes a cell's backward pass. What it differentiates
is a `Subject`: the compiled kernel (backend "cython"), the NumPy reference kernel
generated from the same plan ("numpy"), or the derivation itself, its structured
equations evaluated step by step on an unrolled sequence by `derive.numeric`
("derivation"). A subject runs the forward pass of a `Problem` and returns the gradients
of the loss

    L = Σ_outputs Σ_t Σ_batch ⟨Pᵗ, outputᵗ⟩

(a random projection P of the outputs, not all ones, so Δᵗ = Pᵗ): every parameter,
every input and every initial state ("<state>0").

**float64** (`finite_difference_check`): each gradient is compared, element by element,
with the fourth-order central difference of L

    ∂L/∂θ ≈ [8 (L(θ+h) − L(θ−h)) − (L(θ+2h) − L(θ−2h))] / 12h,     h = 1e-3,

whose error (≈ h⁴ from truncation, ≈ 1e-16·|L|/h from rounding, both ≲ 1e-12 here)
is far below the tolerance. The problem catches the usual mistakes: T ≥ 3 (boundary
terms at t = 0 and t = T−1 and a middle step), batch ≥ 2, M ≠ N (transposes), a
non-zero initial state (t = −1 terms), small weights (gates not saturated), all seeded.
A cell with a relu is not differentiable where its argument is 0: its problem is the
first of the seeds seed, seed + 1, … whose forward pass keeps every relu argument at
least `KINK_MARGIN` = 20 h from 0 (`screened_problem`; the report names the seed), so
no difference crosses a kink.
The error of one element is |analytic − numeric| / max(|analytic|, |numeric|, floor)
with floor = 1e-5 (so tiny entries are compared absolutely); a gradient passes when its
largest error is ≤ 1e-6.

**float32** (`rounding_check`, kernels only): the float32 kernel is compared with the
float64 kernel of the same backend on the same inputs rounded to float32. The error of
a gradient is max |g32 − g64| / max |g64|: relative to its largest entry, because an
entry near zero carries the rounding error of the large terms it is a sum of. The
tolerance, 1e-4, is about 1000 float32 roundings (ε = 6e-8): a sequence of T steps and
sums over T·B terms accumulate a few hundred; a wrong formula is off by O(1).

Checking a kernel imports neither SymPy nor the derivation (unless the kernel has to be
built first); checking the derivation does.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field, replace
from typing import Callable

import numpy as np

from derive.errors import UserError

TOLERANCE = {"float64": 1e-6, "float32": 1e-4}
FLOOR = 1e-5
STEP = 1e-3
#: a relu argument closer to 0 than this lets a difference of step ±2h cross the kink
KINK_MARGIN = 20 * STEP
KINK_SEEDS = 100
SIZES = {"T": 4, "B": 3, "M": 5, "N": 4, "P": 3}
BACKENDS = ("cython", "numpy", "derivation")

Arrays = dict[str, np.ndarray]


# --- what is checked -----------------------------------------------------------------------

@dataclass(frozen=True)
class Subject:
    """Something that computes a cell's forward and backward pass.

    `parameters` maps each parameter to its shape in the sizes 'N' and 'M', `inputs` each
    input to its size; `outputs(problem)` runs the forward pass ({output: (T, B, N)}),
    `gradients(problem)` the backward pass of L = Σ P ⊙ outputs (every parameter, input
    and "<state>0"). Both read the problem's arrays as they are at the call. `kinks`,
    for a cell with a relu, is how close a problem's forward pass comes to a kink
    (`derive.numeric.kink_distance`).
    """

    cell: str
    backend: str
    dtype: str
    parameters: dict[str, tuple[str, ...]]
    inputs: dict[str, str]
    states: tuple[str, ...]
    output_names: tuple[str, ...]
    outputs: Callable[["Problem"], Arrays]
    gradients: Callable[["Problem"], Arrays]
    kinks: Callable[["Problem"], float | None] | None = None
    sizes: dict[str, str] = field(default_factory=dict)   # state/output -> size if not N


@dataclass
class Problem:
    """A small random instance, float64: parameters, inputs, initial state, projection P."""

    params: Arrays
    inputs: Arrays          # input -> (T, B, size)
    initial: Arrays         # state -> (B, N)
    projection: Arrays      # output -> (T, B, N): Δᵗ of that output
    sizes: dict[str, int]
    seed: int

    def targets(self) -> list[tuple[str, np.ndarray]]:
        """Every array a gradient is taken of, by its gradient's name."""
        return (list(self.params.items()) + list(self.inputs.items())
                + [(f"{s}0", v) for s, v in self.initial.items()])

    def rounded(self, dtype) -> "Problem":
        """The same problem with every array rounded to `dtype` (kept as float64)."""
        def r(arrays):
            return {k: v.astype(dtype).astype(np.float64) for k, v in arrays.items()}
        return replace(self, params=r(self.params), inputs=r(self.inputs),
                       initial=r(self.initial), projection=r(self.projection))


def random_problem(subject: Subject, sizes: dict | None = None, seed: int = 0) -> Problem:
    """Parameters ~ U(±1/√N) (gates stay away from saturation), inputs and a non-zero
    initial state ~ N(0, 0.5²), a projection P ~ N(0, 1); seeded, float64. The problem's
    sizes are T, B, M, N and, for a subject with a second node size, P (the report
    prints what it used)."""
    sizes = dict(SIZES, **(sizes or {}))
    if not uses_proj_size(subject):
        sizes.pop("P", None)
    T, B, N = sizes["T"], sizes["B"], sizes["N"]
    rng = np.random.default_rng(seed)
    bound = 1.0 / np.sqrt(N)
    params = {name: rng.uniform(-bound, bound, tuple(sizes[s] for s in shape))
              for name, shape in subject.parameters.items()}
    inputs = {name: 0.5 * rng.standard_normal((T, B, sizes[size]))
              for name, size in subject.inputs.items()}
    size = {n: sizes[subject.sizes.get(n, "N")] for n in subject.states + subject.output_names}
    initial = {s: 0.5 * rng.standard_normal((B, size[s])) for s in subject.states}
    projection = {o: rng.standard_normal((T, B, size[o])) for o in subject.output_names}
    return Problem(params, inputs, initial, projection, sizes, seed)


def _used_sizes(subject: Subject, sizes: dict) -> dict:
    """The sizes a report prints: a problem's sizes without M when no input of the cell
    has it (an input used only element-wise has the size of its node, N or P)."""
    return {k: v for k, v in sizes.items() if k != "M" or "M" in subject.inputs.values()}


def uses_proj_size(subject: Subject) -> bool:
    """Whether the subject's cell has the second node size P (a parameter or vector of
    that size)."""
    return (any("P" in shape for shape in subject.parameters.values())
            or "P" in subject.sizes.values() or "P" in subject.inputs.values())


def loss(subject: Subject, problem: Problem) -> float:
    """L = Σ_outputs Σ_t Σ_batch ⟨Pᵗ, outputᵗ⟩, in float64."""
    outs = subject.outputs(problem)
    return float(sum(np.sum(problem.projection[o] * np.asarray(outs[o], np.float64))
                     for o in subject.output_names))


def of_kernel(kernel) -> Subject:
    """A `derive.kernel.runtime.Kernel` (either backend) as a subject; its dtype's arrays."""
    dt = kernel.dtype

    def cast(arrays):
        return {k: np.ascontiguousarray(v, dtype=dt) for k, v in arrays.items()}

    def forward(problem):
        return kernel.forward(cast(problem.inputs), cast(problem.params),
                              cast(problem.initial))

    def outputs(problem):
        out = forward(problem).outputs
        return out if isinstance(out, dict) else {kernel.outputs[0]: out}

    def gradients(problem):
        d_outputs = cast(problem.projection)
        if len(kernel.outputs) == 1:
            d_outputs = d_outputs[kernel.outputs[0]]
        return kernel.backward(forward(problem), d_outputs)

    return Subject(kernel.cell, kernel.backend, dt.name,
                   {n: tuple(s) for n, s in kernel.parameters.items()},
                   {x: size if size in ("N", "P") else "M"     # M_<input>: one M here
                    for x, size in kernel.input_sizes.items()},
                   tuple(kernel.states), tuple(kernel.outputs),
                   outputs, gradients, sizes=dict(kernel.sizes))


def of_derivation(derivation) -> Subject:
    """The derivation itself: its structured equations evaluated by `derive.numeric` on
    the unrolled sequence (float64). Pass a modified derivation to see the check bite."""
    from derive import numeric
    cell = derivation.cell

    def unrolled(problem):
        s = problem.sizes
        p = numeric.Problem(cell, problem.params, problem.inputs, problem.initial,
                            problem.projection, s["T"], s["B"], s["N"], s["M"], s.get("P", 0))
        return p, numeric.forward(p)

    def outputs(problem):
        _, env = unrolled(problem)
        return {o: np.stack([env.values[(o, t)] for t in range(problem.sizes["T"])])
                for o in cell.outputs}

    def gradients(problem):
        p, env = unrolled(problem)
        return numeric.backward(derivation, p, env)

    def kinks(problem):
        return numeric.kink_distance(cell, unrolled(problem)[1])

    return Subject(cell.name, "derivation", "float64",
                   {n: tuple(p.shape) for n, p in cell.parameters.items()},
                   {n: cell.size(n) for n in cell.inputs}, tuple(cell.states),
                   tuple(cell.outputs), outputs, gradients,
                   kinks=kinks if cell_has_kinks(cell) else None,
                   sizes={n: cell.size(n) for n in cell.states + cell.outputs})


def cell_has_kinks(cell) -> bool:
    """Whether CELL (a name, path or Cell) applies a relu; read without SymPy."""
    from derive.cell.catalog import has_kinks
    from derive.kernel.build import spec_source
    return has_kinks(spec_source(cell)[1])


def screened_problem(subject: Subject, sizes: dict | None = None, seed: int = 0) -> Problem:
    """`random_problem(subject, sizes, seed)`; for a subject with kinks, the first problem
    of the seeds seed, seed + 1, … whose forward pass stays `KINK_MARGIN` away from every
    kink (the farthest of `KINK_SEEDS` seeds if none does). Its seed is reported."""
    if subject.kinks is None:
        return random_problem(subject, sizes, seed)
    best = None
    for s in range(seed, seed + KINK_SEEDS):
        problem = random_problem(subject, sizes, s)
        distance = subject.kinks(problem)
        if distance is None or distance > KINK_MARGIN:
            return problem
        if best is None or distance > best[0]:
            best = (distance, problem)
    return best[1]


# --- the report ----------------------------------------------------------------------------

@dataclass
class Row:
    """One gradient: its largest error (relative, see the module docstring) and scale."""

    name: str
    shape: tuple
    max_rel_error: float
    max_abs_error: float
    scale: float            # max |reference|: a gradient that is all but zero checks nothing
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
    def failures(self) -> list[Row]:
        return [r for r in self.rows if not r.passed]

    @property
    def max_error(self) -> float:
        return max((r.max_rel_error for r in self.rows), default=float("nan"))

    def summary(self) -> str:
        bad = [r.name for r in self.failures]
        head = "passed" if self.passed else f"FAILED ({', '.join(bad)})"
        floor = f", floor {self.floor:g}" if self.floor is not None else ""
        return (f"{head}: {len(self.rows)} gradients of {self.cell} ({self.backend}, "
                f"{self.dtype}), max relative error {self.max_error:.1e} (tolerance "
                f"{self.tolerance:g}{floor})")

    def table(self) -> str:
        s = self.sizes
        P = f" P={s['P']}" if "P" in s else ""
        M = f" M={s['M']}" if "M" in s else ""
        lines = [f"{self.method}; T={s['T']} B={s['B']}{M} N={s['N']}{P}, "
                 f"non-zero initial state, seed {self.seed}",
                 f"{'gradient':<12} {'shape':<12} {'max rel err':>12} {'max abs err':>12} "
                 f"{'max |g|':>9}  status"]
        for r in self.rows:
            shape = "(" + ", ".join(map(str, r.shape)) + ("," if len(r.shape) == 1 else "") \
                + ")"
            lines.append(f"{r.name:<12} {shape:<12} {r.max_rel_error:>12.2e} "
                         f"{r.max_abs_error:>12.2e} {r.scale:>9.2e}  "
                         f"{'ok' if r.passed else 'FAIL'}")
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


def _row(name, got, want, floor, tolerance) -> Row:
    """|got − want| / max(|got|, |want|, floor) over the entries (floor None: relative to
    max |want|, the float32 measure); a shape mismatch or a missing gradient fails."""
    want = np.asarray(want, np.float64)
    scale = float(np.max(np.abs(want))) if want.size else 0.0
    got = None if got is None else np.asarray(got, np.float64)
    if got is None or got.shape != want.shape:
        return Row(name, tuple(want.shape), float("inf"), float("inf"), scale, False)
    diff = np.abs(got - want)
    if floor is None:
        worst = float(np.max(diff)) / max(scale, 1e-30) if diff.size else 0.0
    else:
        rel = diff / np.maximum(np.maximum(np.abs(got), np.abs(want)), floor)
        worst = float(np.max(rel)) if rel.size else 0.0
    worst = worst if np.isfinite(worst) else float("inf")
    return Row(name, tuple(want.shape), worst, float(np.max(diff, initial=0.0)), scale,
               worst <= tolerance)


# --- the checks ----------------------------------------------------------------------------

def central_differences(subject: Subject, problem: Problem, array: np.ndarray,
                        step: float = STEP) -> np.ndarray:
    """∂L/∂array by fourth-order central differences with step `step`, perturbing `array`
    in place (it is one of `problem`'s arrays) and restoring every entry."""
    numeric = np.empty_like(array)
    flat, out = array.reshape(-1), numeric.reshape(-1)
    for i in range(flat.size):
        keep = flat[i]
        values = []
        for h in (step, -step, 2 * step, -2 * step):
            flat[i] = keep + h
            values.append(loss(subject, problem))
        flat[i] = keep
        out[i] = (8 * (values[0] - values[1]) - (values[2] - values[3])) / (12 * step)
    return numeric


def finite_difference_check(subject: Subject, *, seed: int = 0,
                            sizes: dict | None = None) -> CheckReport:
    """Every gradient of a float64 subject against central differences of its own loss."""
    if subject.dtype != "float64":
        raise ValueError(f"finite differences need a float64 subject, not {subject.dtype}")
    problem = screened_problem(subject, sizes, seed)
    report = CheckReport(subject.cell, subject.backend, "float64",
                         f"fourth-order central differences (h={STEP:g}) of L = sum(D * "
                         f"outputs), D ~ N(0, 1)", TOLERANCE["float64"], FLOOR,
                         _used_sizes(subject, problem.sizes), problem.seed)
    grads = subject.gradients(problem)
    for name, array in problem.targets():
        report.rows.append(_row(name, grads.get(name),
                                central_differences(subject, problem, array),
                                FLOOR, report.tolerance))
    return report


def rounding_check(k32: Subject, k64: Subject, *, seed: int = 0,
                   sizes: dict | None = None) -> CheckReport:
    """A float32 subject against a float64 one on the same float32-rounded problem."""
    problem = screened_problem(k64, sizes, seed).rounded(np.float32)
    seed = problem.seed
    tol = TOLERANCE["float32"]
    report = CheckReport(k32.cell, k32.backend, "float32",
                         f"float32 kernel vs float64 kernel ({k64.backend}) on the same "
                         f"float32 inputs, error relative to each gradient's largest entry",
                         tol, None, _used_sizes(k64, problem.sizes), seed)
    o32, o64 = k32.outputs(problem), k64.outputs(problem)
    outputs = [_row(o, o32[o], o64[o], None, tol) for o in k64.output_names]
    report.output_error = max(r.max_rel_error for r in outputs)
    g32, g64 = k32.gradients(problem), k64.gradients(problem)
    report.rows = [_row(name, g32.get(name), g64[name], None, tol) for name in g64]
    if report.output_error > tol:
        worst = max(outputs, key=lambda r: r.max_rel_error)
        report.rows.append(replace(worst, name="outputs"))
    return report


def subject(cell, backend: str = "cython", dtype: str = "float64") -> Subject:
    """CELL's kernel of `backend` ("cython", "numpy") or its derivation ("derivation")."""
    if backend not in BACKENDS:
        raise UserError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    if backend == "derivation":
        from derive.derivation import derive
        return of_derivation(derive(cell))
    from derive.kernel.runtime import load_kernel
    kernel = of_kernel(load_kernel(cell, dtype, backend))
    if cell_has_kinks(cell):  # the derivation's forward pass finds the kinks
        from derive.derivation import derive
        kernel = replace(kernel, kinks=of_derivation(derive(cell)).kinks)
    return kernel


def gradient_check(cell, backend: str = "cython", dtype: str = "float64", *,
                   seed: int = 0, sizes: dict | None = None) -> CheckReport:
    """Check every gradient of CELL's `backend`; see the module docstring for the method."""
    try:
        dtype = np.dtype(dtype).name
    except TypeError:
        dtype = str(dtype)
    if dtype not in TOLERANCE:
        raise ValueError(f"dtype must be float32 or float64, not {dtype!r}")
    if dtype == "float64":
        return finite_difference_check(subject(cell, backend), seed=seed, sizes=sizes)
    if backend == "derivation":
        raise UserError("the derivation is checked in float64 only (float32 is a kernel's "
                        "rounding, checked against its float64 kernel)")
    return rounding_check(subject(cell, backend, "float32"), subject(cell, backend),
                          seed=seed, sizes=sizes)


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
