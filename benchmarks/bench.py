"""Benchmark derive's kernels against the NumPy reference, PyTorch and the GEMM floor.

    python benchmarks/bench.py                 # print the machine and the table
    python benchmarks/bench.py --record        # also record them in benchmarks/results.md
    python benchmarks/bench.py --cells lstmp --shapes S1 S2   # LSTMP vs nn.LSTM(proj_size)

Shapes S1 (T=100, B=32, M=128, N=256), S2 (T=50, B=64, M=256, N=512),
S3 (T=200, B=16, M=64, N=128); float32 and float64; medians of --repeats runs after
warm-up, all peers measured side by side in this one process, with the machine's GEMM
peak measured in the same run. A cell with a projection (lstmp) runs with P = N // 2
(S1: 128, S2: 256, S3: 64) against nn.LSTM(proj_size=P) holding the same weights.
PyTorch is optional: `pip install torch==2.13.0` (a CPU
build).

results.md keeps one section per machine (CPU, vector extensions, CPU count): --record
replaces the section of the machine it runs on, or adds one, and leaves the others and
every hand-written note alone. Some machines set OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE,
which force OpenBLAS's AVX2 kernels; a user's machine does not: record with
`env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench.py ... --record`.
"""

import argparse
import os
import re
import sys
import time
from pathlib import Path

from derive import bench
from derive.cell.spec import load_cell
from derive.errors import UserError

HERE = Path(__file__).resolve().parent
HEADER = """\
# Benchmark results

One section per machine measured, newest machine first. Each was recorded by
`benchmarks/bench.py --record`, which replaces only the section of the machine it runs
on; notes written below a section's table (after its end marker) are kept.
"""
BEGIN, END = "<!-- machine: {key} -->", "<!-- end of machine -->"
SECTION = re.compile(r"<!-- machine: (?P<key>.*?) -->\n.*?<!-- end of machine -->", re.S)


def section(result, key: str, command: str, load: tuple[float, float]) -> str:
    """One machine's recorded block: what it is, how the run was made, the table."""
    return (f"{BEGIN.format(key=key)}\n## {key}\n\n{bench.describe(result.machine)}\n"
            f"- {bench.peak_line(result)}\n"
            f"- Recorded {time.strftime('%Y-%m-%d')} by `{command}`; load average (1 min) "
            f"{load[0]:.2f} before the run, {load[1]:.2f} after\n\n"
            f"Medians of {result.repeats} runs after 2 warm-up runs, times in ms, all peers "
            f"measured in the same process, round-robin (one run of each per round). "
            f"Ratios are derive's time ÷ the peer's (< 1: derive is faster). % of peak: "
            f"useful flops (the pass's matrix products, 3 · 2·T·B·4N·(M+N) for lstm_np, "
            f"3 · 2·T·B·(4N·(M+P) + P·N) for lstmp) ÷ "
            f"time ÷ the GEMM peak above. A shared machine is noisy: compare ratios, and "
            f"only margins above ~30 %.\n\n{bench.table(result)}{END}")


def record(old: str, key: str, block: str) -> str:
    """results.md with `block` as the section of machine `key` (replaced or added first)."""
    if not old.strip():
        return f"{HEADER}\n{block}\n"
    for m in SECTION.finditer(old):
        if m.group("key") == key:
            return old[:m.start()] + block + old[m.end():]
    first = SECTION.search(old)
    at = first.start() if first else len(old)
    return old[:at].rstrip("\n") + "\n\n" + block + "\n\n" + old[at:].lstrip("\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cells", nargs="*", default=None,
                        help="cells to time (default: lstm_np lstm gru)")
    parser.add_argument("--cells", dest="cells_option", nargs="+", metavar="CELL",
                        help="the same as the positional cells")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--shapes", nargs="*", default=list(bench.SHAPES))
    parser.add_argument("--record", action="store_true",
                        help="record this machine's section of results.md")
    args = parser.parse_args(argv)
    cells = [*(args.cells or []), *(args.cells_option or [])] or ["lstm_np", "lstm", "gru"]
    for name in args.shapes:
        if name not in bench.SHAPES:
            parser.error(f"--shapes: unknown shape {name!r} (known: {', '.join(bench.SHAPES)})")
    for name in cells:
        try:
            load_cell(name)
        except UserError as exc:
            parser.error(str(exc))
    load_before = os.getloadavg()[0]
    result = bench.run(cells, shapes=args.shapes, repeats=args.repeats,
                       progress=lambda t: print(f"  {t}", file=sys.stderr, flush=True))
    load_after = os.getloadavg()[0]
    print(bench.describe(result.machine))
    print(f"- {bench.peak_line(result)}\n")
    print(bench.table(result))
    print(f"load average (1 min): {load_before:.2f} before the run, {load_after:.2f} after")
    if args.record:
        command = " ".join(["python benchmarks/bench.py", *(sys.argv[1:] if argv is None
                                                             else argv)])
        if result.machine["openblas_env"]:
            command = " ".join(["env", *(f"{k}={v}" for k, v in
                                         result.machine["openblas_env"].items()), command])
        key = bench.machine_key(result.machine)
        path = HERE / "results.md"
        old = path.read_text() if path.exists() else ""
        path.write_text(record(old, key, section(result, key, command,
                                                 (load_before, load_after))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
