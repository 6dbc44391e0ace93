"""Scratch files and folders that name their owner, so that a later run removes what a
killed one left behind — and only that.

A scratch name carries ``~<host>~<pid>~`` (`owner_tag`): the build folders of the kernel
cache (``.build-<cell>-~<host>~<pid>~<random>``) and the temporary files of `derive
generate` (``.<file>.~<host>~<pid>~<random>.tmp``). One is *stale* when the process that
made it is gone (same host, no such process) or, whoever made it, when it has not been
touched for `MAX_AGE` seconds (a reused process id, another host sharing the folder, or
a name without an owner written by an older derive). A live process's scratch is never
stale: a build takes seconds to minutes and waits at most an hour for a lock.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import time
from pathlib import Path

MAX_AGE = 2 * 3600  # seconds

_OWNER = re.compile(r"~([^~/]+)~(\d+)~")


def owner_tag() -> str:
    """``~<host>~<pid>~``: what a scratch name carries to say who made it."""
    return f"~{_host()}~{os.getpid()}~"


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname())[:64] or "host"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def is_stale(path: Path, now: float | None = None) -> bool:
    """Whether `path` is scratch left by a process that is gone (see the module docstring)."""
    try:
        age = (time.time() if now is None else now) - path.lstat().st_mtime
    except OSError:
        return False
    if age > MAX_AGE:
        return True
    m = _OWNER.search(path.name)
    return bool(m) and m.group(1) == _host() and not _alive(int(m.group(2)))


def remove_stale(folder: Path, pattern: str) -> list[Path]:
    """Remove the stale entries of `folder` that match the glob `pattern`; return them."""
    removed = []
    try:
        candidates = sorted(folder.glob(pattern))
    except OSError:
        return removed
    for path in candidates:
        if not is_stale(path):
            continue
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except FileNotFoundError:  # another run removed it first
            pass
        except OSError:
            continue
        removed.append(path)
    return removed
