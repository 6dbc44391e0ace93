"""Shared fixtures: the shipped cells, a seeded random generator per test, and the kernel
cache of the test run.

The cache: tests never write into the user's own kernel cache (platformdirs' user cache
dir, ~/.cache/derive on Linux). Before any test module is imported (so before anything
is built), DERIVE_CACHE_DIR is set for the whole run, and subprocesses the tests start
inherit it:

* when the caller set DERIVE_CACHE_DIR explicitly, that folder is used: whoever runs the
  suite chose it for derive's builds (a developer's scratch cache shared between runs,
  so the kernels of a checkout compile once, not at every run);
* otherwise a temporary folder, created now and removed when the run ends.

Test cells other than the shipped ones come from the catalog (tests/catalog.py, files in
tests/cells/).
"""

import os
import shutil
import tempfile

import numpy as np
import pytest

_OWN_CACHE = None
if not os.environ.get("DERIVE_CACHE_DIR"):
    _OWN_CACHE = tempfile.mkdtemp(prefix="derive-test-cache-")
    os.environ["DERIVE_CACHE_DIR"] = _OWN_CACHE

import derive  # noqa: E402  (after the cache is chosen)

SHIPPED = derive.shipped_cells()


def pytest_unconfigure(config):
    if _OWN_CACHE is not None:
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)


def pytest_report_header(config):
    origin = "temporary, removed at the end" if _OWN_CACHE else "set by the caller"
    return f"derive kernel cache: {os.environ['DERIVE_CACHE_DIR']} ({origin})"


@pytest.fixture
def rng():
    return np.random.default_rng(20261124)


@pytest.fixture(params=SHIPPED)
def cell_name(request):
    return request.param
