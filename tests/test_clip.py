"""derive.clip_grad_norm: the article's two-line rule, on the global norm of every gradient."""

import numpy as np
import pytest

import derive


def test_the_articles_rule():
    g = {"W": np.array([3.0, 0.0]), "b": np.array([4.0])}
    clipped, norm = derive.clip_grad_norm(g, 1.0)
    assert norm == 5.0
    np.testing.assert_allclose(clipped["W"], [0.6, 0.0])
    np.testing.assert_allclose(clipped["b"], [0.8])
    assert g["W"][0] == 3.0                                 # the input is not changed


def test_global_norm_over_every_array(rng):
    grads = {"W_z": rng.normal(size=(3, 2)), "p_i": rng.normal(size=3), "x": rng.normal(size=(4, 2, 2))}
    total = np.linalg.norm(np.concatenate([a.ravel() for a in grads.values()]))
    clipped, norm = derive.clip_grad_norm(grads, total / 4)
    assert norm == pytest.approx(total, rel=1e-15)
    after = np.linalg.norm(np.concatenate([a.ravel() for a in clipped.values()]))
    assert after == pytest.approx(total / 4, rel=1e-12)
    for name in grads:   # the direction is kept
        np.testing.assert_allclose(clipped[name], grads[name] / 4, rtol=1e-12)


def test_below_the_threshold_nothing_changes_and_lists_work(rng):
    grads = [rng.normal(size=3).astype(np.float32), rng.normal(size=(2, 2)).astype(np.float32)]
    clipped, norm = derive.clip_grad_norm(grads, 1e6)
    assert isinstance(clipped, list) and norm > 0
    for a, b in zip(grads, clipped):
        assert b is not a and b.dtype == np.float32
        np.testing.assert_array_equal(a, b)
    clipped, _ = derive.clip_grad_norm(tuple(grads), 1e-3)
    assert isinstance(clipped, tuple) and clipped[0].dtype == np.float32


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), "x"])
def test_max_norm_must_be_positive(bad):
    with pytest.raises(ValueError, match="max_norm"):
        derive.clip_grad_norm({"a": np.ones(2)}, bad)


def test_a_non_finite_norm_is_reported():
    _, norm = derive.clip_grad_norm([np.array([np.inf, 1.0])], 1.0)
    assert norm == float("inf")
