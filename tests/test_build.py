"""Building and caching kernels: user specs, concurrency, staleness, failures, load time."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_rewrite import WEIRD

import derive
from derive.kernel import build

LOAD = textwrap.dedent("""\
    import sys, time
    t0 = time.perf_counter()
    import derive
    k = derive.load_kernel(sys.argv[1], dtype="float32")
    elapsed = time.perf_counter() - t0
    print(k.backend, k.path, f"{elapsed:.3f}", "sympy" in sys.modules)
    """)


def run_python(code, *args, cache=None, **kw):
    env = dict(os.environ)
    if cache is not None:
        env["DERIVE_CACHE_DIR"] = str(cache)
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_user_spec_builds_once_is_cached_shared_and_checked(tmp_path, monkeypatch):
    """Two processes asking at once: one compiles, both load; later ones reuse the cache."""
    spec = tmp_path / "weird.toml"
    spec.write_text(WEIRD)
    cache = tmp_path / "cache"
    procs = [run_python(LOAD, spec, cache=cache) for _ in range(2)]
    results = [(p.communicate(timeout=600), p.returncode) for p in procs]
    for (out, err), code in results:
        assert code == 0, err
    paths = {out.split()[1] for (out, _), _ in results}
    assert len(paths) == 1 and Path(paths.pop()).is_relative_to(cache)
    compiled = [err for (_, err), _ in results if "compiling the kernel of weird" in err]
    assert len(compiled) == 1                      # the other process waited for it
    assert len([d for d in (cache / "kernels").glob("weird-*") if d.is_dir()]) == 1
    assert not list((cache / "kernels").glob(".build-*"))   # no leftovers

    # a third process loads it from the cache, without SymPy and without compiling
    p = run_python(LOAD, spec, cache=cache)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0 and "compiling" not in err, err
    backend, _, seconds, sympy_loaded = out.split()
    assert backend == "cython" and sympy_loaded == "False"

    monkeypatch.setenv("DERIVE_CACHE_DIR", str(cache))
    from derive.check import gradient_check
    report = gradient_check(str(spec), backend="cython")
    assert report.passed, report.table()
    assert gradient_check(str(spec), backend="cython", dtype="float32").passed


def test_cached_shipped_kernel_loads_fast_in_a_fresh_process():
    derive.load_kernel("lstm")          # built at install (or cached now)
    times = []
    for _ in range(3):
        p = run_python(LOAD, "lstm")
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        backend, path, seconds, sympy_loaded = out.split()
        assert backend == "cython" and sympy_loaded == "False"
        times.append(float(seconds))
    assert min(times) < 1.0, times    # target 0.5 s; the machine is shared and noisy


def test_a_failed_build_carries_the_command_and_the_compiler_output(tmp_path):
    with pytest.raises(build.BuildError) as info:
        build.compile_extension("def broken(:\n    pass\n", "derive_broken", tmp_path)
    err = info.value
    assert "cython" in " ".join(err.command) and "derive_broken.pyx" in " ".join(err.command)
    assert "derive_broken.pyx" in err.output and "command:" in str(err)
    source = 'cdef extern from *:\n    """\n    #error deliberately broken\n    """\n'
    with pytest.raises(build.BuildError) as info:
        build.compile_extension(source, "derive_broken_c", tmp_path / "c")
    err = info.value
    assert err.command[0] == build._cc()[0] and "-c" in err.command
    assert "deliberately broken" in err.output and "compiler output:" in str(err)


def test_a_stale_shipped_module_is_not_used():
    name, text, shipped = build.spec_source("lstm")
    assert shipped
    module = build.shipped_module(name, text)
    if module is None:
        pytest.skip("the shipped kernels are not built in this environment (or are stale)")
    assert module.BUILD_INFO["fingerprint"] == build.fingerprint(text)
    assert build.shipped_module(name, text + "\n# edited\n") is None


def test_the_fingerprint_follows_the_generator(tmp_path):
    pkg = Path(build.__file__).parent.parent
    templates = build._template_dir()
    copy_pkg, copy_tpl = tmp_path / "derive", tmp_path / "templates"
    copy_pkg.mkdir()
    copy_tpl.mkdir()
    for name in build.generator_files(pkg):
        (copy_pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (copy_pkg / name).write_bytes((pkg / name).read_bytes())
    for name in build.template_files("kernel", templates):
        (copy_tpl / name).parent.mkdir(parents=True, exist_ok=True)
        (copy_tpl / name).write_bytes((templates / name).read_bytes())
    text = build.spec_source("rnn")[1]
    same = build.fingerprint(text, package_dir=copy_pkg, template_dir=copy_tpl)
    assert same == build.fingerprint(text)
    assert "support/small_gemm.h" in build.template_files("kernel", templates)
    assert "kernel/plan/cse.py" in build.generator_files(pkg)
    assert "kernel/runtime.py" not in build.generator_files(pkg)
    for path in (copy_tpl / "kernel.pyx.j2", copy_tpl / "support" / "small_gemm.h",
                 copy_pkg / "kernel" / "lower.py"):
        original = path.read_bytes()
        path.write_bytes(original + b"\n/* an edit */\n")
        assert build.fingerprint(text, package_dir=copy_pkg, template_dir=copy_tpl) != same
        path.write_bytes(original)
    assert build.fingerprint(text + " ") != same


def test_cache_key_covers_the_toolchain(monkeypatch):
    text = build.spec_source("rnn")[1]
    key = build.cache_key(text)
    assert build.cache_key(text + "\n") != key
    assert build.cache_key(text, portable=True) != key or \
        build.compile_flags(True) == build.compile_flags(False)
    monkeypatch.setattr(build, "_version", lambda dist: "0.0-other")
    assert build.cache_key(text) != key


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("DERIVE_CACHE_DIR", str(tmp_path / "x"))
    assert build.cache_dir() == tmp_path / "x"
    monkeypatch.delenv("DERIVE_CACHE_DIR")
    assert "derive" in str(build.cache_dir())


def test_cli_build_prints_where_the_module_is():
    run = subprocess.run([sys.executable, "-m", "derive", "build", "rnn"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    path = Path(run.stdout.strip())
    assert path.exists() and path.suffix in (".so", ".pyd")
    run = subprocess.run([sys.executable, "-m", "derive", "build", "no_such_cell"],
                         capture_output=True, text=True)
    assert run.returncode == 2 and "unknown cell" in run.stderr
