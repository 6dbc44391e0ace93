"""Shared fixtures: the shipped cells, and a seeded random generator per test."""

import numpy as np
import pytest

import derive

SHIPPED = derive.shipped_cells()


@pytest.fixture
def rng():
    return np.random.default_rng(20261124)


@pytest.fixture(params=SHIPPED)
def cell_name(request):
    return request.param
