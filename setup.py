"""Compile the kernels of the shipped cells when derive is installed.

Everything else about the package is declared in pyproject.toml. Each shipped cell's
committed generated/<cell>/kernel.pyx becomes the extension module
`derive._kernels.<cell>` (float32 and float64 in one module) at the instruction-set level
the installing machine selects (derive.kernel.isa: its widest, or $DERIVE_ISA; one level,
so installing takes as long as before), with BUILD_INFO appended (its level among it):
the fingerprint of the generator that wrote it, which derive.kernel.build compares with the
installed generator, and its level with the selected one, before using the module
(see derive/kernel/build.py); other levels compile into the cache on first use. They link the BLAS
of the scipy-openblas32 wheel, which derive loads before importing them. The extensions are
optional: a machine where they do not compile still installs derive, and the kernels
then compile on first use into the cache, or the NumPy reference backend is used.
"""

import os
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent
STAMPED = Path("build") / "derive-kernels"   # relative: setuptools wants relative sources


def _kernel_build():
    sys.path.insert(0, str(HERE))
    try:
        from derive.kernel import (
            build as kernel_build,  # standard library only at import
        )
    finally:
        sys.path.pop(0)
    return kernel_build


def kernel_extensions() -> list[Extension]:
    kb = _kernel_build()
    flags = kb.compile_flags()
    try:
        blas = kb.blas_dirs()
    except kb.BuildError as exc:
        print(f"warning: the shipped kernels are not compiled: {exc}", file=sys.stderr)
        return []
    exts = []
    for spec in sorted((HERE / "derive" / "cells").glob("*.toml")):
        if (HERE / "generated" / spec.stem / "kernel.pyx").exists():
            exts.append(Extension(f"derive._kernels.{spec.stem}",
                                  [str(STAMPED / f"{spec.stem}.pyx")],
                                  include_dirs=[blas["include"]],
                                  library_dirs=[blas["lib"]],
                                  libraries=[blas["library"], *flags["libraries"]],
                                  extra_compile_args=flags["cflags"],
                                  extra_link_args=flags["ldflags"],
                                  optional=True))
    return exts


class BuildKernels(build_ext):
    """build_ext that stamps and cythonizes the kernels first, and builds in parallel."""

    def finalize_options(self):
        super().finalize_options()
        if self.parallel is None:
            self.parallel = os.cpu_count() or 1

    def run(self):
        from Cython.Build import cythonize
        kb = _kernel_build()
        flags = kb.compile_flags()
        (HERE / STAMPED).mkdir(parents=True, exist_ok=True)
        for ext in self.extensions:
            name = ext.name.rsplit(".", 1)[1]
            source = (HERE / "generated" / name / "kernel.pyx").read_text("utf-8")
            spec = (HERE / "derive" / "cells" / f"{name}.toml").read_text("utf-8")
            text = kb.stamp(source, spec, flags, package_dir=HERE / "derive",
                            template_dir=HERE / "templates")
            target = HERE / STAMPED / f"{name}.pyx"
            if not target.exists() or target.read_text("utf-8") != text:
                target.write_text(text, "utf-8")   # unchanged files keep their cythonized C
        # cythonize to C, keeping setuptools' own Extension objects (it annotates them)
        done = {e.name: e for e in cythonize(self.extensions, language_level=3, quiet=True,
                                             nthreads=self.parallel or 1)}
        for ext in self.extensions:
            ext.sources = done[ext.name].sources
        super().run()


setup(ext_modules=kernel_extensions(), cmdclass={"build_ext": BuildKernels})
