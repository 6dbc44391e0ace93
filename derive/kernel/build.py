"""Stage 5 — build: compile a cell's Cython kernel into an extension module, cached.

Shipped cells are compiled when the package is installed (setup.py builds
`derive._kernels.<cell>` from the committed generated/<cell>/kernel.pyx). Every module
carries `BUILD_INFO`, appended to its source at build time: the *fingerprint* of what
generated it (spec text, derive version, the bytes of the generator modules, the
kernel template and the support files it inlines) and the sha256 of the generated source. A shipped module is used only
while its fingerprint matches the installed generator (an edited template or
derivation in an editable checkout makes it stale).

Every kernel is compiled for one instruction-set level (derive.kernel.isa: the widest the
CPU runs, or the lower one $DERIVE_ISA names); a shipped module is used only at the level
it was installed for.

Any other cell — a user's spec file, a stale shipped one, or another level — is compiled
on first use into the cache directory (platformdirs' user cache dir, or $DERIVE_CACHE_DIR),
in a folder named by the cell, the level and a hash of everything that changes the binary:
the level's flags, the fingerprint, the
compiler and its version, the flags, and the Cython, NumPy, SciPy and Python versions
and the platform. A build happens in a temporary folder renamed into place (atomic)
under a file lock, so concurrent processes neither corrupt nor duplicate it. A failed
build raises BuildError carrying the command and the compiler's output.

Robustness: the toolchain (sysconfig's configuration, whose lazy initialisation is not
thread-safe) is read once per process under a lock, so every thread computes the same
key; a cached module that does not load (corrupt, truncated) is rebuilt with a warning;
build folders a killed build left (`derive.scratch`) are removed by the next build; a
cache folder that cannot be created or written, and a cell name longer than
`MAX_NAME` characters, are one-line errors before anything is compiled.

This module imports no SymPy: loading a cached kernel stays fast.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import importlib.util
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import tomllib
import warnings
from functools import lru_cache
from importlib import metadata
from pathlib import Path

from derive import __version__
from derive.cell.catalog import resolve
from derive.errors import UserError
from derive.files import template_dir
from derive.kernel import isa
from derive.kernel.abi import KERNEL_API
from derive.scratch import owner_tag, remove_stale

#: what shapes a kernel's source: every module of these packages (found by listing them,
#: so a new module is covered without being named) and the kernel path's generator
GENERATOR_PACKAGES = ("cell", "derivation", "printing", "kernel")
GENERATOR_MODULES = ("errors.py", "files.py")
#: modules of those packages that do not shape a source (they build and run it)
NOT_GENERATOR = ("kernel/build.py", "kernel/runtime.py")
TEMPLATES = {"kernel": "kernel.pyx.j2", "reference": "reference.py.j2"}

LOCK_TIMEOUT = 1800  # seconds a process waits for another one's build of the same kernel
MAX_NAME = 64        # characters of a cell name (it names files, folders and C symbols)


class BuildError(UserError):
    """A kernel failed to compile: `command` and the compiler's `output`."""

    def __init__(self, message: str, command: list[str] | None = None, output: str = ""):
        self.command = command or []
        self.output = output
        text = message
        if command:
            text += f"\ncommand: {shlex.join(command)}"
        if output:
            text += f"\ncompiler output:\n{output.strip()}"
        super().__init__(text)


# --- what a cell is, without SymPy ----------------------------------------------------------

def spec_source(cell) -> tuple[str, str, bool]:
    """(name, spec text, shipped) for a shipped name, a spec path or a loaded Cell, without
    SymPy (the cell layer's catalog finds the file).

    A spec file whose name cannot be read without SymPy is handed to the full loader,
    which raises the error naming the file, line and fix.
    """
    if hasattr(cell, "source") and hasattr(cell, "shipped"):  # a loaded Cell
        return cell.name, cell.source, bool(cell.shipped)
    source = resolve(str(cell))
    if source.shipped:
        return str(cell), source.text, True
    try:
        name = tomllib.loads(source.text)["name"]
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name) \
                or len(name) > MAX_NAME:
            raise ValueError(name)
    except (tomllib.TOMLDecodeError, KeyError, ValueError, TypeError):
        from derive.cell.spec import load_cell
        load_cell(cell)  # raises the precise SpecError
        raise UserError(f"{cell}: not a usable cell spec") from None  # pragma: no cover
    return name, source.text, False


# --- fingerprints and keys ---------------------------------------------------------------------

def _template_dir() -> Path:
    return template_dir()


def generator_files(package_dir: Path) -> list[str]:
    """The modules that shape a kernel's source, relative to the package folder, sorted."""
    found = {str(p.relative_to(package_dir)) for pkg in GENERATOR_PACKAGES
             for p in (package_dir / pkg).rglob("*.py")}
    return sorted((found | set(GENERATOR_MODULES)) - set(NOT_GENERATOR))


def generator_fingerprint(kind: str = "kernel", package_dir: Path | None = None,
                          template_dir: Path | None = None) -> str:
    """sha256 of derive's version and the bytes of the generator (modules + template)."""
    package_dir = package_dir or Path(__file__).resolve().parent.parent
    template_dir = template_dir or _template_dir()
    h = hashlib.sha256(f"derive {__version__} api {KERNEL_API} {kind}\n".encode())
    for name in generator_files(package_dir):
        h.update(name.encode() + b"\0" + (package_dir / name).read_bytes() + b"\0")
    for name in template_files(kind, template_dir):
        h.update(name.encode() + b"\0" + (template_dir / name).read_bytes() + b"\0")
    return h.hexdigest()


def template_files(kind: str, template_dir: Path) -> list[str]:
    """The template of `kind` and every support file the generator inlines (the files
    under templates/support/, found by listing them), relative to the template folder."""
    support = sorted(str(p.relative_to(template_dir))
                     for p in (template_dir / "support").rglob("*") if p.is_file())
    return [TEMPLATES[kind], *support]


def fingerprint(spec_text: str, kind: str = "kernel", **dirs) -> str:
    """What decides a cell's generated source: its spec text and the generator."""
    h = hashlib.sha256(spec_text.encode())
    h.update(generator_fingerprint(kind, **dirs).encode())
    return h.hexdigest()


def usable_folder(folder: Path) -> Path:
    """`folder`, created if needed, after checking that files can be written in it;
    a UserError naming it (and $DERIVE_CACHE_DIR) otherwise."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".probe-{owner_tag()}", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UserError(f"cannot write the kernel cache {folder}: "
                        f"{exc.strerror or exc}; set DERIVE_CACHE_DIR to a writable "
                        f"folder") from None
    return folder


def cache_dir() -> Path:
    """$DERIVE_CACHE_DIR, or the user cache dir of platformdirs."""
    env = os.environ.get("DERIVE_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    import platformdirs
    return Path(platformdirs.user_cache_dir("derive", appauthor=False))


@lru_cache(maxsize=1)
def _has_mvec() -> bool:
    import ctypes.util
    return ctypes.util.find_library("mvec") is not None


def blas_dirs() -> dict:
    """Include and library folders of the scipy-openblas32 wheel (the kernels' BLAS)."""
    try:
        import scipy_openblas32 as blas
    except ImportError:
        raise BuildError("the kernels need the scipy-openblas32 package (their BLAS): "
                         "pip install scipy-openblas32") from None
    return {"include": blas.get_include_dir(), "lib": blas.get_lib_dir(),
            "library": blas.get_library()}


def compile_flags(portable: bool = False, level: isa.Level | None = None) -> dict:
    """How a kernel is compiled: {"cflags", "ldflags", "libraries", "isa"} (BLAS folders
    apart), at instruction-set `level` (default: the selected one, derive.kernel.isa).

    Fast (x86-64 with glibc's libmvec): -O3, the level's -m flags (none for portable,
    -mavx2 -mfma, or AVX-512 preferring 512-bit vectors) and math that neither sets errno
    nor traps, with DERIVE_LIBMVEC (the kernel then declares expf, tanhf, logf…
    SIMD-enabled), so the element-wise loops vectorize with glibc's vector math, linked
    with mvec and m, while NaN and infinities keep their IEEE meaning (no -ffast-math);
    -fopenmp for the threads. Fallback otherwise (and when the fast build fails): -O3,
    math that does not set errno, no OpenMP (one thread), level portable.
    -march=native is never used (not portable).
    """
    level = level or isa.selected()
    if not portable and isa.x86_64() and _has_mvec():
        return {"cflags": ["-O3", "-fno-math-errno", "-fno-trapping-math", *level.cflags,
                           "-fopenmp", "-DDERIVE_LIBMVEC"],
                "ldflags": ["-fopenmp"], "libraries": ["mvec", "m"], "isa": level.name}
    return {"cflags": ["-O3", "-fno-math-errno"], "ldflags": [], "libraries": ["m"],
            "isa": "portable"}


def preload_blas() -> None:
    """Load the kernels' BLAS (scipy-openblas32) so that their modules find it.

    A kernel module links libscipy_openblas.so by name; importing scipy_openblas32
    loads that library into the process (the run-time path of a wheel's build
    environment may be gone).
    """
    try:
        import scipy_openblas32  # noqa: F401  (loads the library, RTLD_GLOBAL)
    except ImportError:
        pass


_CONFIG_LOCK = threading.Lock()
_CONFIG: dict = {}


def _config_var(name: str):
    """A variable of sysconfig's configuration, read once per process under a lock.

    In Python 3.11 sysconfig publishes its variables before it has filled them in, so a
    thread racing the first reader may see CC missing (a different cache key: the kernel
    is compiled twice and two modules of one cell are loaded).
    """
    with _CONFIG_LOCK:
        for _ in range(200):  # another library's thread may be initialising it right now
            if _CONFIG:
                break
            found = dict(sysconfig.get_config_vars())
            if "EXT_SUFFIX" in found and "CC" in found:
                _CONFIG.update(found)
            else:  # pragma: no cover - only while sysconfig is being filled in
                time.sleep(0.01)
        else:  # pragma: no cover
            _CONFIG.update(sysconfig.get_config_vars())
    return _CONFIG.get(name)


def _cc() -> list[str]:
    cc = os.environ.get("CC") or _config_var("CC") or "cc"
    return shlex.split(cc)


@lru_cache(maxsize=4)
def _cc_version(cc: tuple[str, ...]) -> str:
    try:
        out = subprocess.run([*cc, "--version"], capture_output=True, text=True, timeout=30)
        return out.stdout.splitlines()[0].strip() if out.stdout else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "missing"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "none"


def toolchain(portable: bool = False, level: isa.Level | None = None) -> dict:
    """Everything besides the source that changes the binary (the level's flags too)."""
    cc = _cc()
    return {"cc": shlex.join(cc), "cc_version": _cc_version(tuple(cc)),
            "flags": compile_flags(portable, level), "blas": _version("scipy-openblas32"),
            "cython": _version("Cython"), "numpy": _version("numpy"),
            "python": sys.version.split()[0],
            "soabi": _config_var("SOABI") or "",
            "platform": f"{sys.platform}-{platform.machine()}"}


def cache_key(spec_text: str, portable: bool = False, level: isa.Level | None = None) -> str:
    tc = toolchain(portable, level)
    h = hashlib.sha256(fingerprint(spec_text).encode())
    h.update(repr(sorted(tc.items())).encode())
    return h.hexdigest()[:20]


# --- compiling ---------------------------------------------------------------------------------

def stamp(source: str, spec_text: str, flags: dict, **dirs) -> str:
    """The source with BUILD_INFO appended (what the build saw)."""
    info = {"fingerprint": fingerprint(spec_text, **dirs),
            "source_sha256": hashlib.sha256(source.encode()).hexdigest(),
            "flags": " ".join(flags["cflags"]), "isa": flags["isa"], "derive": __version__}
    return source.rstrip("\n") + f"\n\n\nBUILD_INFO = {info!r}\n"


def _run(command: list[str], what: str, cwd: Path) -> None:
    try:
        proc = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    except OSError as exc:
        raise BuildError(f"{what} failed: cannot run {command[0]!r} ({exc})",
                         command, str(exc)) from None
    if proc.returncode != 0:
        raise BuildError(f"{what} failed with exit code {proc.returncode}", command,
                         (proc.stdout + proc.stderr)[-20000:])


def cythonize(source: str, modname: str, outdir: Path) -> Path:
    """Write `source` as `outdir`/`modname`.pyx and translate it to C with Cython
    (language level 3). Returns the C file's path; raises BuildError with the command
    and Cython's output when it fails."""
    outdir.mkdir(parents=True, exist_ok=True)
    pyx = outdir / f"{modname}.pyx"
    pyx.write_text(source, "utf-8")
    c_file = outdir / f"{modname}.c"
    _run([sys.executable, "-m", "cython", "-3", "-o", str(c_file), str(pyx)], "cython",
         outdir)
    return c_file


def compile_extension(source: str, modname: str, outdir: Path, portable: bool = False,
                      level: isa.Level | None = None) -> Path:
    """Cythonize, compile and link `source` as module `modname` in `outdir`.

    Returns the path of the extension file; raises BuildError with the command and the
    compiler output of the step that failed.
    """
    c_file = cythonize(source, modname, outdir)
    flags = compile_flags(portable, level)
    blas = blas_dirs()
    cc = _cc()
    cflags = shlex.split(_config_var("CFLAGS") or "")
    ccshared = shlex.split(_config_var("CCSHARED") or "-fPIC")
    include = sysconfig.get_paths()["include"]
    obj = outdir / f"{modname}.o"
    _run([*cc, *cflags, *ccshared, f"-I{include}", f"-I{blas['include']}", *flags["cflags"],
          "-c", str(c_file), "-o", str(obj)], "compiling the kernel", outdir)
    ext = outdir / f"{modname}{_config_var('EXT_SUFFIX') or '.so'}"
    ldshared = shlex.split(_config_var("LDSHARED") or f"{cc[0]} -shared")
    _run([*ldshared, str(obj), "-o", str(ext), *flags["ldflags"], f"-L{blas['lib']}",
          f"-Wl,-rpath,{blas['lib']}", f"-l{blas['library']}",
          *[f"-l{lib}" for lib in flags["libraries"]]], "linking the kernel", outdir)
    obj.unlink(missing_ok=True)
    return ext


def load_extension(path: Path, modname: str):
    """Import an extension module from a file (once per process)."""
    if modname in sys.modules:
        return sys.modules[modname]
    preload_blas()
    loader = importlib.machinery.ExtensionFileLoader(modname, str(path))
    spec = importlib.util.spec_from_file_location(modname, str(path), loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    sys.modules[modname] = module
    return module


def _progress(text: str, quiet: bool):
    if not quiet:
        print(f"derive: {text}", file=sys.stderr, flush=True)


# --- shipped modules and the cache ------------------------------------------------------------

def shipped_module(name: str, spec_text: str):
    """The module compiled at install for a shipped cell, if present and current."""
    preload_blas()
    try:
        mod = importlib.import_module(f"derive._kernels.{name}")
    except ImportError:
        return None
    info = getattr(mod, "BUILD_INFO", None) or {}
    if getattr(mod, "KERNEL_API", None) != KERNEL_API:
        return None
    if info.get("fingerprint") != fingerprint(spec_text):
        return None
    if info.get("isa") != compile_flags()["isa"]:   # built for another level
        return None
    return mod


def cached_path(name: str, spec_text: str, portable: bool = False,
                level: isa.Level | None = None) -> tuple[Path, str]:
    """(folder, module name) of a cell's kernel at `level` (default: selected) in the cache."""
    level = level or isa.selected()
    key = cache_key(spec_text, portable, level)
    return (cache_dir() / "kernels" / f"{name}-{level.name}-{key}",
            f"derive_kernel_{name}_{level.name}_{key}")


def _module_file(folder: Path, modname: str) -> Path:
    return folder / f"{modname}{_config_var('EXT_SUFFIX') or '.so'}"


def build(cell, force: bool = False, quiet: bool = False, level: isa.Level | None = None) -> Path:
    """The path of CELL's compiled kernel at `level` (default: the selected one,
    derive.kernel.isa), compiling it into the cache when needed. A level this CPU cannot
    run still compiles (it is not loaded)."""
    return _locate(cell, force=force, quiet=quiet, level=level)[0]


def load(cell, force: bool = False, quiet: bool = False):
    """The compiled kernel module of CELL at the selected level (shipped, cached, or
    built now).

    A cached module that does not load (a corrupt or truncated file) is rebuilt, with a
    RuntimeWarning saying why.
    """
    path, modname, module = _locate(cell, force=force, quiet=quiet)
    if module is not None:
        return module
    problem = None if modname in sys.modules else damage(path)
    if problem is None:
        try:
            return load_extension(path, modname)
        except (ImportError, OSError) as exc:
            problem = str(exc)
    warnings.warn(f"derive: the cached kernel {path} does not load ({problem}); rebuilding "
                  f"it", RuntimeWarning, stacklevel=2)
    path, modname, _ = _locate(cell, force=True, quiet=quiet)
    return load_extension(path, modname)


def _checksum_file(ext: Path) -> Path:
    return ext.with_name(ext.name + ".sha256")


def damage(ext: Path) -> str | None:
    """Why the cached module `ext` must not be loaded (None: it is intact).

    A build writes the sha256 of the module beside it; a module whose bytes no longer
    match (truncated, overwritten) is damaged. Loading a truncated shared library is not
    an error but a crash (SIGBUS when the loader touches the missing pages), so this is
    checked before. Builds without the checksum (older derive) get a cheaper check: the
    ELF section headers must lie inside the file.
    """
    try:
        data = ext.read_bytes()
    except OSError as exc:
        return f"cannot read it: {exc.strerror or exc}"
    recorded = _checksum_file(ext)
    if recorded.exists():
        try:
            want = recorded.read_text().split()[0]
        except (OSError, IndexError):
            return "its checksum file is unreadable"
        return None if hashlib.sha256(data).hexdigest() == want else \
            "its bytes do not match the checksum written when it was built"
    if data[:4] == b"\x7fELF" and len(data) >= 64 and data[4] == 2:  # 64-bit ELF
        order = "little" if data[5] == 1 else "big"
        shoff = int.from_bytes(data[40:48], order)
        shentsize = int.from_bytes(data[58:60], order)
        shnum = int.from_bytes(data[60:62], order)
        if shoff + shentsize * shnum > len(data):
            return f"the file is truncated ({len(data)} bytes)"
    elif data[:4] != b"\x7fELF" and sys.platform.startswith("linux"):
        return "not a shared library"
    return None


def _locate(cell, force=False, quiet=False, level=None):
    name, text, shipped = spec_source(cell)
    level = level or isa.selected()
    if shipped and not force and level == isa.selected():
        mod = shipped_module(name, text)
        if mod is not None:
            return Path(mod.__file__), mod.__name__, mod
    folder, modname = cached_path(name, text, False, level)
    ext = _module_file(folder, modname)
    if ext.exists() and not force:
        return ext, modname, None
    return _build_into_cache(cell, name, text, folder, modname, force, quiet, level)


def _build_into_cache(cell, name, text, folder: Path, modname: str, force: bool, quiet: bool,
                      level: isa.Level):
    from filelock import FileLock
    usable_folder(folder.parent)
    remove_stale(folder.parent, ".build-*")  # what killed builds left
    ext = _module_file(folder, modname)
    with FileLock(str(folder) + ".lock", timeout=LOCK_TIMEOUT):
        if ext.exists() and not force:  # another process built it meanwhile
            return ext, modname, None
        t0 = time.perf_counter()
        _progress(f"generating the kernel of {name} …", quiet)
        from derive.cell.spec import load_cell
        from derive.derivation import derive
        from derive.kernel.emit import kernel_source
        source = kernel_source(derive(load_cell(cell)))
        tmp = Path(tempfile.mkdtemp(prefix=f".build-{name}-{owner_tag()}", dir=folder.parent))
        try:
            flags = compile_flags(level=level)
            _progress(f"compiling the kernel of {name} at level {level.name} (float32 and "
                      f"float64; this takes several seconds) …", quiet)
            try:
                compile_extension(stamp(source, text, flags), modname, tmp, level=level)
            except BuildError as first:
                if compile_flags(True) == flags:
                    raise
                _progress(f"the optimized build failed ({first.args[0].splitlines()[0]}); "
                          f"retrying with portable flags", quiet)
                flags = compile_flags(True)
                compile_extension(stamp(source, text, flags), modname, tmp, portable=True)
            for leftover in tmp.glob("*.o"):
                leftover.unlink()
            built = _module_file(tmp, modname)
            _checksum_file(built).write_text(
                f"{hashlib.sha256(built.read_bytes()).hexdigest()}  {built.name}\n")
            if folder.exists():  # --force: move the old build out of the way
                shutil.rmtree(folder, ignore_errors=True)
            os.replace(tmp, folder)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        _progress(f"built {ext} in {time.perf_counter() - t0:.1f} s", quiet)
    return ext, modname, None
