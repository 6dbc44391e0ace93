"""The kernel cache under threads, kills and bad settings (issue 9.4, 9.5, 9.7)."""

from __future__ import annotations

import _ctypes
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from limits import cell_text

import derive
from derive.cli.main import main
from derive.kernel import build, runtime
from derive.scratch import MAX_AGE, owner_tag


def dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def host() -> str:
    return owner_tag().split("~")[1]


# --- 4. one key whatever the threads; one NumPy reference module ------------------------------

def test_threads_racing_sysconfigs_first_read_compute_one_key(monkeypatch):
    """sysconfig in Python 3.11 publishes its variables before filling them in; a thread
    racing the first reader saw CC missing and computed another key."""
    import sysconfig
    real = dict(sysconfig.get_config_vars())
    published: dict = {}
    state = {"ready": False}

    def get_config_vars():
        if not state["ready"]:
            state["ready"] = True
            published.clear()       # published before it is filled in, like 3.11's
            time.sleep(0.2)
            published.update(real)
        return published

    monkeypatch.setattr(sysconfig, "get_config_vars", get_config_vars)
    monkeypatch.setattr(sysconfig, "get_config_var", lambda n: get_config_vars().get(n))
    monkeypatch.setattr(build, "_CONFIG", {}, raising=False)
    monkeypatch.delenv("CC", raising=False)
    keys, start = [], threading.Barrier(4)

    def worker():
        start.wait()
        keys.append(build.cache_key("name = 'x'\n"))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(keys) == 4 and len(set(keys)) == 1, keys


def test_threads_loading_the_numpy_reference_get_one_module(tmp_path, monkeypatch):
    import importlib.util
    monkeypatch.setenv("DERIVE_CACHE_DIR", str(tmp_path))
    spec = tmp_path / "racy.toml"
    spec.write_text(cell_text("tanh(a)", name="racy_reference"))
    runtime._reference_module(spec)  # generate the file; then load it from threads
    for name in [m for m in sys.modules if m.startswith("derive_reference_racy_reference")]:
        monkeypatch.delitem(sys.modules, name)
    slow_exec = importlib.util.module_from_spec

    def module_from_spec(s):
        time.sleep(0.1)  # widen the window between the check and the insert
        return slow_exec(s)

    monkeypatch.setattr(importlib.util, "module_from_spec", module_from_spec)
    kernels, start = [], threading.Barrier(4)

    def worker():
        start.wait()
        kernels.append(derive.load_kernel(str(spec), backend="numpy"))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(k.module) for k in kernels}) == 1
    params = kernels[0].init_params(2, 3, seed=0)
    import numpy as np
    x = np.random.default_rng(0).standard_normal((3, 2, 2))
    trace = kernels[0].forward(x, params)
    kernels[1].backward(trace, np.ones((3, 2, 3)))  # accepted: the same cell's kernel


# --- 5. a bad cache folder and over-long names: one line, before any compile ------------------

@pytest.fixture
def no_compile(monkeypatch):
    def compile_extension(*args, **kwargs):
        raise AssertionError("compiled")
    monkeypatch.setattr(build, "compile_extension", compile_extension)


def one_line(capsys, argv) -> str:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("where", ["a file", "inside a file"])
def test_a_cache_dir_that_cannot_be_written_is_one_line(tmp_path, monkeypatch, capsys,
                                                        no_compile, where):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("DERIVE_CACHE_DIR", str(blocker if where == "a file" else blocker / "c"))
    spec = tmp_path / "cell.toml"
    spec.write_text(cell_text("tanh(a)", name="uncached"))
    err = one_line(capsys, ["build", spec])
    assert "cannot write the kernel cache" in err and "DERIVE_CACHE_DIR" in err, err


@pytest.mark.parametrize("length", [200, 300])
def test_an_over_long_cell_name_is_one_line_before_any_compile(tmp_path, monkeypatch, capsys,
                                                              no_compile, length):
    monkeypatch.setenv("DERIVE_CACHE_DIR", str(tmp_path / "cache"))
    spec = tmp_path / "long.toml"
    spec.write_text(cell_text("tanh(a)", name="c" * length))
    err = one_line(capsys, ["build", spec])
    assert f"is {length} characters long; the limit is 64" in err and f"{spec}:1:" in err, err


# --- 7. what killed builds and generates left behind ------------------------------------------

def test_the_next_build_removes_stale_build_folders_only(tmp_path, monkeypatch):
    monkeypatch.setenv("DERIVE_CACHE_DIR", str(tmp_path))
    kernels = tmp_path / "kernels"
    kernels.mkdir()
    killed = kernels / f".build-rnn-~{host()}~{dead_pid()}~abc"
    live = kernels / f".build-rnn-{owner_tag()}def"              # this process: live
    old = kernels / ".build-rnn-x1y2z3"                           # an older derive's, old
    young = kernels / ".build-rnn-a1b2c3"                         # an older derive's, recent
    for folder in (killed, live, old, young):
        (folder / "sub").mkdir(parents=True)
        (folder / "sub" / "kernel.c").write_text("/* half written */")
    os.utime(old, (time.time() - MAX_AGE - 60,) * 2)

    def compile_extension(source, modname, outdir, portable=False, level=None):
        raise build.BuildError("stopped here: the cleanup has run")
    monkeypatch.setattr(build, "compile_extension", compile_extension)
    spec = tmp_path / "cell.toml"
    spec.write_text(cell_text("tanh(a)", name="cleanup"))
    with pytest.raises(build.BuildError, match="stopped here"):
        build.build(spec, quiet=True)
    assert not killed.exists() and not old.exists()
    assert live.exists() and young.exists()
    assert not list(kernels.glob(".build-cleanup-*"))            # its own folder is gone too


def test_generate_removes_and_check_reports_a_killed_runs_temporary_files(tmp_path, capsys):
    from derive.generate import generate
    out = tmp_path / "gen"
    assert int(generate(["rnn"], out=out, quiet=True)) == 0
    killed = out / "rnn" / f".equations.md.~{host()}~{dead_pid()}~k1.tmp"
    live = out / "rnn" / f".equations.md.{owner_tag()}k2.tmp"
    old = out / ".README.md.q9w8e7.tmp"
    for p in (killed, live, old):
        p.write_text("half")
    os.utime(old, (time.time() - MAX_AGE - 60,) * 2)
    assert int(generate(["rnn"], out=out, check=True, quiet=True)) == 1
    printed = capsys.readouterr().out
    assert f"leftover: {killed}" in printed and f"leftover: {old}" in printed
    assert str(live) not in printed
    assert int(generate(["rnn"], out=out, quiet=True)) == 0
    assert not killed.exists() and not old.exists() and live.exists()
    live.unlink()
    assert int(generate(["rnn"], out=out, check=True, quiet=True)) == 0


# --- 5. a corrupt cached module is rebuilt (one compile) ----------------------------------------

LOAD_AND_RUN = """\
import sys, warnings
import _ctypes

import numpy as np
import derive
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    k = derive.load_kernel(sys.argv[1])
print(k.backend, len(caught), str(caught[0].message) if caught else "")
p = k.init_params(2, 3, seed=0)
tr = k.forward(np.ones((3, 2, 2)), p)
k.backward(tr, np.ones((3, 2, 3)))
"""


def test_a_truncated_cached_kernel_is_rebuilt_with_a_warning(tmp_path):
    spec = tmp_path / "cell.toml"
    spec.write_text(cell_text("tanh(a)", name="truncated_once"))
    cache = tmp_path / "cache"
    env = dict(os.environ, DERIVE_CACHE_DIR=str(cache))
    folder, modname = build.cached_path("truncated_once", spec.read_text())
    # a cached module cut short: the first 4 kB of a real extension module (loading it
    # was a SIGBUS, not an ImportError)
    so = build._module_file(cache / "kernels" / folder.name, modname)
    so.parent.mkdir(parents=True)
    so.write_bytes(Path(_ctypes.__file__).read_bytes()[:4096])
    run = subprocess.run([sys.executable, "-c", LOAD_AND_RUN, str(spec)], env=env,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr
    backend, warned, message = run.stdout.split(" ", 2)
    assert backend == "cython" and warned == "1" and "does not load" in message, run.stdout
    assert so.stat().st_size > 4096


def test_damage_compares_the_checksum_written_at_build_time(tmp_path):
    ext = tmp_path / "m.so"
    ext.write_bytes(b"\x7fELF" + bytes(200))
    build._checksum_file(ext).write_text(
        __import__("hashlib").sha256(ext.read_bytes()).hexdigest() + "  m.so\n")
    assert build.damage(ext) is None
    ext.write_bytes(b"\x7fELF" + bytes(99) + b"\x01" + bytes(100))  # same size, one byte
    assert "do not match the checksum" in build.damage(ext)
