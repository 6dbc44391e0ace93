"""`derive analyze`: vanishing and exploding gradients, measured on the compiled kernels.

Setting. A batch of B seeded random sequences x (T, B, M) ~ scale · N(0, 1) runs through a
cell from a zero initial state; the loss reads the last step only,

    L = Σ_batch ⟨Δ, yᵀ⁻¹⟩        (Δ ~ N(0, 1), one per sequence; y the cell's output),

and for every state s and distance k = 1 … T the gradient ‖∂L/∂sᵀ⁻¹⁻ᵏ‖ (one norm per
sequence) is measured: the gradient that reaches the state k steps before the last one.

Method (`kernel_gradients`). The compiled kernel's backward returns the gradient of the
*initial* state. So for each k the kernel runs forward on the last k steps x[T−k:], from
the state sᵀ⁻¹⁻ᵏ that the full forward pass produced, and backward with Δ at its last
step only; its "<state>0" gradient is ∂L/∂sᵀ⁻¹⁻ᵏ. That is T kernel calls of lengths
1 … T (Σk = T(T+1)/2 steps): exact, and it only uses the public kernel API.

Independent check (`jacobian_gradients`). The NumPy reference (`derive.numeric`) runs the
same forward pass, the derived Jacobian (`derive.derivation.jacobian`) is evaluated at
every step, and the gradient is carried back by its backward map:
g₀ = ∂L/∂sᵀ⁻¹ (Δ for the output), g_k = J(T−k)ᵀ g_{k−1}. The tests require both to agree.
The per-step Jacobian J(t) = ∂sᵗ/∂sᵗ⁻¹ (all states stacked) also gives the spectral norm
‖J(t)‖₂ along the sequence.

Sizes: N (--hidden) and M (--input); a cell with a second node size P (LSTMP: its output
and recurrent state y has P entries, its cell state c N) takes P from `Settings.proj`
(--proj-size, default N // 2, nn.LSTM's proj_size). Each state is measured in its own
size, and the stacked Jacobian J(t) has blocks ∂sᵗ/∂rᵗ⁻¹ of size(s) × size(r)
((P+N) × (P+N) for LSTMP).

Parameters: the kernel's `init_params` (uniform ±1/√N, seeded), with the forget-gate bias
b_f (when the cell has one) shifted by `forget_bias` (default +1, the common
initialisation of Gers et al. and TensorFlow's forget_bias=1.0); or a `.npz` file.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field

import numpy as np

from derive.errors import UserError

DEFAULT_CELLS = ("lstm", "lstm_nfg", "gru", "rnn")


@dataclass(frozen=True)
class Settings:
    """What an analysis runs: sizes, seed, input scale, forget-gate bias shift. `proj` is
    P for a cell with a second node size (None: N // 2, at least 1); other cells ignore it."""

    steps: int = 100
    batch: int = 16
    hidden: int = 32
    input: int = 16
    seed: int = 0
    scale: float = 1.0
    forget_bias: float = 1.0
    proj: int | None = None

    @property
    def proj_size(self) -> int:
        """P of a cell with a second node size: --proj-size, else N // 2 (at least 1)."""
        return self.proj if self.proj is not None else max(1, self.hidden // 2)

    def check(self) -> None:
        if self.steps < 2:
            raise UserError(f"--steps {self.steps}: the analysis needs T >= 2 steps")
        if self.steps > 2000:
            raise UserError(f"--steps {self.steps}: at most 2000 steps (the analysis runs "
                            f"T kernel calls of up to T steps)")
        for name in ("batch", "hidden", "input"):
            v = getattr(self, name)
            if not 1 <= v <= 1024:
                raise UserError(f"--{name} {v}: must be between 1 and 1024")
        if self.proj is not None and not 1 <= self.proj <= 1024:
            raise UserError(f"--proj-size {self.proj}: must be between 1 and 1024")
        if not np.isfinite(self.scale) or not np.isfinite(self.forget_bias):
            raise UserError("--scale and --forget-bias must be finite numbers")


@dataclass
class CellAnalysis:
    """The measurements of one cell. `norms[s]` is (B, T): column k−1 holds
    ‖∂L/∂sᵀ⁻¹⁻ᵏ‖ per sequence; `spectral` is (B, T): ‖J(t)‖₂ per sequence, t = 0 … T−1."""

    cell: str
    states: tuple[str, ...]
    norms: dict[str, np.ndarray]
    spectral: np.ndarray
    params_from: str
    extra: dict = field(default_factory=dict)
    sizes: dict = field(default_factory=dict)    # {"N": N(, "P": P)} the cell ran with

    def summary(self, state: str) -> dict[str, np.ndarray]:
        """Mean and spread over the batch in log10 (the plot's scale), per distance k."""
        logs = np.log10(np.maximum(self.norms[state], 1e-300))
        return {"log10_mean": logs.mean(axis=0), "log10_std": logs.std(axis=0),
                "log10_min": logs.min(axis=0), "log10_max": logs.max(axis=0)}


# --- inputs ------------------------------------------------------------------------------

def problem(kernel, settings: Settings, params: dict | None = None):
    """(params, x, Δ) of the analysis: seeded, in the kernel's dtype (float64); Δ of each
    output in that output's size (N, or P)."""
    s = settings
    if params is None:
        proj = {"proj_size": s.proj_size} if kernel.has_proj_size else {}
        params = kernel.init_params(input_size=s.input, hidden_size=s.hidden, seed=s.seed,
                                    **proj)
        if "b_f" in params and s.forget_bias:
            params["b_f"] = params["b_f"] + s.forget_bias
    rng = np.random.default_rng([s.seed, 1])
    dims = sizes_of(kernel.parameters, params)
    x = s.scale * rng.standard_normal((s.steps, s.batch, s.input))
    delta = {o: rng.standard_normal((s.batch, dims[kernel.size(o)])) for o in kernel.outputs}
    return params, x, delta


def sizes_of(shapes: dict, params: dict) -> dict[str, int]:
    """{"N": N(, "P": P, "M": M)} read from the parameters: the first parameter whose
    paper shape (`shapes`, e.g. W_rm: ("P", "N")) names a size gives its value."""
    dims: dict[str, int] = {}
    for name, shape in shapes.items():
        for size, n in zip(shape, params[name].shape):
            dims.setdefault(size, n)
    return dims


def load_params(path: str, kernel, settings: Settings) -> dict:
    """Parameters of `kernel`'s cell from an .npz file (keys `<cell>/<name>` or `<name>`),
    checked against the paper's shapes with M = --input; a mistake is a UserError."""
    try:
        with np.load(path, allow_pickle=False) as f:
            data = {k: np.asarray(f[k]) for k in f.files}
    except (OSError, ValueError) as exc:
        raise UserError(f"--params {path}: cannot read it as .npz ({exc})") from None
    params = {}
    for name, shape in kernel.parameters.items():
        a = data.get(f"{kernel.cell}/{name}", data.get(name))
        if a is None:
            raise UserError(f"--params {path}: no array {name!r} (or {kernel.cell}/{name}) for "
                            f"{kernel.cell}; it needs {', '.join(kernel.parameters)}")
        params[name] = a
    # N (and P) from the first parameter that has it in its first dimension, M = --input
    sizes = {"M": settings.input}
    for name, shape in kernel.parameters.items():
        if np.ndim(params[name]) >= 1:
            sizes.setdefault(shape[0], np.shape(params[name])[0])
    given = ", ".join(f"{k}={v}" for k, v in sizes.items() if k != "M")
    for name, shape in kernel.parameters.items():
        want = tuple(sizes.get(d, -1) for d in shape)
        a = params[name]
        if a.shape != want or not np.issubdtype(a.dtype, np.number):
            raise UserError(f"--params {path}: {name} has shape {a.shape}, {kernel.cell} needs "
                            f"{want} ({' x '.join(shape)} with {given}, M={settings.input} "
                            f"from --input)")
        params[name] = np.ascontiguousarray(a, dtype=kernel.dtype)
        if not np.all(np.isfinite(params[name])):
            raise UserError(f"--params {path}: {name} has values that are not finite")
    return params


# --- the measurement ---------------------------------------------------------------------

def kernel_gradients(kernel, params, x, delta) -> dict[str, np.ndarray]:
    """{state: (B, T)} with column k−1 = ‖∂L/∂sᵀ⁻¹⁻ᵏ‖, by the kernel's backward on the last
    k steps from the full pass's state (see the module docstring)."""
    T, B, _ = x.shape
    full = kernel.forward(x, params)
    trajectory = dict(zip(kernel.states, full.S))   # (T+1, B, N): [0] is the initial state
    out = {s: np.empty((B, T)) for s in kernel.states}
    for k in range(1, T + 1):
        start = T - k
        trace = kernel.forward(np.ascontiguousarray(x[start:]), params,
                               {s: np.ascontiguousarray(trajectory[s][start])
                                for s in kernel.states})
        d_out = {}
        for o in kernel.outputs:
            d = np.zeros((k, B, delta[o].shape[1]), kernel.dtype)
            d[-1] = delta[o]
            d_out[o] = d
        grads = kernel.backward(trace, d_out)
        for s in kernel.states:
            out[s][:, k - 1] = np.linalg.norm(grads[f"{s}0"], axis=1)
    return out


def reference_trajectory(cell, params, x):
    """The NumPy reference's forward pass (every node at every step) from a zero state."""
    from derive import numeric
    T, B, M = x.shape
    dims = sizes_of({n: p.shape for n, p in cell.parameters.items()}, params)
    prob = numeric.Problem(cell, {k: np.asarray(v, float) for k, v in params.items()},
                           {cell.inputs[0]: np.asarray(x, float)},
                           {s: np.zeros((B, dims[cell.size(s)])) for s in cell.states}, {},
                           T, B, dims["N"], M, dims.get("P", 0))
    return numeric.forward(prob)


def evaluate_block(block, env, t: int) -> np.ndarray:
    """The (B, n, k) value of one Jacobian block ∂s/∂r at step t of a NumPy reference Env
    (n, k: the sizes of s and r; N, N but for a cell with a second size P)."""
    from derive.numeric import evaluate
    B, n, k = env.B, env.size(block.state), env.size(block.previous)
    out = np.zeros((B, n, k))
    eye = np.broadcast_to(np.eye(k), (B, k, k))
    for term in block.terms:
        m = eye
        for f in reversed(term.factors):
            if isinstance(f, str):
                m = np.matmul(env.params[f], m)
            else:
                m = np.broadcast_to(evaluate(f, env, t), (B, m.shape[1]))[:, :, None] * m
        out = out + np.broadcast_to(evaluate(term.coefficient, env, t), (B, n))[:, :, None] * m
    return out


def step_jacobian(jac, env, t: int) -> np.ndarray:
    """J(t) = ∂sᵗ/∂sᵗ⁻¹ with the states stacked in the cell's order: (B, n, n), n the sum
    of the states' sizes (S·N; P + N for LSTMP's y and c)."""
    return np.concatenate([np.concatenate([evaluate_block(jac.block(s, r), env, t)
                                           for r in jac.states], axis=2)
                           for s in jac.states], axis=1)


def jacobian_gradients(d, env, delta) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """({state: (B, T)} gradient norms by the derived backward map, (B, T) ‖J(t)‖₂).

    Needs every output to be a state (then ∂L/∂sᵀ⁻¹ is Δ on the outputs, 0 elsewhere)."""
    from derive.derivation.jacobian import jacobian
    cell = d.cell
    if any(o not in cell.states for o in cell.outputs):
        raise UserError(f"{cell.name}: the Jacobian check needs every output to be a state")
    jac = jacobian(d)
    T, B = env.T, env.B
    g = np.concatenate([delta[s] if s in cell.outputs else env.zeros(s)
                        for s in cell.states], axis=1)
    ends = np.cumsum([env.size(s) for s in cell.states])   # each state's block of g
    norms = {s: np.empty((B, T)) for s in cell.states}
    spectral = np.empty((B, T))
    for t in range(T - 1, -1, -1):
        J = step_jacobian(jac, env, t)
        spectral[:, t] = np.linalg.svd(J, compute_uv=False)[:, 0]
        g = np.einsum("bij,bi->bj", J, g)          # Jᵀ g, per sequence
        k = T - t
        for s, block in zip(cell.states, np.split(g, ends[:-1], axis=1)):
            norms[s][:, k - 1] = np.linalg.norm(block, axis=1)
    return norms, spectral


def analyze_cell(cell, settings: Settings, params_file: str | None = None) -> CellAnalysis:
    """Measure one cell (see the module docstring)."""
    from derive.derivation import derive
    from derive.kernel.runtime import load_kernel
    d = derive(cell)
    kernel = load_kernel(d.cell, dtype="float64")
    params = load_params(params_file, kernel, settings) if params_file else None
    params, x, delta = problem(kernel, settings, params)
    norms = kernel_gradients(kernel, params, x, delta)
    env = reference_trajectory(d.cell, params, x)
    _, spectral = jacobian_gradients(d, env, delta)
    sizes = {k: v for k, v in sizes_of(kernel.parameters, params).items() if k != "M"}
    return CellAnalysis(d.cell.name, tuple(d.cell.states), norms, spectral,
                        params_file or f"init_params(seed={settings.seed})"
                        + (f", b_f + {settings.forget_bias:g}" if "b_f" in params
                           and not params_file and settings.forget_bias else ""),
                        sizes=sizes)


# --- report --------------------------------------------------------------------------------

def to_json(results: list[CellAnalysis], settings: Settings, states) -> dict:
    cells = []
    for r in results:
        entry = {"cell": r.cell, "parameters": r.params_from, "sizes": r.sizes,
                 "states": {}}
        for s in states_of(r, states):
            summ = r.summary(s)
            entry["states"][s] = {k: [round(float(v), 6) for v in a] for k, a in summ.items()}
        entry["spectral_norm"] = {"mean": [round(float(v), 6) for v in r.spectral.mean(axis=0)],
                                  "std": [round(float(v), 6) for v in r.spectral.std(axis=0)]}
        cells.append(entry)
    return {"settings": settings.__dict__,
            "method": "kernel backward on the last k steps from the full pass's state; "
                      "loss at the last step only; norms per sequence, log10 mean and "
                      "spread over the batch; spectral norm of the derived per-step Jacobian",
            "k": list(range(1, settings.steps + 1)), "cells": cells}


def states_of(r: CellAnalysis, states) -> list[str]:
    return [s for s in r.states if not states or s in states]


def table(results: list[CellAnalysis], settings: Settings, states) -> str:
    ks = [k for k in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000) if k <= settings.steps]
    head = f"{'cell':<10} {'state':<6}" + "".join(f"{'k=' + str(k):>10}" for k in ks)
    lines = [f"|dL/ds[T-1-k]|: geometric mean over {settings.batch} sequences "
             f"(T={settings.steps}, {sizes_text(results, settings)}, M={settings.input}, "
             f"input scale {settings.scale:g}, seed {settings.seed})", head]
    for r in results:
        for s in states_of(r, states):
            m = r.summary(s)["log10_mean"]
            lines.append(f"{r.cell:<10} {s:<6}" + "".join(f"{10 ** m[k - 1]:>10.2e}" for k in ks))
    lines.append("spectral norm of the per-step Jacobian ds[t]/ds[t-1], mean over steps "
                 "and sequences:")
    lines += [f"{r.cell:<10} {r.spectral.mean():.3f} (min {r.spectral.min():.3f}, "
              f"max {r.spectral.max():.3f})" for r in results]
    return "\n".join(lines) + "\n"


def sizes_text(results: list[CellAnalysis], settings: Settings) -> str:
    """"N=32" (or "N=32 (lstm), 8 (rnn)" when the cells differ, from a --params file),
    then ", P=16 (lstmp)" for the cells with a second node size."""
    Ns = [(r.cell, r.sizes.get("N", settings.hidden)) for r in results]
    text = (f"N={Ns[0][1]}" if len({n for _, n in Ns}) <= 1
            else "N=" + ", ".join(f"{n} ({c})" for c, n in Ns))
    Ps = [f"{r.sizes['P']} ({r.cell})" for r in results if "P" in r.sizes]
    return text + (f", P={', '.join(Ps)}" if Ps else "")


def plot(results: list[CellAnalysis], settings: Settings, states, path: str) -> None:
    """One figure: ‖∂L/∂sᵀ⁻¹⁻ᵏ‖ against k (log scale, mean ± std of log10 over the batch)
    and the spectral norm of the per-step Jacobian along the sequence. Deterministic bytes."""
    from derive.docs.pictures import new_figure, save_figure, style
    with style() as rc:
        fig = new_figure(figsize=(12, 4.6))
        _draw_plot(fig, results, settings, states, rc["axes.prop_cycle"].by_key()["color"])
    save_figure(fig, path)


def _draw_plot(fig, results, settings, states, colors) -> None:
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.6, 1]})
    k = np.arange(1, settings.steps + 1)
    styles = ["-", "--", ":", "-."]
    for n, r in enumerate(results):
        color = colors[n % len(colors)]
        for i, s in enumerate(states_of(r, states)):
            summ = r.summary(s)
            m, sd = summ["log10_mean"], summ["log10_std"]
            left.plot(k, 10 ** m, styles[i % 4], color=color, label=f"{r.cell}: {s}")
            left.fill_between(k, 10 ** (m - sd), 10 ** (m + sd), color=color, alpha=0.15,
                              linewidth=0)
        t = np.arange(settings.steps)
        mean, sd = r.spectral.mean(axis=0), r.spectral.std(axis=0)
        right.plot(t, mean, color=color, label=r.cell)
        right.fill_between(t, mean - sd, mean + sd, color=color, alpha=0.15, linewidth=0)
    left.set_yscale("log")
    left.set_xlabel(r"distance $k$ (steps before the last)")
    left.set_ylabel(r"$\Vert\partial L/\partial s^{(T-1-k)}\Vert$")
    left.set_title("gradient reaching each state (loss at the last step)", fontsize=10)
    left.grid(True, which="major", alpha=0.3)
    left.legend(fontsize=8, ncol=2)
    right.set_xlabel(r"step $t$")
    right.set_ylabel(r"$\Vert\partial s^{(t)}/\partial s^{(t-1)}\Vert_2$")
    right.set_title("spectral norm of the per-step Jacobian", fontsize=10)
    right.grid(True, alpha=0.3)
    right.legend(fontsize=8)
    fig.suptitle(f"T={settings.steps}, B={settings.batch}, {sizes_text(results, settings)}, "
                 f"M={settings.input}, x ~ {settings.scale:g}·N(0,1), seed {settings.seed}; "
                 f"band: mean ± std of log10 over the batch", fontsize=9)
    fig.tight_layout()


def run_analyze(cells, settings: Settings, *, params: str | None = None,
                plot_path: str | None = None, as_json: bool = False,
                states=None) -> int:
    """`derive analyze`: measure every cell, print a table (or JSON), write the plot."""
    from derive.cell.spec import load_cell
    settings.check()
    loaded = [load_cell(c) for c in (cells or DEFAULT_CELLS)]
    for s in states or ():
        for c in loaded:
            if s not in c.states:
                raise UserError(f"--state {s}: {c.name} has no state {s!r} (its states: "
                                f"{', '.join(c.states)})")
    if plot_path:
        from derive.docs.pictures import check_output
        check_output(plot_path)
    if params:   # every mistake in the file before any work
        from derive.kernel.runtime import load_kernel
        for c in loaded:
            load_params(params, load_kernel(c, dtype="float64"), settings)
    results = []
    for c in loaded:
        print(f"derive: analyzing {c.name} …", file=sys.stderr, flush=True)
        results.append(analyze_cell(c, settings, params))
    if plot_path:
        plot(results, settings, states, plot_path)
        print(f"derive: wrote {plot_path}", file=sys.stderr)
    if as_json:
        print(json.dumps(to_json(results, settings, states), indent=1))
    else:
        sys.stdout.write(table(results, settings, states))
    return 0
