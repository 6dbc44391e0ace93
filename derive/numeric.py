"""Numeric evaluation of derive's SymPy vocabulary, and an unrolled reference of a derivation.

**Evaluation.** An expression of `derive.cell.symbols` is evaluated in NumPy float64 on a
batch: a vector is a ``(B, n)`` array (one row per sequence of the batch; a vector
parameter is ``(n,)`` and broadcasts), a matrix parameter is its real ``(r, c)`` array,
and

    MatVec(A, v)  = A v   → v @ A.T          MatTVec(A, v) = Aᵀ v → v @ A
    Outer(a, b)   = Σ_batch a bᵀ → a.T @ b    Mean(v) = the mean of each row → (B, 1)
    products, powers, σ, tanh, exp, log, relu, step, softplus, sqrt: element-wise

`shape_of` infers the shape of an expression in the sizes N and M first (a mismatch is a
`DimensionError`), so an N×M matrix times a vector of size N is caught before any
arithmetic. A symbol is looked up at ``t + shift`` in an `Env`; deltas and external
gradients outside ``0 ≤ step < T`` are zero ("every (t+1) quantity is zero at the last
step").

**The unrolled reference.** For a cell over T steps:

* `forward` runs the spec's node expressions step by step from a (non-zero) initial
  state;
* `backward` evaluates the derivation's *structured* equations in reverse, step by step:
  the kept deltas of step t from the deltas of step t+1 (zero at t = T−1) and those of
  step t already known, the folded nodes' deltas from `Derivation.raw`, the parameter
  gradients as Σ_t Σ_batch of the per-step contributions (at t = 0 the state read at t−1
  is the initial state: the boundary terms), and the initial-state gradients `d.initial`
  evaluated at t = 0.

`derive.check` differentiates the forward pass by central differences and compares the
two, per gradient (its `of_derivation` subject); `derive verify` reads values and deltas
of the unrolled sequence.

Nothing here knows a particular cell: everything comes from the spec and the derivation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import sympy as sp

from derive.cell import symbols as S
from derive.errors import UserError

# --- shapes ------------------------------------------------------------------------------


class DimensionError(UserError):
    """An expression combines shapes that do not fit (e.g. an N×M matrix with a size-N vector)."""


@dataclass(frozen=True)
class Shape:
    """'scalar', a vector of size `rows`, or a `rows`×`cols` matrix (sizes are 'N'/'M')."""

    kind: str
    rows: str = ""
    cols: str = ""

    def __str__(self) -> str:
        if self.kind == "scalar":
            return "a scalar"
        if self.kind == "vector":
            return f"a vector of size {self.rows}"
        return f"an {self.rows}×{self.cols} matrix"


SCALAR = Shape("scalar")


def _text(expr) -> str:
    from derive.printing.text import format_expression
    return format_expression(expr)


def shape_of(expr: sp.Expr, cell) -> Shape:
    """The shape of `expr` for `cell` in the sizes N, M; DimensionError when it does not fit."""
    memo: dict = {}

    def vec(n):
        return Shape("vector", n)

    def walk(e) -> Shape:
        if e in memo:
            return memo[e]
        out = visit(e)
        memo[e] = out
        return out

    def visit(e) -> Shape:
        if e.is_Number or e in (sp.pi, sp.E):
            return SCALAR
        if isinstance(e, sp.Symbol):
            r = S.ref(e)
            if r is None:
                raise DimensionError(f"unknown symbol {e}")
            if r.kind == "param":
                p = cell.parameters[r.name]
                return Shape("matrix", *p.shape) if p.is_matrix else vec(p.shape[0])
            return vec(cell.size(r.name))
        if isinstance(e, (S.MatVec, S.MatTVec)):
            a, v = walk(e.args[0]), walk(e.args[1])
            transposed = isinstance(e, S.MatTVec)
            if a.kind != "matrix":
                raise DimensionError(f"{_text(e.args[0])} is not a matrix")
            inner, outer = (a.rows, a.cols) if transposed else (a.cols, a.rows)
            if v.kind == "scalar":
                raise DimensionError(f"{_text(e)}: a matrix must multiply a vector, not a scalar")
            if v.kind != "vector" or v.rows != inner:
                name = f"{e.args[0]}{'.T' if transposed else ''}"
                dims = f"{inner}×{outer}" if transposed else f"{outer}×{inner}"
                raise DimensionError(f"{_text(e)}: {name} is {dims} but {_text(e.args[1])} is "
                                     f"{v}; the product needs a vector of size {inner}")
            return vec(outer)
        if isinstance(e, S.Outer):
            a, b = walk(e.args[0]), walk(e.args[1])
            if a.kind != "vector" or b.kind != "vector":
                raise DimensionError(f"{_text(e)}: outer() takes two vectors")
            return Shape("matrix", a.rows, b.rows)
        if isinstance(e, sp.Add):
            shapes = [walk(a) for a in e.args]
            kinds = {s for s in shapes if s != SCALAR}
            if len(kinds) > 1:
                a, b = sorted(kinds, key=str)[:2]
                raise DimensionError(f"{_text(e)} adds {a} and {b}")
            out = next(iter(kinds), SCALAR)
            if out.kind == "matrix" and SCALAR in shapes:
                raise DimensionError(f"{_text(e)} adds a scalar to a matrix")
            return out
        if isinstance(e, sp.Mul):
            shapes = [walk(a) for a in e.args]
            nonscalar = {s for s in shapes if s != SCALAR}
            mats = [s for s in shapes if s.kind == "matrix"]
            if mats and len([s for s in shapes if s != SCALAR]) > 1:
                raise DimensionError(f"{_text(e)} multiplies a matrix element-wise; a matrix "
                                     f"gradient term is a scalar times outer(a, b)")
            if len(nonscalar) > 1:
                a, b = sorted(nonscalar, key=str)[:2]
                raise DimensionError(f"{_text(e)} multiplies {a} and {b} element-wise")
            return next(iter(nonscalar), SCALAR)
        if isinstance(e, sp.Pow):
            base, ex = walk(e.args[0]), walk(e.args[1])
            if ex != SCALAR or base.kind == "matrix":
                raise DimensionError(f"{_text(e)}: powers are element-wise with a number exponent")
            return base
        if isinstance(e, S.Mean):
            arg = walk(e.args[0])
            if arg.kind != "vector" or arg.rows != "N":
                raise DimensionError(f"{_text(e)}: mean() averages a vector over the N hidden "
                                     f"units, not {arg}")
            return arg
        if isinstance(e, sp.Function) and len(e.args) == 1:
            arg = walk(e.args[0])
            if arg.kind == "matrix":
                raise DimensionError(f"{_text(e)}: functions apply element-wise to vectors")
            return arg
        raise DimensionError(f"cannot evaluate {_text(e)}")

    return walk(expr)


def expit(x):
    """σ(x) = 1 / (1 + e^(−x)), computed as (1 + tanh(x/2)) / 2 (stable for any x)."""
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, dtype=float)))


def _relu(x):
    return np.maximum(x, 0.0)


def _step(x):
    """[x > 0]: relu' (0 at the kink)."""
    return np.heaviside(x, 0.0)


def _softplus(x):
    """log(1 + eˣ), without overflow for large x."""
    return np.logaddexp(0.0, x)


# --- evaluation ---------------------------------------------------------------------------


class MissingValue(UserError):
    """A symbol refers to a step the sequence does not have (e.g. f[t-1] at t = 0)."""


@dataclass
class Env:
    """Values of one unrolled sequence: what a symbol at step `t + shift` stands for.

    `values[(name, step)]` are forward values ((B, n) arrays; the initial state at step
    −1), `deltas[(name, step)]` and `incoming[(output, step)]` gradients. T is the loss
    horizon: outside ``0 ≤ step < T`` deltas and incoming gradients are zero, and values
    past the end that were not computed read as zero (they only multiply zero deltas).
    """

    cell: object
    params: dict[str, np.ndarray]
    T: int
    B: int
    N: int
    M: int
    P: int = 0          # the second node size, if the cell has one
    values: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)
    deltas: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)
    incoming: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)

    def size(self, name: str) -> int:
        return {"M": self.M, "N": self.N, "P": self.P}[self.cell.size(name)]

    def zeros(self, name: str) -> np.ndarray:
        return np.zeros((self.B, self.size(name)))

    def value(self, name: str, step: int) -> np.ndarray:
        got = self.values.get((name, step))
        if got is not None:
            return got
        if step >= self.T:  # past the end: only ever multiplied by a zero delta
            return self.zeros(name)
        raise MissingValue(f"{name}[{step}] is outside the sequence (steps 0..{self.T - 1}"
                               f"{', initial state at -1' if step == -1 else ''})") from None

    def delta(self, name: str, step: int) -> np.ndarray:
        got = self.deltas.get((name, step))
        if got is not None:
            return got
        if 0 <= step < self.T:
            raise MissingValue(f"d{name}[{step}] is used before it is computed")
        return self.zeros(name)

    def external(self, output: str, step: int) -> np.ndarray:
        got = self.incoming.get((output, step))
        return got if got is not None else self.zeros(output)

    def lookup(self, sym: sp.Symbol, t: int) -> np.ndarray:
        r = S.ref(sym)
        if r is None:
            raise MissingValue(f"unknown symbol {sym}")
        if r.kind == "param":
            return self.params[r.name]
        step = t + r.shift
        if r.kind == "value":
            return self.value(r.name, step)
        if r.kind == "delta":
            return self.delta(r.name, step)
        return self.external(r.name, step)


Compiled = Callable[[Env, int], np.ndarray]
_COMPILED: dict[sp.Expr, Compiled] = {}


def compile_expr(expr: sp.Expr) -> Compiled:
    """A function (env, t) -> ndarray evaluating `expr` at step t (closures, no eval)."""
    fn = _COMPILED.get(expr)
    if fn is None:
        fn = _compile(expr)
        if len(_COMPILED) > 20_000:
            _COMPILED.clear()
        _COMPILED[expr] = fn
    return fn


def evaluate(expr: sp.Expr, env: Env, t: int) -> np.ndarray:
    """The value of `expr` at step t of `env` (float64)."""
    return np.asarray(compile_expr(expr)(env, t), dtype=float)


def _compile(e: sp.Expr) -> Compiled:
    if e.is_Number:
        c = float(e)
        return lambda env, t: c
    if e is sp.pi or e is sp.E:
        c = float(e)
        return lambda env, t: c
    if isinstance(e, sp.Symbol):
        return lambda env, t: env.lookup(e, t)
    args = [compile_expr(a) for a in e.args]
    if isinstance(e, sp.Add):
        def add(env, t):
            out = args[0](env, t)
            for f in args[1:]:
                out = out + f(env, t)
            return out
        return add
    if isinstance(e, sp.Mul):
        def mul(env, t):
            out = args[0](env, t)
            for f in args[1:]:
                out = out * f(env, t)
            return out
        return mul
    if isinstance(e, sp.Pow):
        base, ex = args[0], e.args[1]
        if ex == -1:
            return lambda env, t: 1.0 / base(env, t)
        if ex == sp.Rational(1, 2):
            return lambda env, t: np.sqrt(base(env, t))
        p = float(ex) if not ex.is_Integer else int(ex)
        return lambda env, t: np.power(base(env, t), p)
    if isinstance(e, S.MatVec):
        a, v = args
        return lambda env, t: v(env, t) @ a(env, t).T
    if isinstance(e, S.MatTVec):
        a, v = args
        return lambda env, t: v(env, t) @ a(env, t)
    if isinstance(e, S.Outer):
        a, b = args

        def outer(env, t):
            x, y = np.atleast_2d(a(env, t)), np.atleast_2d(b(env, t))
            rows = max(x.shape[0], y.shape[0])
            x = np.broadcast_to(x, (rows, x.shape[1]))
            y = np.broadcast_to(y, (rows, y.shape[1]))
            return x.T @ y
        return outer
    if isinstance(e, S.Mean):
        (a,) = args
        return lambda env, t: np.mean(np.atleast_1d(a(env, t)), axis=-1, keepdims=True)
    unary = {S.sigmoid: expit, sp.tanh: np.tanh, sp.exp: np.exp, sp.log: np.log,
             S.relu: _relu, S.step: _step, S.softplus: _softplus, S.sqrt: np.sqrt}
    for cls, f in unary.items():
        if isinstance(e, cls):
            (a,) = args
            return lambda env, t, f=f: f(a(env, t))
    raise MissingValue(f"cannot evaluate {type(e).__name__} numerically")


def kink_distance(cell, env: Env) -> float | None:
    """How close the forward pass in `env` comes to a kink: the smallest |argument| of a
    relu over every step (None when the cell has no relu). A finite difference with a
    step below this distance never crosses the kink."""
    args = sorted({f.args[0] for n in cell.nodes.values() for f in n.expr.atoms(S.relu)},
                  key=sp.default_sort_key)
    if not args:
        return None
    return min(float(np.min(np.abs(evaluate(a, env, t)))) for a in args
               for t in range(env.T))


# --- the unrolled reference -------------------------------------------------------------


@dataclass
class Problem:
    """A small random instance of a cell: parameters, inputs, initial state, loss projection."""

    cell: object
    params: dict[str, np.ndarray]
    x: dict[str, np.ndarray]            # input name -> (T, B, M)
    initial: dict[str, np.ndarray]      # state name -> (B, its size)
    projection: dict[str, np.ndarray]   # output name -> (T, B, its size): Δᵗ of that output
    T: int
    B: int
    N: int
    M: int
    P: int = 0                          # the second node size, if the cell has one


def random_problem(cell, *, T: int = 4, B: int = 2, M: int = 2, N: int = 3, P: int = 4,
                   seed: int = 0, scale: float = 0.5) -> Problem:
    """Parameters ~ U(−scale, scale)/√fan-in·√3 (gates stay away from saturation), inputs and
    a non-zero initial state ~ N(0, 0.5²), a random output projection ~ N(0, 1)."""
    from derive.cell.spec import load_cell
    cell = load_cell(cell)
    rng = np.random.default_rng(seed)
    sizes = {"N": N, "M": M, "P": P}
    params = {}
    for name, p in cell.parameters.items():
        shape = tuple(sizes[s] for s in p.shape)
        fan = shape[1] if len(shape) == 2 else 1
        params[name] = rng.uniform(-scale, scale, shape) * np.sqrt(3.0 / fan) \
            if len(shape) == 2 else rng.uniform(-scale, scale, shape)
    x = {name: rng.normal(0, 0.5, (T, B, sizes[cell.size(name)])) for name in cell.inputs}
    initial = {s: rng.normal(0, 0.5, (B, sizes[cell.size(s)])) for s in cell.states}
    projection = {o: rng.normal(0, 1, (T, B, sizes[cell.size(o)])) for o in cell.outputs}
    return Problem(cell, params, x, initial, projection, T, B, N, M, P)


def forward(problem: Problem, params: dict | None = None, x: dict | None = None,
            initial: dict | None = None) -> Env:
    """Run the cell's node expressions over T steps; the Env holds every value."""
    p = problem
    cell = p.cell
    env = Env(cell, params or p.params, p.T, p.B, p.N, p.M, p.P)
    for s, v in (initial or p.initial).items():
        env.values[(s, -1)] = v
    xs = x or p.x
    programs = [(n.name, compile_expr(n.expr)) for n in cell.nodes.values()]
    for t in range(p.T):
        for name in cell.inputs:
            env.values[(name, t)] = xs[name][t]
        for name, fn in programs:
            env.values[(name, t)] = np.broadcast_to(fn(env, t), (p.B, env.size(name))) + 0.0
    return env


def backward(derivation, problem: Problem, env: Env) -> dict[str, np.ndarray]:
    """Evaluate the derivation's structured equations in reverse: every gradient of the
    loss Σ_outputs Σ_t Σ_batch ⟨Pᵗ, outputᵗ⟩ (P = `problem.projection`).

    Fills ``env.deltas`` (kept and folded nodes and inputs, every step) and
    ``env.incoming`` (Δᵗ = Pᵗ) and returns {parameter: δP, input: (T, B, M), "<state>0"}.
    """
    d, p = derivation, problem
    cell = d.cell
    for o in cell.outputs:
        for t in range(p.T):
            env.incoming[(o, t)] = p.projection[o][t]
    kept = [(n, compile_expr(nd.structured)) for n, nd in d.deltas.items()]
    folded = [(n, compile_expr(d.raw[n].structured))
              for n in reversed(list(cell.nodes)) if n not in d.deltas]
    for t in reversed(range(p.T)):
        for name, fn in kept + folded:
            shape = (p.B, env.size(name))
            env.deltas[(name, t)] = np.broadcast_to(fn(env, t), shape) + 0.0
    grads: dict[str, np.ndarray] = {}
    for pname, g in d.params.items():
        fn = compile_expr(g.step)
        total = sum(fn(env, t) for t in range(p.T))
        total = np.asarray(total, dtype=float)
        if not g.is_matrix and total.ndim == 2:
            total = total.sum(axis=0)
        grads[pname] = total
    for name in cell.inputs:
        grads[name] = np.stack([env.deltas[(name, t)] for t in range(p.T)])
    for s, expr in d.initial.items():
        grads[f"{s}0"] = np.broadcast_to(evaluate(expr, env, 0), (p.B, env.size(s))) + 0.0
    return grads
