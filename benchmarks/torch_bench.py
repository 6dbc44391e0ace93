"""One training step of derive.torch's modules against PyTorch's, and the operator's overhead.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/torch_bench.py
    python benchmarks/torch_bench.py --kinds LSTM --shapes S1 --repeats 5 --json
    python benchmarks/torch_bench.py --overhead --shapes S3 --threads 1 --repeats 40
    python benchmarks/torch_bench.py --skipped --shapes S2 --threads 1
    python benchmarks/torch_bench.py --kinds LSTMP --shapes S1 S2    # nn.LSTM(proj_size)

A training step: zero the gradients, run the module over x (T, B, M) (x does not require
grad, as for a model's first layer), a loss of the output under a fixed random
projection, backward. derive.torch.LSTM/GRU/RNN against nn.LSTM/GRU/RNN with the same
state_dict (kind LSTMP: derive.torch.LSTM(M, N, proj_size=P) on the cell lstmp against
nn.LSTM(M, N, proj_size=P), P = N // 2: 128 at S1, 256 at S2, 64 at S3), at S1 (T=100, B=32, M=128, N=256), S2 (T=50, B=64, M=256, N=512) and
S3 (T=200, B=16, M=64, N=128), float32 and float64, all in this one run, timed
round-robin (medians after warm-up; derive.bench.interleaved_ms).

The operator's overhead: the raw kernel (Kernel.forward + Kernel.backward on NumPy
arrays, parameters from init_params) against the same work through the custom operator
(CellOperators.run + autograd backward on torch tensors, the same fused weights, every
gradient wanted). `op/kernel - 1` is what torch.library, autograd and the tensor
plumbing cost. `--overhead` measures only that, in CPU time (min and median of
alternating runs), which a loaded machine disturbs less than wall-clock time.

`--skipped`: the kernel's backward with every gradient, without δx (a first layer), and
with the initial states' gradients only (a frozen first layer): what the gradient flags
save.
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import json
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch

import derive
import derive.torch as dt
from derive.bench import SHAPES, interleaved_ms

CELLS = {"LSTM": "lstm_np", "GRU": "gru", "RNN": "rnn", "LSTMP": "lstmp"}
#: the kinds whose module has a projection of size P: kind -> the torch.nn class
PROJECTED = {"LSTMP": "LSTM"}


def proj_size(shape) -> int:
    """P of the projected kinds at `shape`: N // 2 (derive.bench.sizes)."""
    return shape[3] // 2


def _modules(kind, shape, dtype):
    """(derive.torch module, torch.nn module) of `kind` at `shape`, the same state_dict."""
    T, B, M, N = shape
    base = PROJECTED.get(kind, kind)
    extra = {"proj_size": proj_size(shape)} if kind in PROJECTED else {}
    torch.manual_seed(0)
    ref = getattr(torch.nn, base)(M, N, **extra).to(dtype)
    mine = getattr(dt, base)(M, N, **extra).to(dtype)
    mine.load_state_dict(ref.state_dict())
    return mine, ref


def _out_size(kind, shape) -> int:
    return proj_size(shape) if kind in PROJECTED else shape[3]


def _kernel_sizes(shape) -> dict:
    """{"N", "P"}: the sizes of a state or output at `shape` (P for a cell with one)."""
    return {"N": shape[3], "P": proj_size(shape)}


def _init_params(kernel, shape) -> dict:
    T, B, M, N = shape
    extra = {"proj_size": proj_size(shape)} if kernel.has_proj_size else {}
    return kernel.init_params(M, N, seed=0, **extra)


def machine() -> dict:
    """CPU model and family, vector extensions, the kernels' OpenBLAS core, threads."""
    info = {"python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__, "torch_threads": torch.get_num_threads(),
            "derive_threads": derive.load_kernel("rnn", "float64").threads}
    try:
        text = open("/proc/cpuinfo").read()
        field = lambda k: next((ln.split(":", 1)[1].strip() for ln in text.splitlines()  # noqa
                                if ln.startswith(k)), "?")
        flags = field("flags").split()
        info["cpu"] = f"{field('model name')} (family {field('cpu family')})"
        info["vector"] = " ".join(f for f in ("avx2", "avx512f", "avx512_bf16") if f in flags)
    except OSError:
        info["cpu"] = platform.processor()
    try:
        import scipy_openblas32
        lib = ctypes.CDLL(glob.glob(os.path.join(scipy_openblas32.get_lib_dir(), "*.so*"))[0])
        lib.scipy_openblas_get_corename.restype = ctypes.c_char_p
        info["openblas_core"] = lib.scipy_openblas_get_corename().decode()
    except Exception:  # noqa: BLE001 - the figure is informative only
        info["openblas_core"] = "?"
    info["OPENBLAS_CORETYPE"] = os.environ.get("OPENBLAS_CORETYPE", "(unset)")
    return info


def _step(module, x, proj):
    def step():
        module.zero_grad(set_to_none=True)
        out, _ = module(x)
        (out * proj).sum().backward()
    return step


def training_step(kind, shape, dtype, repeats):
    """Medians (ms) of one training step: derive.torch and torch.nn, round-robin."""
    T, B, M, N = shape
    mine, ref = _modules(kind, shape, dtype)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(T, B, M, generator=g).to(dtype)
    proj = torch.randn(T, B, _out_size(kind, shape), generator=g).to(dtype)
    res = interleaved_ms({"derive": (lambda: None, _step(mine, x, proj)),
                          "torch": (lambda: None, _step(ref, x, proj))}, repeats)
    return res["derive"][1], res["torch"][1]


def _kernel_and_operator(cell, shape, dtype):
    """Two callables doing forward+backward of `cell` on the same values: the raw kernel
    (NumPy arrays) and the custom operator (torch tensors, every gradient wanted)."""
    T, B, M, N = shape
    name = {torch.float32: "float32", torch.float64: "float64"}[dtype]
    k = derive.load_kernel(cell, name)
    params = _init_params(k, shape)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, M)).astype(name)
    dy = rng.standard_normal((T, B, _kernel_sizes(shape)[k.size(k.outputs[0])]))
    dy = dy.astype(name)

    def kernel():
        k.backward(k.forward(x, params), dy)

    ops = dt.operators(cell)
    fused = k._fused(params, N, M, proj_size(shape) if k.has_proj_size else None)
    W = [torch.from_numpy(fused[i]).requires_grad_() for i in range(len(ops.blocks))]
    V = [torch.from_numpy(params[v]).requires_grad_() for v in ops.vectors]
    tx, tdy = torch.from_numpy(x).requires_grad_(), torch.from_numpy(dy)

    def operator():
        for t in (tx, *W, *V):
            t.grad = None
        outputs, _ = ops.run(tx, W, V, None)
        outputs[ops.outputs[0]].backward(tdy)
    return kernel, operator


def op_overhead(cell, shape, dtype, repeats):
    """Medians (ms) of forward+backward: the raw kernel, and the same through the operator."""
    kernel, operator = _kernel_and_operator(cell, shape, dtype)
    res = interleaved_ms({"kernel": (lambda: None, kernel),
                          "op": (lambda: None, operator)}, repeats)
    return res["kernel"][1], res["op"][1]


def op_overhead_cpu(cell, shape, dtype, repeats):
    """Minimum and median CPU time (ms, this process) of forward+backward, raw kernel and
    operator alternating: on a shared machine CPU time leaves out the waits for a core
    that make wall-clock medians of a few-ms call swing by ±20 %."""
    kernel, operator = _kernel_and_operator(cell, shape, dtype)
    times = {"kernel": [], "op": []}
    for _ in range(2):
        kernel(), operator()
    for _ in range(repeats):
        for name, fn in (("kernel", kernel), ("op", operator)):
            t0 = time.process_time()
            fn()
            times[name].append(1e3 * (time.process_time() - t0))
    return {name: (min(v), statistics.median(v)) for name, v in times.items()}


def skipped_products(cell, shape, dtype, repeats):
    """Medians (ms) of the kernel's backward: every gradient, without δx (a first layer),
    and without δx nor any weight or vector gradient (a frozen first layer)."""
    T, B, M, N = shape
    k = derive.load_kernel(cell, dtype)
    params = _init_params(k, shape)
    rng = np.random.default_rng(0)
    tr = k.forward(rng.standard_normal((T, B, M)).astype(dtype), params)
    n = _kernel_sizes(shape)
    dY = [rng.standard_normal((T, B, n[k.size(o)])).astype(dtype) for o in k.outputs]
    every = {"x", *(f"W{i}" for i in range(len(k.operands))),
             *(f"V{i}" for i in range(len(k.vectors))), *(f"S{i}" for i in range(len(k.states)))}
    cases = {"all": every, "no dx": every - {"x"},
             "states only": {f"S{i}" for i in range(len(k.states))}}
    res = interleaved_ms({name: (lambda: None, lambda n=needs: k.backward_buffers(
        tr.x, tr.W, tr.V, tr.S, tr.A, dY, needs=n)) for name, needs in cases.items()},
        repeats)
    return {name: r[1] for name, r in res.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kinds", nargs="*", default=["LSTM", "GRU", "RNN"], choices=list(CELLS),
                   help="modules to time (default: LSTM GRU RNN; LSTMP: nn.LSTM with "
                        "proj_size = N // 2)")
    p.add_argument("--shapes", nargs="*", default=list(SHAPES))
    p.add_argument("--dtypes", nargs="*", default=["float32", "float64"])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                   help="threads of both torch and derive's kernels (default: the CPUs)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--overhead", action="store_true",
                   help="only the operator's overhead over the raw kernel, in CPU time")
    p.add_argument("--skipped", action="store_true",
                   help="only time the kernel's backward with and without δx and the "
                        "parameter gradients (the gradient flags)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ["DERIVE_NUM_THREADS"] = str(args.threads)   # read by every Kernel made now
    info = machine()
    info["load_before"] = os.getloadavg()[0]
    if args.overhead:
        print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()))
        print(f"forward+backward, CPU time of this process, {args.repeats} alternating runs, "
              f"ms (min / median)\n")
        print("| cell | shape | dtype | raw kernel | operator | overhead (min) | "
              "overhead (median) |")
        print("|---|---|---|---|---|---|---|")
        for kind in args.kinds:
            for s in args.shapes:
                for dname in args.dtypes:
                    r = op_overhead_cpu(CELLS[kind], SHAPES[s], getattr(torch, dname),
                                        args.repeats)
                    (km, kd), (om, od) = r["kernel"], r["op"]
                    print(f"| {CELLS[kind]} | {s} | {dname} | {km:.2f} / {kd:.2f} | "
                          f"{om:.2f} / {od:.2f} | {100 * (om / km - 1):+.1f} % | "
                          f"{100 * (od / kd - 1):+.1f} % |", flush=True)
        print(f"\nload average after: {os.getloadavg()[0]:.2f}")
        return 0
    if args.skipped:
        print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()))
        print(f"kernel backward, medians of {args.repeats} round-robin runs, ms\n")
        print("| cell | shape | dtype | every gradient | no δx | states only |")
        print("|---|---|---|---|---|---|")
        for kind in args.kinds:
            for s in args.shapes:
                for dname in args.dtypes:
                    r = skipped_products(CELLS[kind], SHAPES[s], dname, args.repeats)
                    print(f"| {CELLS[kind]} | {s} | {dname} | {r['all']:.1f} | "
                          f"{r['no dx']:.1f} | {r['states only']:.1f} |", flush=True)
        print(f"\nload average after: {os.getloadavg()[0]:.2f}")
        return 0
    rows = []
    for kind in args.kinds:
        for s in args.shapes:
            for dname in args.dtypes:
                dtype = getattr(torch, dname)
                d, t = training_step(kind, SHAPES[s], dtype, args.repeats)
                kern, op = op_overhead(CELLS[kind], SHAPES[s], dtype, args.repeats)
                rows.append(dict(module=kind, shape=s, dtype=dname, derive_ms=d, torch_ms=t,
                                 ratio=d / t, kernel_ms=kern, op_ms=op,
                                 op_overhead=op / kern - 1))
                print(f"  {kind} {s} {dname}: {d:.1f} / {t:.1f} ms", file=sys.stderr)
    info["load_after"] = os.getloadavg()[0]
    if args.json:
        print(json.dumps({"machine": info, "repeats": args.repeats, "rows": rows}, indent=2))
        return 0
    print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()))
    print(f"medians of {args.repeats} round-robin runs, ms\n")
    print("| module | shape | dtype | derive.torch step | torch.nn step | derive/torch | "
          "raw kernel fwd+bwd | operator fwd+bwd | op overhead |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['module']} | {r['shape']} | {r['dtype']} | {r['derive_ms']:.1f} | "
              f"{r['torch_ms']:.1f} | {r['ratio']:.2f} | {r['kernel_ms']:.1f} | "
              f"{r['op_ms']:.1f} | {100 * r['op_overhead']:+.1f} % |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
