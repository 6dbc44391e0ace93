"""The cost of layer normalisation: lstm_ln against lstm_np, forward + backward.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/ln_cost.py
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/ln_cost.py --shape S1 --repeats 7

Both compiled kernels on the same shape (bench.SHAPES, default S1: T=100, B=32, M=128,
N=256), float32 and float64, on one thread and on two, measured round-robin in this one
process (bench.interleaved_ms: one run of each peer per round, medians of --repeats
rounds after warm-up). lstm_ln is lstm_np with each gate's pre-activation and the cell
before the output's tanh layer-normalised over the N units (derive/cells/lstm_ln.toml):
the same matrix products, plus 10 row means per forward step and 10 per backward step,
five element-wise phases per step in each direction instead of one, and more stored
values. Prints the machine, the load average before and after, and the table.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from derive import bench
from derive.kernel.runtime import load_kernel

CELLS = ("lstm_np", "lstm_ln")


def peers(shape, dtype: str, threads: int) -> dict:
    """(forward, forward+backward) callables of each cell's kernel on `threads` threads."""
    T, B, M, N = shape
    out = {}
    for cell in CELLS:
        rng = np.random.default_rng(0)
        k = load_kernel(cell, dtype=dtype)
        k.threads = threads
        params = k.init_params(input_size=M, hidden_size=N, seed=0)
        x = rng.standard_normal((T, B, M)).astype(dtype)
        dy = rng.standard_normal((T, B, N)).astype(dtype)
        out[cell] = ((lambda k=k, x=x, p=params: k.forward(x, p)),
                     (lambda k=k, x=x, p=params, dy=dy: k.backward(k.forward(x, p), dy)))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="S1", choices=list(bench.SHAPES))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, nargs="*", default=[1, 2])
    args = parser.parse_args()
    shape = bench.SHAPES[args.shape]
    load_before = os.getloadavg()
    rows = []
    for dtype in ("float32", "float64"):
        for threads in args.threads:
            ms = bench.interleaved_ms(peers(shape, dtype, threads), args.repeats)
            rows.append((dtype, threads, ms))
    load_after = os.getloadavg()
    print(bench.describe(bench.machine(load_kernel("lstm_ln", dtype="float32"))))
    print(f"- Shape {args.shape} (T, B, M, N) = {shape}; medians of {args.repeats} rounds "
          f"after 2 warm-up runs, round-robin")
    print(f"- Load average (1, 5, 15 min): before {' '.join(f'{v:.2f}' for v in load_before)},"
          f" after {' '.join(f'{v:.2f}' for v in load_after)}\n")
    print("| dtype | threads | lstm_np fwd ms | lstm_ln fwd ms | lstm_np fwd+bwd ms "
          "| lstm_ln fwd+bwd ms | ratio fwd+bwd |")
    print("|---|---|---|---|---|---|---|")
    for dtype, threads, ms in rows:
        (f0, t0), (f1, t1) = ms["lstm_np"], ms["lstm_ln"]
        print(f"| {dtype} | {threads} | {f0:.1f} | {f1:.1f} | {t0:.1f} | {t1:.1f} "
              f"| {t1 / t0:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
