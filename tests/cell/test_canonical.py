"""The one canonical form and the one map σ(f̄)→f of a cell, at every time step."""

import sympy as sp

import derive
from derive.cell import symbols as S
from derive.cell.canonical import Activations, canonical


def test_activations_are_stored_outputs_at_any_step():
    acts = Activations(derive.load_cell("lstm"))
    for k in (-12, -1, 0, 1, 12):
        i_bar = S.value("i_bar", k)
        assert acts.stored(S.sigmoid(i_bar)) == S.value("i", k)
        assert acts.stored(S.dsigmoid(i_bar)) == S.value("i", k) * (1 - S.value("i", k))
        assert acts.of(S.value("z", k)) == S.tanh(S.value("z_bar", k))
        assert acts.unstored(S.value("o", k)) == S.sigmoid(S.value("o_bar", k))
    # tanh(c) is part of y = o*tanh(c), not an activation node: it stays
    assert acts.stored(sp.tanh(S.value("c", 3))) == sp.tanh(S.value("c", 3))
    assert acts.of(S.value("c")) is None and acts.of(S.value("y")) is None


def test_the_derivation_and_the_verifier_share_the_canonical_form():
    from derive.verification.context import context
    d = derive.derive("lstm")
    ctx = context("lstm")
    W, f_bar, f = S.param("W_f"), S.value("f_bar", 5), S.value("f", 5)
    a = S.MatTVec(W, S.delta("f_bar", 5) * S.dsigmoid(f_bar) * 2)
    b = 2 * S.MatTVec(W, S.delta("f_bar", 5) * f * (1 - f))
    assert d.canonical(a - b) == 0 == ctx.prepare(a - b)
    assert canonical(a, d.activations) == ctx.prepare(a) == d.canonical(b)
