"""Benchmarks: derive's kernel side by side with its peers, in one process run.

For each cell, shape and dtype, the median time (after warm-up) of forward and of
forward+backward over a whole sequence and batch, for

* ``derive``  — the compiled kernel (backend "cython"),
* ``numpy``   — the NumPy reference generated from the same derivation,
* ``torch``   — PyTorch's CPU module of the same math, when torch is installed
  (`lstm_np` ↔ nn.LSTM, `gru` ↔ nn.GRU, `rnn` ↔ nn.RNN with tanh),
* ``gemm``    — the GEMMs of the same shapes alone in NumPy: the floor a kernel that
  does its matrix products with BLAS cannot beat.

Ratios (derive ÷ peer) are the figures to compare: the machine is shared and noisy,
so only ratios measured in the same run mean anything. The peers of one (cell, shape,
dtype) are timed round-robin, one run each per round, so that drifts hit them alike.
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np

SHAPES = {  # name: (T, B, M, N)
    "S1": (100, 32, 128, 256),
    "S2": (50, 64, 256, 512),
    "S3": (200, 16, 64, 128),
}
TORCH_PEERS = {"lstm_np": "LSTM", "gru": "GRU", "rnn": "RNN"}


@dataclass
class Row:
    cell: str
    shape: str
    dtype: str
    peer: str
    forward_ms: float | None
    total_ms: float | None  # forward + backward
    note: str = ""


@dataclass
class Result:
    rows: list[Row] = field(default_factory=list)
    repeats: int = 5
    machine: dict = field(default_factory=dict)

    def ratio(self, cell, shape, dtype, peer, key="total_ms"):
        """derive's time ÷ the peer's time (< 1: derive is faster)."""
        mine = self.get(cell, shape, dtype, "derive")
        other = self.get(cell, shape, dtype, peer)
        if not mine or not other or getattr(mine, key) is None or getattr(other, key) is None:
            return None
        return getattr(mine, key) / getattr(other, key)

    def get(self, cell, shape, dtype, peer):
        for r in self.rows:
            if (r.cell, r.shape, r.dtype, r.peer) == (cell, shape, dtype, peer):
                return r
        return None


def median_ms(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def interleaved_ms(peers: dict, repeats: int, warmup: int = 2, pause: float = 0.15) -> dict:
    """Medians (ms) of each peer's (forward, total) callables, measured round-robin.

    One run of every peer per round, `repeats` rounds after `warmup` runs each: slow
    drifts of a shared machine hit every peer alike. A pause before each timed run lets
    the previous peer's spinning threads go to sleep (an idle OpenBLAS thread spins for
    about 0.1 s and steals a core from whatever runs next).
    """
    for fwd, total in peers.values():
        for _ in range(warmup):
            fwd()
            total()
    times = {name: ([], []) for name in peers}
    for _ in range(repeats):
        for name, fns in peers.items():
            for fn, out in zip(fns, times[name]):
                time.sleep(pause)
                t0 = time.perf_counter()
                fn()
                out.append(time.perf_counter() - t0)
    return {name: (1e3 * statistics.median(f), 1e3 * statistics.median(t))
            for name, (f, t) in times.items()}


# --- peers: each returns (forward, forward+backward) callables ------------------------------

def _derive_peer(cell, backend, dtype, shape, rng):
    from derive.kernel.runtime import load_kernel
    T, B, M, N = shape
    k = load_kernel(cell, dtype=dtype, backend=backend)
    params = k.init_params(input_size=M, hidden_size=N, seed=0)
    x = rng.standard_normal((T, B, M)).astype(dtype)
    dy = rng.standard_normal((T, B, N)).astype(dtype)
    return (lambda: k.forward(x, params)), (lambda: k.backward(k.forward(x, params), dy))


def _gemm_peer(cell, dtype, shape, rng):
    """The matrix products of one forward+backward pass, alone (NumPy's BLAS)."""
    from derive.cell.spec import load_cell
    c = load_cell(cell)
    T, B, M, N = shape
    k_in = sum(1 for n in c.nodes.values() for p in n.projections if p.operand in c.inputs)
    per_state = {}
    for n in c.nodes.values():
        for p in n.projections:
            if p.operand not in c.inputs:
                per_state[p.operand] = per_state.get(p.operand, 0) + 1
    W = rng.standard_normal((M, k_in * N)).astype(dtype)
    Rs = [rng.standard_normal((N, k * N)).astype(dtype) for k in per_state.values()]
    X = rng.standard_normal((T * B, M)).astype(dtype)
    H = rng.standard_normal((B, N)).astype(dtype)
    G = [rng.standard_normal((B, R.shape[1])).astype(dtype) for R in Rs]
    dGx = rng.standard_normal((T * B, k_in * N)).astype(dtype)
    Yall = rng.standard_normal((T * B, N)).astype(dtype)
    dGr = [rng.standard_normal((T * B, R.shape[1])).astype(dtype) for R in Rs]

    def forward():
        X @ W
        for _ in range(T):
            for R in Rs:
                H @ R

    def total():
        forward()
        for _ in range(T):
            for R, g in zip(Rs, G):
                g @ R.T
        dGx @ W.T
        dGx.T @ X
        for g in dGr:
            g.T @ Yall

    return forward, total


def _torch_peer(cell, dtype, shape, rng):
    import torch
    T, B, M, N = shape
    torch.set_num_threads(2)
    tdtype = getattr(torch, dtype)
    module = getattr(torch.nn, TORCH_PEERS[cell])(M, N).to(tdtype)
    x = torch.from_numpy(rng.standard_normal((T, B, M)).astype(dtype)).requires_grad_(True)
    dy = torch.from_numpy(rng.standard_normal((T, B, N)).astype(dtype))

    def forward():
        with torch.no_grad():
            module(x)

    def total():
        module.zero_grad(set_to_none=True)
        x.grad = None
        out, _ = module(x)
        out.backward(dy)

    return forward, total


def torch_version() -> str | None:
    try:
        import torch
    except ImportError:
        return None
    return torch.__version__


def kernel_isa() -> str:
    """The instruction-set level derive's kernels run at here, and the levels the CPU has."""
    from derive.kernel import isa
    return f"{isa.selected().name} (CPU: {', '.join(lv.name for lv in isa.supported())})"


def run(cells=None, shapes=None, dtypes=("float32", "float64"), repeats=5,
        progress=None) -> Result:
    """Measure every peer for every (cell, shape, dtype); `progress(text)` reports.

    The peers of one (cell, shape, dtype) are timed round-robin (`interleaved_ms`).
    """
    cells = cells or ["lstm_np", "lstm"]
    shapes = shapes or list(SHAPES)
    rng = np.random.default_rng(0)
    result = Result(repeats=repeats, machine={
        "python": platform.python_version(), "numpy": np.__version__,
        "torch": torch_version(), "processor": platform.processor() or platform.machine(),
        "isa": kernel_isa()})
    for cell in cells:
        for sname in shapes:
            shape = SHAPES[sname]
            for dtype in dtypes:
                makers = [("derive", lambda: _derive_peer(cell, None, dtype, shape, rng)),
                          ("numpy", lambda: _derive_peer(cell, "numpy", dtype, shape, rng)),
                          ("gemm", lambda: _gemm_peer(cell, dtype, shape, rng))]
                if cell in TORCH_PEERS and result.machine["torch"]:
                    makers.append(("torch", lambda: _torch_peer(cell, dtype, shape, rng)))
                if progress:
                    progress(f"{cell} {sname} {dtype}: {', '.join(n for n, _ in makers)}")
                peers = {}
                for peer, make in makers:
                    try:
                        peers[peer] = make()
                    except Exception as exc:  # a peer that cannot run is reported, not fatal
                        result.rows.append(Row(cell, sname, dtype, peer, None, None,
                                               note=f"{type(exc).__name__}: {exc}"))
                try:
                    medians = interleaved_ms(peers, repeats)
                except Exception as exc:  # pragma: no cover - reported, not fatal
                    medians = {}
                    for peer in peers:
                        result.rows.append(Row(cell, sname, dtype, peer, None, None,
                                               note=f"{type(exc).__name__}: {exc}"))
                for peer, (fwd, total) in medians.items():
                    result.rows.append(Row(cell, sname, dtype, peer, fwd, total))
    return result


def table(result: Result) -> str:
    """A Markdown table: times in ms and derive's ratios against each peer."""
    lines = ["| cell | shape | dtype | derive fwd | derive fwd+bwd | numpy fwd+bwd | "
             "torch fwd+bwd | GEMMs alone | derive/torch | derive/numpy | derive/GEMMs |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    keys = sorted({(r.cell, r.shape, r.dtype) for r in result.rows},
                  key=lambda k: (k[0], k[1], k[2]))

    def ms(r, key="total_ms"):
        return "—" if r is None or getattr(r, key) is None else f"{getattr(r, key):.1f}"

    def ratio(x):
        return "—" if x is None else f"{x:.2f}"

    for cell, shape, dtype in keys:
        d = result.get(cell, shape, dtype, "derive")
        lines.append(
            f"| {cell} | {shape} | {dtype} | {ms(d, 'forward_ms')} | {ms(d)} | "
            f"{ms(result.get(cell, shape, dtype, 'numpy'))} | "
            f"{ms(result.get(cell, shape, dtype, 'torch'))} | "
            f"{ms(result.get(cell, shape, dtype, 'gemm'))} | "
            f"{ratio(result.ratio(cell, shape, dtype, 'torch'))} | "
            f"{ratio(result.ratio(cell, shape, dtype, 'numpy'))} | "
            f"{ratio(result.ratio(cell, shape, dtype, 'gemm'))} |")
    notes = [f"- {r.cell} {r.shape} {r.dtype} {r.peer}: {r.note}" for r in result.rows if r.note]
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def run_bench(cells=None, as_json=False, quick=False) -> int:
    """`derive bench`: print a table (or JSON) of medians and ratios."""
    from derive.cell.spec import load_cell
    names = list(cells or [])
    for c in names:
        load_cell(c)  # a bad name or spec is a UserError (exit 2) before anything is timed
    shapes = ["S3"] if quick else None
    repeats = 3 if quick else 5

    def progress(text):
        print(f"  measuring {text} …", file=sys.stderr, flush=True)

    result = run(names or None, shapes=shapes, repeats=repeats, progress=progress)
    if as_json:
        print(json.dumps({"repeats": result.repeats, "machine": result.machine,
                          "shapes": {k: dict(zip("TBMN", v)) for k, v in SHAPES.items()},
                          "rows": [asdict(r) for r in result.rows]}, indent=2))
    else:
        print(f"medians of {result.repeats} runs after warm-up, in ms; ratios are derive's "
              f"time ÷ the peer's (< 1: derive is faster); kernels at instruction-set "
              f"level {result.machine['isa']}")
        print(table(result))
    return 0
