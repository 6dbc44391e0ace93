"""The main job, `derive` with no command, on the default cell (lstm):

1. derive the backward pass,
2. write its documents and kernel into generated/ (the checkout's, or ./generated),
3. build (or load the cached) compiled kernel,
4. gradient-check it against float64 central differences,
5. print a summary. Exit 1 when the check fails.
"""

from __future__ import annotations

import sys
import time

DEFAULT_CELL = "lstm"


def _step(text: str):
    print(f"• {text} …", file=sys.stderr, flush=True)
    return time.perf_counter()


def main_job(cell: str = DEFAULT_CELL, out: str | None = None) -> int:
    from derive.check import gradient_check
    from derive.derivation import derive
    from derive.generate import generate

    t0 = _step(f"deriving the backward pass of {cell}")
    d = derive(cell)
    t_derive = time.perf_counter() - t0

    t0 = _step("writing documents and kernel")
    written = generate([cell], out=out, check=False, quiet=True)
    t_generate = time.perf_counter() - t0

    t0 = _step("building the compiled kernel (cached after the first build)")
    from derive.kernel.runtime import load_kernel
    kernel = load_kernel(cell, dtype="float64")
    t_build = time.perf_counter() - t0

    t0 = _step("checking every gradient against central finite differences")
    report = gradient_check(cell, backend=kernel.backend, dtype="float64")
    t_check = time.perf_counter() - t0

    print(f"derive: {d.cell.title} ({cell}, spec {d.cell.display_path}, hash {d.cell.hash})")
    print(f"  derived   {len(d.kept)} backward equations ({', '.join('δ' + n for n in d.kept)}),"
          f" {len(d.params)} parameter gradients, {len(d.initial)} initial-state gradients"
          f"  [{t_derive:.2f} s]")
    print(f"  wrote     {written}  [{t_generate:.2f} s]")
    print(f"  kernel    {kernel.backend} backend, {getattr(kernel, 'path', '') or 'loaded'}"
          f"  [{t_build:.2f} s]")
    print(f"  checked   {report.summary()}  [{t_check:.2f} s]")
    print()
    print(report.table())
    return 0 if report.passed else 1
