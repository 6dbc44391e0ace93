"""Benchmarks: derive's kernel side by side with its peers, in one process run.

For each cell, shape and dtype, the median time (after warm-up) of forward and of
forward+backward over a whole sequence and batch, for

* ``derive``  — the compiled kernel (backend "cython"),
* ``numpy``   — the NumPy reference generated from the same derivation,
* ``torch``   — PyTorch's CPU module of the same math, when torch is installed
  (`lstm_np` ↔ nn.LSTM, `gru` ↔ nn.GRU, `rnn` ↔ nn.RNN with tanh, `lstmp` ↔
  nn.LSTM(proj_size=P) with derive's weights: weight_ih_l0 = [W_i; W_f; W_z; W_o],
  weight_hh_l0 = [R_i; …], weight_hr_l0 = W_rm, bias_ih_l0 the b's, bias_hh_l0 zero),
* ``gemm``    — the GEMMs of the same shapes alone in NumPy: the floor a kernel that
  does its matrix products with BLAS cannot beat.

Ratios (derive ÷ peer) are the figures to compare: the machine is shared and noisy,
so only ratios measured in the same run mean anything. The peers of one (cell, shape,
dtype) are timed round-robin, one run each per round, so that drifts hit them alike.

Beside the ratios, the physical limit: the run measures the machine's GEMM peak (a
large square product, 2·n³ flops, in NumPy's BLAS on all its threads) for each dtype,
at its start and at its end, and reports each kernel's forward+backward as a fraction of it,

    useful flops ÷ time ÷ peak,    useful flops = 3 · 2·T·B·N·Σ_projections (M or N),

the matrix products of the pass (each projection W @ operand is 2·N·size(operand) flops
per step and sequence, once forward and twice backward: the delta of the operand and
the weight gradient; a projection of a node of size P, P·size(operand)); for lstm_np that
is 3 · 2·T·B·4N·(M+N), for lstmp 3 · 2·T·B·(4N·(M+P) + P·N) (the gates read x and y of
size P, y = W_rm m projects the N units to P).

Sizes: the shapes give T, B, M and N; a cell with a second node size (lstmp) runs with
P = N // 2 (`proj_size`): S1 N=256, P=128; S2 N=512, P=256; S3 N=128, P=64. Every result names its
machine (`machine()`): the CPU model, its vector extensions, the BLAS libraries loaded
and the core each one chose, the flags the kernels were compiled with, the threads.
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

SHAPES = {  # name: (T, B, M, N)
    "S1": (100, 32, 128, 256),
    "S2": (50, 64, 256, 512),
    "S3": (200, 16, 64, 128),
}
TORCH_PEERS = {"lstm_np": "LSTM", "gru": "GRU", "rnn": "RNN", "lstmp": "LSTM"}
PEAK_SIZE = 2048   # n of the n×n×n product that measures the GEMM peak


@dataclass
class Row:
    cell: str
    shape: str
    dtype: str
    peer: str
    forward_ms: float | None
    total_ms: float | None  # forward + backward
    note: str = ""
    gflop: float | None = None  # useful GFlop of one forward + backward (see the docstring)


@dataclass
class Result:
    rows: list[Row] = field(default_factory=list)
    repeats: int = 5
    machine: dict = field(default_factory=dict)
    peak: dict = field(default_factory=dict)   # dtype -> GFlop/s of the large GEMM
    peak_runs: dict = field(default_factory=dict)  # dtype -> [at the start, at the end]
    peak_size: int = PEAK_SIZE                     # n of the n×n×n product

    def of_peak(self, row: "Row | None") -> float | None:
        """The row's forward+backward as a fraction of its dtype's GEMM peak."""
        if row is None or row.total_ms is None or row.gflop is None \
                or not self.peak.get(row.dtype):
            return None
        return row.gflop / (row.total_ms / 1e3) / self.peak[row.dtype]

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


def interleaved_ms(peers: dict, repeats: int, warmup: int = 2, pause: float = 0.15) -> dict:
    """Medians (ms) of each peer's (forward, total) callables, measured round-robin.

    One run of every peer per round, `repeats` rounds after `warmup` runs each: slow
    drifts of a shared machine hit every peer alike. A pause before each timed run lets
    the previous peer's spinning threads go to sleep (an idle OpenBLAS thread spins for
    about 0.1 s and steals a core from whatever runs next); then one untimed run of the
    same callable wakes its own threads, so that the timed run is one of a back-to-back
    sequence, as in a training loop (waking a sleeping OpenMP worker costs up to
    milliseconds, which is no part of a kernel's speed).
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
                fn()
                t0 = time.perf_counter()
                fn()
                out.append(time.perf_counter() - t0)
    return {name: (1e3 * statistics.median(f), 1e3 * statistics.median(t))
            for name, (f, t) in times.items()}


# --- the machine ------------------------------------------------------------------------------

#: vector extensions worth naming, in the order they are printed (/proc/cpuinfo flag names)
VECTOR_FLAGS = {"sse4_2": "SSE4.2", "avx": "AVX", "avx2": "AVX2", "fma": "FMA",
                "avx_vnni": "AVX-VNNI", "asimd": "NEON", "sve": "SVE", "sve2": "SVE2"}


def vector_extensions(flags) -> str:
    """The vector extensions among CPU `flags`: "SSE4.2, AVX, AVX2, FMA, AVX-512 (F, BW…)"."""
    flags = set(flags)
    named = [text for flag, text in VECTOR_FLAGS.items() if flag in flags]
    avx512 = sorted(f[len("avx512"):].lstrip("_").upper() for f in flags
                    if f.startswith("avx512"))
    if avx512:
        first = [f for f in ("F", "CD", "DQ", "BW", "VL") if f in avx512]
        avx512 = first + [f for f in avx512 if f not in first]
        named.insert(next((i for i, t in enumerate(named) if t == "AVX-VNNI"), len(named)),
                     f"AVX-512 ({', '.join(avx512)})")
    amx = sorted(f[len("amx_"):].upper() for f in flags if f.startswith("amx_"))
    if amx:
        named.append(f"AMX ({', '.join(amx)})")
    return ", ".join(named) or "none known"


def _cpuinfo() -> dict:
    """The first processor's fields of /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    block = text.split("\n\n")[0]
    return {k.strip(): v.strip() for k, _, v in
            (line.partition(":") for line in block.splitlines()) if k.strip()}


def _openblas_query(lib, name: str, restype):
    """OpenBLAS's own query `name` (openblas_get_corename…) under the names its builds
    export (plain, scipy-openblas's "scipy_" prefix, the 64-bit-integer "64_" suffix)."""
    for symbol in (name, f"scipy_{name}", f"{name}64_", f"scipy_{name}64_"):
        fn = getattr(lib, symbol, None)
        if fn is not None:
            fn.restype, fn.argtypes = restype, []
            value = fn()
            return value.decode().strip() if isinstance(value, bytes) else value
    return None


def blas_libraries() -> list[dict]:
    """Every OpenBLAS loaded in this process (NumPy's, the kernels' scipy-openblas32…):
    the package that ships it, its configuration, the core it chose and its threads.
    Read from the library itself (Linux: the mapped files of /proc/self/maps)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return []
    paths = sorted({line.split(None, 5)[-1] for line in maps.splitlines()
                    if "openblas" in line.rsplit("/", 1)[-1].lower() and "/" in line})
    out = []
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        parts = Path(path).parts
        owner = parts[parts.index("site-packages") + 1] if "site-packages" in parts \
            else Path(path).name
        out.append({"package": owner.removesuffix(".libs"), "path": path,
                    "config": _openblas_query(lib, "openblas_get_config", ctypes.c_char_p),
                    "core": _openblas_query(lib, "openblas_get_corename", ctypes.c_char_p),
                    "threads": _openblas_query(lib, "openblas_get_num_threads",
                                               ctypes.c_int)})
    return out


def usable_cpus() -> int:
    """The CPUs this process may run on (the machine's, not $DERIVE_NUM_THREADS: a
    one-thread run names the same machine as a two-thread one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def machine(kernel=None) -> dict:
    """What a benchmark ran on: CPU model, vector extensions, BLAS cores, threads.

    Call it after the kernels and NumPy have run (their BLAS libraries are then loaded);
    `kernel` (a loaded Kernel) adds the flags the kernels were compiled with.
    """
    from derive.kernel.runtime import default_threads
    info = _cpuinfo()
    cpu = info.get("model name") or platform.processor() or platform.machine()
    detail = ", ".join(f"{k} {info[k]}" for k in ("cpu family", "model", "stepping")
                       if k in info)
    torch = torch_version()
    m = {"cpu": cpu + (f" ({detail})" if detail else ""),
         "architecture": platform.machine(),
         "cpus": usable_cpus(),
         "vector_extensions": vector_extensions(info.get("flags", "").split()),
         "blas": blas_libraries(),
         "kernel_flags": (getattr(kernel.module, "BUILD_INFO", {}).get("flags")
                          if kernel is not None else None),
         "kernel_threads": kernel.threads if kernel is not None else default_threads(),
         "isa": kernel_isa(),
         "openblas_env": {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE",
                                                     "OPENBLAS_NUM_THREADS") if k in os.environ},
         "python": platform.python_version(), "numpy": np.__version__, "torch": torch}
    if torch:
        import torch as t
        m["torch_threads"] = t.get_num_threads()
        m["torch_blas"] = "MKL" if t.backends.mkl.is_available() else "not MKL"
    return m


def machine_key(m: dict) -> str:
    """One name per kind of machine: CPU, its vector extensions and CPU count."""
    avx512 = "AVX-512" if "AVX-512" in m["vector_extensions"] else (
        "AVX2" if "AVX2" in m["vector_extensions"] else m["architecture"])
    return f"{m['cpu']}, {avx512}, {m['cpus']} CPUs"


def describe(m: dict) -> str:
    """The machine as Markdown bullet points (for results.md and `derive bench`)."""
    blas = "; ".join(f"{b['package']}: core {b['core'] or '?'}, {b['threads']} "
                     f"thread{'' if b['threads'] == 1 else 's'} "
                     f"({b['config'] or 'configuration unknown'})" for b in m["blas"]) \
        or "no OpenBLAS found loaded"
    env = ", ".join(f"{k}={v}" for k, v in m["openblas_env"].items()) or "none"
    torch = (f"PyTorch {m['torch']} ({m['torch_blas']}, {m['torch_threads']} threads)"
             if m.get("torch") else "PyTorch not installed")
    return "\n".join([
        f"- CPU: {m['cpu']}, {m['architecture']}, {m['cpus']} CPUs usable",
        f"- Vector extensions: {m['vector_extensions']}",
        f"- BLAS (OpenBLAS's own query): {blas}",
        f"- OpenBLAS environment: {env}",
        f"- Kernels: compiled with `{m['kernel_flags'] or '?'}`, "
        f"{m['kernel_threads']} threads, instruction-set level {m.get('isa', '?')}",
        f"- Python {m['python']}, NumPy {m['numpy']}, {torch}"])


def gemm_peak(dtype, n: int = PEAK_SIZE, repeats: int = 5, pause: float = 0.15) -> float:
    """GFlop/s of an n×n×n product in NumPy's BLAS (2·n³ flops), median of `repeats`."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n)).astype(dtype) for _ in range(2))
    out = np.empty((n, n), dtype)
    np.matmul(a, b, out=out)
    times = []
    for _ in range(repeats):
        time.sleep(pause)
        t0 = time.perf_counter()
        np.matmul(a, b, out=out)
        times.append(time.perf_counter() - t0)
    return 2.0 * n ** 3 / statistics.median(times) / 1e9


def sizes(cell, shape) -> dict[str, int]:
    """{"M", "N"(, "P")} of a run: the shape's M and N, and P = N // 2 for a cell with a
    second node size (lstmp: nn.LSTM's proj_size)."""
    T, B, M, N = shape
    out = {"M": M, "N": N}
    if has_proj_size(cell):
        out["P"] = N // 2
    return out


def has_proj_size(cell) -> bool:
    """Whether `cell` (a name, path or Cell) has a second node size P."""
    from derive.cell.spec import load_cell
    c = load_cell(cell)
    return any("P" in p.shape for p in c.parameters.values())


def useful_gflop(cell, shape) -> float:
    """GFlop of the matrix products of one forward+backward pass (see the docstring):
    each projection of a node of size n on an operand of size m is 2·n·m flops per step
    and sequence, three times (forward, δ of the operand, weight gradient)."""
    from derive.cell.spec import load_cell
    c = load_cell(cell)
    T, B = shape[:2]
    n = sizes(c, shape)
    per_step = sum(2 * n[c.size(node.name)] * n[c.size(p.operand)]
                   for node in c.nodes.values() for p in node.projections)
    return 3 * T * B * per_step / 1e9


# --- peers: each returns (forward, forward+backward) callables ------------------------------

def _derive_peer(cell, backend, dtype, shape, rng):
    from derive.kernel.runtime import load_kernel
    T, B, M, N = shape
    n = sizes(cell, shape)
    k = load_kernel(cell, dtype=dtype, backend=backend)
    params = _params(k, shape)
    x = rng.standard_normal((T, B, M)).astype(dtype)
    dy = {o: rng.standard_normal((T, B, n[k.size(o)])).astype(dtype) for o in k.outputs}
    dy = dy[k.outputs[0]] if len(k.outputs) == 1 else dy
    return (lambda: k.forward(x, params)), (lambda: k.backward(k.forward(x, params), dy))


def _params(kernel, shape) -> dict:
    """The kernel's init_params (seed 0) at `shape`, with P = N // 2 for a cell with P."""
    T, B, M, N = shape
    proj = {"proj_size": N // 2} if kernel.has_proj_size else {}
    return kernel.init_params(input_size=M, hidden_size=N, seed=0, **proj)


def _gemm_peer(cell, dtype, shape, rng):
    """The matrix products of one forward+backward pass, alone (NumPy's BLAS): the
    projections of the input as one large product, those of a state or of a node of
    the same step (lstmp's W_rm @ m) as one small product per step, grouped by operand
    and by the size of the nodes they feed; backward, the transposed products per step
    and the weight gradients as large products after the loop."""
    from derive.cell.spec import load_cell
    c = load_cell(cell)
    T, B = shape[:2]
    n = sizes(c, shape)
    k_in, per_step = {}, {}   # (operand, rows) -> blocks; per_step: (operand, shift, rows)
    for node in c.nodes.values():
        for p in node.projections:
            rows = c.size(node.name)
            if p.operand in c.inputs:
                k_in[(p.operand, rows)] = k_in.get((p.operand, rows), 0) + 1
            else:
                key = (p.operand, p.shift, rows)
                per_step[key] = per_step.get(key, 0) + 1

    def randn(*dims):
        return rng.standard_normal(dims).astype(dtype)

    Xs = [(randn(T * B, n[c.size(op)]), randn(n[c.size(op)], k * n[rows]),
           randn(T * B, k * n[rows])) for (op, rows), k in k_in.items()]
    Rs = [(randn(B, n[c.size(op)]), randn(n[c.size(op)], k * n[rows]), randn(B, k * n[rows]),
           randn(T * B, n[c.size(op)]), randn(T * B, k * n[rows]))
          for (op, _shift, rows), k in per_step.items()]

    def forward():
        for X, W, _ in Xs:
            X @ W
        for _ in range(T):
            for H, R, *_rest in Rs:
                H @ R

    def total():
        forward()
        for _ in range(T):
            for _H, R, g, *_rest in Rs:
                g @ R.T
        for X, W, dG in Xs:
            dG @ W.T
            dG.T @ X
        for *_first, Hall, dG in Rs:
            dG.T @ Hall

    return forward, total


def _torch_peer(cell, dtype, shape, rng):
    import torch

    from derive.kernel.runtime import default_threads, load_kernel
    T, B, M, N = shape
    torch.set_num_threads(default_threads())   # the threads derive's kernels use
    tdtype = getattr(torch, dtype)
    if cell == "lstmp":
        P = sizes(cell, shape)["P"]
        module = torch.nn.LSTM(M, N, proj_size=P).to(tdtype)
        load_lstmp_weights(module, _params(load_kernel(cell, dtype), shape))
    else:
        P = N
        module = getattr(torch.nn, TORCH_PEERS[cell])(M, N).to(tdtype)
    x = torch.from_numpy(rng.standard_normal((T, B, M)).astype(dtype)).requires_grad_(True)
    dy = torch.from_numpy(rng.standard_normal((T, B, P)).astype(dtype))

    def forward():
        with torch.no_grad():
            module(x)

    def total():
        module.zero_grad(set_to_none=True)
        x.grad = None
        out, _ = module(x)
        out.backward(dy)

    return forward, total


def load_lstmp_weights(module, params: dict) -> None:
    """lstmp's parameters into nn.LSTM(M, N, proj_size=P) (layer 0): torch's gate order
    i, f, g = z, o in weight_ih_l0, weight_hh_l0 and bias_ih_l0; weight_hr_l0 = W_rm;
    bias_hh_l0 zero (the cell has one bias per gate)."""
    import torch

    def cat(prefix):
        return torch.from_numpy(np.concatenate([params[f"{prefix}_{g}"] for g in "ifzo"]))

    with torch.no_grad():
        module.weight_ih_l0.copy_(cat("W"))
        module.weight_hh_l0.copy_(cat("R"))
        module.weight_hr_l0.copy_(torch.from_numpy(np.asarray(params["W_rm"])))
        module.bias_ih_l0.copy_(cat("b"))
        module.bias_hh_l0.zero_()


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
        progress=None, peak_size: int = PEAK_SIZE) -> Result:
    """Measure every peer for every (cell, shape, dtype); `progress(text)` reports.

    The peers of one (cell, shape, dtype) are timed round-robin (`interleaved_ms`). The
    GEMM peak of each dtype is measured at the start and at the end of the run; the
    higher of the two is the peak (on a shared machine a neighbour can slow either).
    """
    from derive.kernel.runtime import load_kernel
    cells = cells or ["lstm_np", "lstm"]
    shapes = shapes or list(SHAPES)
    rng = np.random.default_rng(0)
    result = Result(repeats=repeats, peak_size=peak_size)

    def measure_peak():
        for dtype in dtypes:
            if progress:
                progress(f"GEMM peak, {dtype}: {peak_size}×{peak_size}×{peak_size}")
            result.peak_runs.setdefault(dtype, []).append(gemm_peak(dtype, peak_size, repeats))
            result.peak[dtype] = max(result.peak_runs[dtype])

    measure_peak()
    has_torch = torch_version() is not None
    for cell in cells:
        for sname in shapes:
            shape = SHAPES[sname]
            gflop = useful_gflop(cell, shape)
            for dtype in dtypes:
                makers = [("derive", lambda: _derive_peer(cell, None, dtype, shape, rng)),
                          ("numpy", lambda: _derive_peer(cell, "numpy", dtype, shape, rng)),
                          ("gemm", lambda: _gemm_peer(cell, dtype, shape, rng))]
                if cell in TORCH_PEERS and has_torch:
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
                    result.rows.append(Row(cell, sname, dtype, peer, fwd, total, gflop=gflop))
    measure_peak()
    kernel = None
    try:
        kernel = load_kernel(cells[0], dtypes[0], "cython")
    except Exception:  # pragma: no cover - the rows already say why derive did not run
        pass
    result.machine = machine(kernel)
    return result


def table(result: Result) -> str:
    """A Markdown table: times in ms, derive's ratios against each peer, and derive's and
    torch's forward+backward as a fraction of the GEMM peak."""
    lines = ["| cell | shape | dtype | derive fwd | derive fwd+bwd | numpy fwd+bwd | "
             "torch fwd+bwd | GEMMs alone | derive/torch | derive/numpy | derive/GEMMs | "
             "derive % of peak | torch % of peak |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    keys = sorted({(r.cell, r.shape, r.dtype) for r in result.rows},
                  key=lambda k: (k[0], k[1], k[2]))

    def ms(r, key="total_ms"):
        return "—" if r is None or getattr(r, key) is None else f"{getattr(r, key):.1f}"

    def ratio(x):
        return "—" if x is None else f"{x:.2f}"

    def percent(r):
        x = result.of_peak(r)
        return "—" if x is None else f"{100 * x:.0f} %"

    for cell, shape, dtype in keys:
        d = result.get(cell, shape, dtype, "derive")
        torch = result.get(cell, shape, dtype, "torch")
        lines.append(
            f"| {cell} | {shape} | {dtype} | {ms(d, 'forward_ms')} | {ms(d)} | "
            f"{ms(result.get(cell, shape, dtype, 'numpy'))} | {ms(torch)} | "
            f"{ms(result.get(cell, shape, dtype, 'gemm'))} | "
            f"{ratio(result.ratio(cell, shape, dtype, 'torch'))} | "
            f"{ratio(result.ratio(cell, shape, dtype, 'numpy'))} | "
            f"{ratio(result.ratio(cell, shape, dtype, 'gemm'))} | "
            f"{percent(d)} | {percent(torch)} |")
    notes = [f"- {r.cell} {r.shape} {r.dtype} {r.peer}: {r.note}" for r in result.rows if r.note]
    for cell in sorted({k[0] for k in keys}):
        shapes = sorted({k[1] for k in keys if k[0] == cell})
        if has_proj_size(cell):
            notes.append(f"- {cell}: projection size P = N // 2 ("
                         + ", ".join(f"{s} P={SHAPES[s][3] // 2}" for s in shapes if s in SHAPES)
                         + "); torch: nn.LSTM(proj_size=P) with the same weights")
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def peak_line(result: Result) -> str:
    """"GEMM peak (…): float32 470 GFlop/s (470 at the start, 455 at the end), …"."""
    def runs(dtype):
        r = result.peak_runs.get(dtype, [])
        return f" ({r[0]:.0f} at the start, {r[1]:.0f} at the end)" if len(r) == 2 else ""

    peaks = ", ".join(f"{dtype} {gflops:.0f} GFlop/s{runs(dtype)}"
                      for dtype, gflops in result.peak.items())
    n = result.peak_size
    return (f"GEMM peak (NumPy's BLAS, {n}×{n}×{n}, median of "
            f"{result.repeats}, the higher of this run's start and end): "
            f"{peaks or 'not measured'}")


def run_bench(cells=None, as_json=False, quick=False) -> int:
    """`derive bench`: print a table (or JSON) of medians and ratios."""
    from derive.cell.spec import load_cell
    names = list(cells or [])
    for c in names:
        load_cell(c)  # a bad name or spec is a UserError (exit 2) before any timing
    shapes = ["S3"] if quick else None
    repeats = 3 if quick else 5

    def progress(text):
        print(f"  measuring {text} …", file=sys.stderr, flush=True)

    result = run(names or None, shapes=shapes, repeats=repeats, progress=progress)
    if as_json:
        print(json.dumps({"repeats": result.repeats, "machine": result.machine,
                          "peak_gflops": result.peak, "peak_runs": result.peak_runs,
                          "shapes": {k: dict(zip("TBMN", v)) for k, v in SHAPES.items()},
                          "proj_size": "N // 2 for the cells with a second node size P",
                          "rows": [dict(asdict(r), of_peak=result.of_peak(r))
                                   for r in result.rows]}, indent=2))
    else:
        print(describe(result.machine))
        print(f"- {peak_line(result)}\n")
        print(f"medians of {result.repeats} runs after warm-up, in ms; ratios are derive's "
              f"time ÷ the peer's (< 1: derive is faster); % of peak: useful flops ÷ "
              f"time ÷ the GEMM peak")
        print(table(result))
    return 0
