"""Benchmark derive's kernels against the NumPy reference, PyTorch and the GEMM floor.

    python benchmarks/bench.py                 # print the table
    python benchmarks/bench.py --record        # also rewrite benchmarks/results.md

Shapes S1 (T=100, B=32, M=128, N=256), S2 (T=50, B=64, M=256, N=512),
S3 (T=200, B=16, M=64, N=128); float32 and float64; medians of --repeats runs after
warm-up, all peers measured side by side in this one process. PyTorch is optional:
`pip install torch==2.13.0` (a CPU build).
"""

import argparse
import os
import sys
from pathlib import Path

from derive import bench

HERE = Path(__file__).resolve().parent
NOTES = "<!-- notes: kept when the table above is re-recorded -->"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cells", nargs="*", default=["lstm_np", "lstm", "gru"])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--shapes", nargs="*", default=list(bench.SHAPES))
    parser.add_argument("--record", action="store_true", help="rewrite results.md")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    result = bench.run(args.cells, shapes=args.shapes, repeats=args.repeats,
                       progress=lambda t: print(f"  {t}", file=sys.stderr, flush=True))
    text = bench.table(result)
    print(f"kernels at instruction-set level {result.machine['isa']}\n")
    print(text)
    load_after = os.getloadavg()[0]
    if args.record:
        m = result.machine
        command = "python benchmarks/bench.py " + " ".join(sys.argv[1:])
        body = (f"# Benchmark results\n\nRecorded by `{command.strip()}`.\n"
                f"Medians of {result.repeats} runs after 2 warm-up runs, times in ms, all "
                f"peers measured in the same process, round-robin (one run of each per "
                f"round). Ratios are derive's time ÷ the peer's (< 1: derive is faster). "
                f"Python {m['python']}, NumPy {m['numpy']}, "
                f"PyTorch {m['torch'] or 'not installed'}; kernels at level {m['isa']}; 2-core AMD EPYC (Zen 3), shared "
                f"and noisy: compare ratios, and only margins above ~30 %. Load average "
                f"(1 min) {load_before:.2f} before the run, {load_after:.2f} after.\n\n{text}")
        # hand-written notes below the marker survive re-recording
        path = HERE / "results.md"
        old = path.read_text() if path.exists() else ""
        notes = old[old.index(NOTES):] if NOTES in old else NOTES + "\n"
        path.write_text(body + "\n" + notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
