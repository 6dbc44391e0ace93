"""Where a kernel's forward+backward time goes: a per-phase profile, benchmark-only.

    python benchmarks/phases.py lstm_np --shapes S3 --threads 2 1
    python benchmarks/phases.py lstm_np --tree base=/tmp/main --tree new=.   # A/B

The shipped kernel is not touched: this script takes the generated Cython source of a
cell (from this checkout, or from any other checkout given with --tree: the source is
generated there by a subprocess), wraps every call inside the kernel's nogil functions
(the input GEMM, the packing, the per-step small products, the element-wise steps, the
GEMMs after the loop) and every parallel region between two reads of a monotonic
clock (about 25 ns each, per thread: omp_get_thread_num), compiles that copy into a
temporary folder at the selected instruction-set level, and runs it next to the
unmodified build of the same source. Per phase it reports the busiest thread's time
(the phase's share of the wall time when the threads run in parallel), and it reports
the parallel regions' wall time, the runtime's own work outside the kernel calls
(allocation, copies, packing of the fused weights), and the GEMMs of the pass alone
in NumPy (bench's floor), all medians over rounds run round-robin.

With several trees, every tree's plain build and its instrumented build are timed
in the same rounds (A/B), in a new random order each round. Each timed run follows a
pause and one untimed run of the same variant, as in bench.interleaved_ms: without them
the run after the GEMMs alone shares a core with OpenBLAS's spinning thread (that made
the first variant up to 1.6 times slower at S1). Benchmark with OPENBLAS_CORETYPE /
OPENBLAS_L2_SIZE unset in that command, and say the load average (printed before and
after).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from derive import bench
from derive.kernel import build, isa
from derive.kernel.runtime import Kernel

HERE = Path(__file__).resolve().parent
#: the kernel's nogil functions whose calls are timed, and what their calls are
REGIONS = ("_prepare_", "_forward_rows_", "_pack_backward_", "_backward_rows_", "_finish_")
LABELS = {  # (function stem, callee stem) -> phase
    ("prepare", "_gemm"): "input GEMM (G_x = X·W_xᵀ, all steps)",
    ("prepare", "derive_pack"): "packing the recurrent weights",
    ("pack_backward", "derive_pack"): "packing the recurrent weights",
    ("forward_rows", "derive_small_gemm"): "per-step small product, forward",
    ("backward_rows", "derive_small_gemm"): "per-step small product, backward",
    ("forward_rows", "_forward_step"): "element-wise forward",
    ("backward_rows", "_backward_step"): "element-wise backward",
}
PROFILER = '''
cimport openmp

cdef extern from *:
    """
    #include <time.h>
    #include <omp.h>
    #define DERIVE_PHASE_CLOCK {clock}
    #define DERIVE_PROF_THREADS 16
    #define DERIVE_PROF_PHASES 64
    static double derive_prof_busy[DERIVE_PROF_THREADS][DERIVE_PROF_PHASES];
    static double derive_prof_wall[DERIVE_PROF_PHASES], derive_prof_begun[DERIVE_PROF_PHASES];
    static inline double derive_now(void) {
        struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t);
        return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
    }
    /* the clock of the phases: wall time, or the thread's CPU time (--clock cpu) */
    static inline double derive_phase_now(void) {
        struct timespec t; clock_gettime(DERIVE_PHASE_CLOCK, &t);
        return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
    }
    static inline void derive_prof_add(int phase, double t0) {
        int th = omp_get_thread_num();
        if (th < DERIVE_PROF_THREADS) derive_prof_busy[th][phase] += derive_phase_now() - t0;
    }
    /* the latest moment a thread of the current region made its first timed call */
    static double derive_prof_start_lag[DERIVE_PROF_PHASES], derive_prof_first[DERIVE_PROF_THREADS];
    static int derive_prof_region;
    static inline double derive_prof_start(void) {
        int th = omp_get_thread_num();
        if (th < DERIVE_PROF_THREADS && derive_prof_first[th] < 0)
            derive_prof_first[th] = derive_now();
        return derive_phase_now();
    }
    static inline void derive_region_begin(int r) {
        for (int th = 0; th < DERIVE_PROF_THREADS; th++) derive_prof_first[th] = -1;
        derive_prof_region = r;
        derive_prof_begun[r] = derive_now();
    }
    static inline void derive_region_end(int r) {
        double lag = 0;
        derive_prof_wall[r] += derive_now() - derive_prof_begun[r];
        for (int th = 0; th < DERIVE_PROF_THREADS; th++)
            if (derive_prof_first[th] >= 0 && derive_prof_first[th] - derive_prof_begun[r] > lag)
                lag = derive_prof_first[th] - derive_prof_begun[r];
        derive_prof_start_lag[r] += lag;
    }
    static double derive_prof_get(int th, int phase) {
        return th == -1 ? derive_prof_wall[phase] : th == -2 ? derive_prof_start_lag[phase]
            : derive_prof_busy[th][phase];
    }
    static void derive_prof_reset(void) {
        memset(derive_prof_busy, 0, sizeof(derive_prof_busy));
        memset(derive_prof_wall, 0, sizeof(derive_prof_wall));
        memset(derive_prof_start_lag, 0, sizeof(derive_prof_start_lag));
    }
    """
    double derive_now() nogil
    double derive_prof_start() nogil
    void derive_prof_add(int, double) nogil
    void derive_region_begin(int) nogil
    void derive_region_end(int) nogil
    double derive_prof_get(int, int) nogil
    void derive_prof_reset() nogil


def _profile(int threads, int phases, int regions):
    """([per thread: [seconds per phase]], [wall seconds per region], [seconds from each
    region's start to its last thread's first timed call]); resets them."""
    busy = [[derive_prof_get(th, ph) for ph in range(phases)] for th in range(threads)]
    wall = [derive_prof_get(-1, r) for r in range(regions)]
    lag = [derive_prof_get(-2, r) for r in range(regions)]
    derive_prof_reset()
    return busy, wall, lag
'''


# --- the instrumented source ------------------------------------------------------------------

def _call_end(lines: list[str], i: int) -> int:
    """The last line of the call statement starting on line i (balanced parentheses)."""
    depth = 0
    for j in range(i, len(lines)):
        depth += lines[j].count("(") - lines[j].count(")")
        if depth <= 0:
            return j
    raise ValueError(f"unbalanced call at line {i + 1}")


def instrument(source: str, clock: str = "wall") -> tuple[str, list[str], list[str]]:
    """(source with timers, phase labels, region labels): every call statement inside
    the functions of REGIONS is timed per thread (`clock`: "wall", or "cpu" for the
    thread's CPU time, which a loaded machine's preemption does not inflate), every
    prange loop by the main thread (wall time)."""
    lines = source.split("\n")
    out, phases, regions = [], [], []
    function, comment, entry_point, i = None, "", "", 0

    def phase(label):
        if label not in phases:
            phases.append(label)
        return phases.index(label)

    while i < len(lines):
        line = lines[i]
        m = re.match(r"cdef void (\w+?)_(f32|f64)\(", line)
        entry = re.match(r"def (\w+)\(", line)
        if entry:
            entry_point = entry.group(1).lstrip("_")    # _forward: forward's typed body
        if re.match(r"(cdef|def) ", line):
            function = m.group(1).lstrip("_") if m and m.group(1).startswith(
                tuple(r.rstrip("_") for r in REGIONS)) else None
            if function:    # the signature, then the timer's variable
                end = _call_end(lines, i)
                out += [*lines[i:end + 1], "    cdef double _t0"]
                i = end + 1
                continue
        indent = line[:len(line) - len(line.lstrip())]
        body = line.strip()
        if function and body.startswith("if which"):
            comment = body.split("#", 1)[-1].strip()
        call = re.match(r"([A-Za-z_]\w*)\(", body)
        if function and call and not body.startswith(("if ", "for ", "return")):
            callee = re.sub(r"_f(32|64)$", "", call.group(1))
            label = LABELS.get((function, callee)) or (
                f"after-loop GEMM: {comment}" if function == "finish" else
                f"{function.replace('_rows', '')}: {callee.strip('_')}")
            end = _call_end(lines, i)
            k = phase(label)
            out += [f"{indent}_t0 = derive_prof_start()", *lines[i:end + 1],
                    f"{indent}derive_prof_add({k}, _t0)"]
            i = end + 1
            continue
        region = re.match(r"(for c in prange|with nogil, parallel)\(", body)
        if region:   # named by the first function it calls
            target = next((m for m in (re.search(r"(_\w+?)_f(32|64)\(", t)
                                       for t in lines[i + 1:i + 8]) if m), None)
            name = f"{entry_point}: " + (target.group(1).strip("_") if target else "?")
            end = i + 1
            while end < len(lines) and (len(lines[end]) - len(lines[end].lstrip()) >
                                        len(indent) or not lines[end].strip()):
                end += 1
            regions.append(name)
            r = len(regions) - 1
            out += [f"{indent}derive_region_begin({r})", *lines[i:end],
                    f"{indent}derive_region_end({r})"]
            i = end
            continue
        out.append(line)
        i += 1
    text = "\n".join(out)
    at = text.index("from cython.parallel cimport ")
    at = text.index("\n", at) + 1
    clock_id = {"wall": "CLOCK_MONOTONIC", "cpu": "CLOCK_THREAD_CPUTIME_ID"}[clock]
    return text[:at] + PROFILER.replace("{clock}", clock_id) + text[at:], phases, regions


# --- sources and builds ------------------------------------------------------------------------

def tree_source(tree: Path, cell: str) -> str:
    """The kernel source of `cell` as the generator in checkout `tree` writes it."""
    code = ("import sys; from derive.kernel.emit import kernel_source; "
            "from derive.derivation import derive; from derive.cell.spec import load_cell; "
            f"sys.stdout.write(kernel_source(derive(load_cell({cell!r}))))")
    env = dict(os.environ, PYTHONPATH=str(tree))
    return subprocess.run([sys.executable, "-c", code], env=env, check=True,
                          capture_output=True, text=True, cwd=tree).stdout


def compiled(source: str, tag: str, level: isa.Level, folder: Path):
    """The module of `source` compiled at `level` (cached in `folder` by its hash)."""
    digest = hashlib.sha256((source + level.name).encode()).hexdigest()[:12]
    modname = f"derive_phases_{tag}_{digest}"
    out = folder / digest
    ext = out / f"{modname}{build._config_var('EXT_SUFFIX') or '.so'}"
    if not ext.exists():
        print(f"  compiling {tag} ({digest}) at level {level.name} …", file=sys.stderr,
              flush=True)
        source = build.stamp(source, "", build.compile_flags(level=level))
        build.compile_extension(source, modname, out, level=level)
    return build.load_extension(ext, modname)


class Timed:
    """A kernel module whose forward/backward calls add up their own time."""

    def __init__(self, module):
        self._module, self.seconds = module, 0.0

    def __getattr__(self, name):
        value = getattr(self._module, name)
        if name not in ("forward", "backward"):
            return value

        def call(*args):
            t0 = time.perf_counter()
            try:
                return value(*args)
            finally:
                self.seconds += time.perf_counter() - t0
        return call


# --- the run ----------------------------------------------------------------------------------

#: bench.py's other peers, which --peers adds to the rounds (to see their effect)
PEERS = {"torch": bench._torch_peer,
         "numpy": lambda cell, dtype, shape, rng: bench._derive_peer(cell, "numpy", dtype,
                                                                     shape, rng)}


def run(variants: dict, cell: str, shape: tuple, dtype: str, threads: int, rounds: int,
        pause: float, peers: dict | None = None) -> dict:
    """Medians over `rounds` round-robin rounds of each variant and of the GEMMs alone
    (and of bench.py's `peers`, untimed: their effect on the others is what is seen)."""
    peers = peers or {}
    T, B, M, N = shape
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, M)).astype(dtype)
    dy = None       # (T, B, the output's size: N, or lstmp's P = N // 2)
    runs = {}
    for name, (plain, profiled, phases, regions) in variants.items():
        for kind, module in (("plain", plain), ("profiled", profiled)):
            if module is None:     # --plain: no instrumented build
                continue
            timed = Timed(module)
            k = Kernel(timed, "cython", dtype, Path(module.__file__))
            k.threads = threads
            params = bench._params(k, shape)
            if dy is None:
                size = bench.sizes(cell, shape)[k.size(k.outputs[0])]
                dy = rng.standard_normal((T, B, size)).astype(dtype)
            runs[name, kind] = (k, timed, params, phases, regions)
    gemm = bench._gemm_peer(cell, dtype, shape, rng)[1]
    others = {name: maker(cell, dtype, shape, rng)[1] for name, maker in peers.items()}
    samples = {key: [] for key in runs}
    samples["GEMMs alone"] = []
    for key, (k, timed, params, phases, regions) in runs.items():   # warm-up
        k.backward(k.forward(x, params), dy)
    gemm()
    keys = [*runs, "GEMMs alone", *others]
    for fn in others.values():
        fn()
    order = np.random.default_rng(1)
    for rnd in range(rounds):   # a new order each round: no variant always follows another
        for key in [keys[i] for i in order.permutation(len(keys))]:
            if key in others:     # a peer of bench.py, run as it would be there
                time.sleep(pause)
                others[key]()
                continue
            if key == "GEMMs alone":
                time.sleep(pause)
                gemm()      # untimed: wakes its threads (see bench.interleaved_ms)
                t0 = time.perf_counter()
                gemm()
                samples[key].append({"total": time.perf_counter() - t0})
                continue
            k, timed, params, phases, regions = runs[key]
            time.sleep(pause)
            k.backward(k.forward(x, params), dy)    # untimed: wakes this kernel's threads
            if key[1] == "profiled":
                k.module._module._profile(threads, len(phases), len(regions))
            timed.seconds = 0.0
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            t0 = time.perf_counter()
            k.backward(k.forward(x, params), dy)
            total = time.perf_counter() - t0
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
            row = {"total": total, "kernel calls": timed.seconds, "faults": faults / 1e3}
            # (every field is turned into ms below: faults / 1e3 comes back as the count)
            if key[1] == "profiled":
                busy, wall, lag = k.module._module._profile(threads, len(phases),
                                                             len(regions))
                row["threads' start in the regions (latest thread)"] = sum(lag)
                for j, label in enumerate(phases):
                    row[label] = max(busy[t][j] for t in range(threads))
                    row["Σ " + label] = sum(busy[t][j] for t in range(threads))
                for j, label in enumerate(regions):
                    row[f"region {label}"] = row.get(f"region {label}", 0.0) + wall[j]
            samples[key].append(row)
    return {key: {f: 1e3 * statistics.median(r[f] for r in rows) for f in rows[0]}
            for key, rows in samples.items()}


def table(result: dict, variants: dict) -> str:
    """Markdown: one column per variant (profiled build's phases, plain build's total)."""
    names = list(variants)
    gemm = result["GEMMs alone"]["total"]
    head = "| phase | " + " | ".join(f"{n} ms | {n} %" for n in names) + " |"
    lines = [head, "|---|" + "---|---|" * len(names)]

    def row(label, values, totals):
        cells = []
        for v, t in zip(values, totals):
            cells += ["" if v is None else f"{v:.2f}", "" if v is None else f"{100 * v / t:.0f} %"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    if (names[0], "profiled") not in result:    # --plain: totals only
        lines = ["| variant | fwd+bwd ms | ÷ GEMMs alone | ÷ " + names[0] + " |",
                 "|---|---|---|---|"]
        for n in names:
            t = result[n, "plain"]["total"]
            lines.append(f"| {n} | {t:.2f} | {t / gemm:.2f} | "
                         f"{t / result[names[0], 'plain']['total']:.2f} |")
        lines.append(f"| GEMMs alone (NumPy, same rounds) | {gemm:.2f} | | |")
        return "\n".join(lines) + "\n"
    prof_totals = [result[n, "profiled"]["total"] for n in names]
    labels = []
    for n in names:
        labels += [p for p in variants[n][2] if p not in labels]
    for label in labels:
        row(label, [result[n, "profiled"].get(label) for n in names], prof_totals)
    regions = []
    for n in names:
        regions += [f"region {r}" for r in variants[n][3] if f"region {r}" not in regions]
    phase_sum = [sum(result[n, "profiled"].get(p, 0.0) for p in labels) for n in names]
    row("sum of the phases (busiest thread each)", phase_sum, prof_totals)
    region_sum = [sum(result[n, "profiled"].get(r, 0.0) for r in regions) for n in names]
    row("parallel regions, wall", region_sum, prof_totals)
    row("threads' start in the regions (latest thread)",
        [result[n, "profiled"]["threads' start in the regions (latest thread)"]
         for n in names], prof_totals)
    row("kernel calls (forward + backward), wall",
        [result[n, "profiled"]["kernel calls"] for n in names], prof_totals)
    row("runtime outside the kernel calls",
        [result[n, "profiled"]["total"] - result[n, "profiled"]["kernel calls"]
         for n in names], prof_totals)
    lines.append("| minor page faults per fwd+bwd (profiled, plain) | " + " | ".join(
        f"{result[n, 'profiled']['faults']:.0f} | {result[n, 'plain']['faults']:.0f}"
        for n in names) + " |")
    row("**fwd+bwd, profiled build**", prof_totals, prof_totals)
    row("**fwd+bwd, plain build**", [result[n, "plain"]["total"] for n in names],
        prof_totals)
    lines.append("| GEMMs alone (NumPy, same rounds) | " + " | ".join(
        f"{gemm:.2f} | plain ÷ GEMMs {result[n, 'plain']['total'] / gemm:.2f}"
        for n in names) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cell", nargs="?", default="lstm_np")
    parser.add_argument("--shapes", nargs="*", default=["S3"])
    parser.add_argument("--dtypes", nargs="*", default=["float32", "float64"])
    parser.add_argument("--threads", nargs="*", type=int, default=[2])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--pause", type=float, default=0.15,
                        help="seconds of sleep before each variant's untimed and timed "
                             "runs (an idle OpenBLAS thread spins for about 0.1 s)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="the phases' clock: wall time, or each thread's CPU time")
    parser.add_argument("--plain", action="store_true",
                        help="time the plain builds only (an A/B of totals)")
    parser.add_argument("--peers", nargs="*", default=[], choices=sorted(PEERS),
                        help="bench.py's peers to run in the same rounds (untimed)")
    parser.add_argument("--tree", action="append", default=[],
                        help="NAME=CHECKOUT: a variant generated by that checkout")
    args = parser.parse_args()
    trees = dict(t.split("=", 1) for t in args.tree) or {"this": str(HERE.parent)}
    level = isa.selected()
    folder = Path(build.cache_dir()) / "phases"
    folder.mkdir(parents=True, exist_ok=True)
    variants = {}
    for name, tree in trees.items():
        source = tree_source(Path(tree).resolve(), args.cell)
        profiled, phases, regions = instrument(source, args.clock)
        variants[name] = (compiled(source, f"{name}_plain", level, folder),
                          None if args.plain else
                          compiled(profiled, f"{name}_profiled", level, folder),
                          phases, regions)
    print(f"- load average before: {os.getloadavg()[0]:.2f}")
    for sname in args.shapes:
        for dtype in args.dtypes:
            for threads in args.threads:
                result = run(variants, args.cell, bench.SHAPES[sname], dtype, threads,
                             args.rounds, args.pause,
                             {name: PEERS[name] for name in args.peers})
                clock = "" if args.plain else f"phases in {args.clock} time, "
                print(f"\n### {args.cell} {sname} {dtype}, {threads} thread(s), level "
                      f"{level.name}, {clock}medians of {args.rounds} rounds (load "
                      f"{os.getloadavg()[0]:.2f})\n", flush=True)
                print(table(result, variants), flush=True)
    m = bench.machine()
    print(bench.describe(m))
    print(f"- load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
