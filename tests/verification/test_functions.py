"""`derive verify` with relu, softplus, sqrt and the reduction mean: correct hand
derivations (text and LaTeX, several spellings) verify equal, wrong ones are refuted
naming the wrong term."""

import pytest
from catalog import cell_path

from derive import verify

LN = cell_path("layer_norm")
FN = cell_path("functions")

EQUAL = [
    ("indrnn", "da[t] = dh[t]*step(h[t])", False),
    ("indrnn", "da[t] = dh[t]*drelu(a[t])", False),
    ("indrnn", "dh[t] = Delta[t] + u*dh[t+1]*step(h[t+1])", False),
    ("indrnn", r"\delta a^{(t)} = \delta h^{(t)} \odot \left[h^{(t)} > 0\right]", True),
    ("indrnn", r"\delta a^{(t)} = \delta h^{(t)} \odot [h^{t} > 0]", True),
    ("indrnn", r"\delta a^{(t)} = \delta h^{(t)} \odot \operatorname{relu}'(a^{(t)})", True),
    # the reduction's adjoint: dv gets mean(dmu) from mu = mean(v)
    (LN, "dv[t] = dd[t] + mean(dmu[t])", False),
    (LN, "dmu[t] = -dd[t]", False),
    (LN, "dd[t] = g*dn[t]/s[t] + d[t]*mean(ds[t])/s[t]", False),
    (LN, "dd[t] = g*dn[t]/s[t] + d[t]*mean(ds[t]/s[t])", False),
    (LN, "dv[t] = g*dn[t]/s[t] - mean(g*dn[t])/s[t] - d[t]*mean(g*dn[t]*d[t])/s[t]**3", False),
    (LN, r"\delta v^{(t)} = \delta d^{(t)} + \operatorname{mean}\left(\delta\mathit{mu}^{(t)}"
         r"\right)", True),
    (LN, r"\delta s^{(t)} = -\frac{g \odot \delta n^{(t)} \odot d^{(t)}}"
         r"{\operatorname{mean}(d^{(t)} \odot d^{(t)}) + 0.001}", True),
    # softplus' = sigmoid; sqrt' = 1/(2 sqrt), also as a power
    (FN, "da_bar[t] = da[t]*sigmoid(a_bar[t])", False),
    (FN, "dc[t] = dy[t]*a[t]*dtanh(c[t]) + p*dc[t+1]*c[t]*(a[t+1] + c[t]**2 + 0.5)**-0.5",
     False),
    (FN, r"\delta c^{(t)} = \delta y^{(t)} \odot a^{(t)} \odot h'(c^{(t)}) + \frac{p \odot "
         r"\delta c^{(t+1)} \odot c^{(t)}}{\sqrt{a^{(t+1)} + (c^{(t)})^{2} + 0.5}}", True),
]


@pytest.mark.parametrize("cell,equation,latex", EQUAL)
def test_correct_derivations_verify_equal(cell, equation, latex):
    v = verify(cell, equation, latex=latex)
    assert v.equal is True, v.report()


WRONG = [
    # (cell, equation, latex, a path the wrong term is on, the expected term)
    ("indrnn", "da[t] = dh[t]*h[t]", False, "h[t]", "dh[t]*step(h[t])"),
    (LN, "dv[t] = dd[t] + dmu[t]", False, "mu[t]", "mean(dmu[t])"),
    (LN, r"\delta v^{(t)} = \delta d^{(t)} + \delta\mathit{mu}^{(t)}", True, "mu[t]",
     "mean(dmu[t])"),
    (LN, "dd[t] = g*dn[t]/s[t] + d[t]*ds[t]/s[t]", False, "s[t]", "d[t]*mean(ds[t])/s[t]"),
    (FN, "da_bar[t] = da[t]*tanh(a_bar[t])", False, "a[t] -> y[t]",
     "dy[t]*sigmoid(a_bar[t])*tanh(c[t])"),
]


@pytest.mark.parametrize("cell,equation,latex,path,expected", WRONG)
def test_wrong_derivations_name_the_wrong_term(cell, equation, latex, path, expected):
    v = verify(cell, equation, latex=latex)
    assert v.equal is False and v.verdict == "differs", v.report()
    hits = [d for d in v.differences if path in d.flow and expected in d.expected]
    assert hits, v.report()
    assert v.counterexample is not None and v.counterexample.max_abs_difference > 1e-3


def test_unknown_operator_and_malformed_brackets_are_one_line_errors():
    from derive.errors import ExpressionError
    for bad, words in [(r"\delta a^{(t)} = \operatorname{relux}(a^{(t)})", "relux"),
                       (r"\delta a^{(t)} = [h^{(t)} > 1]", "[v > 0]")]:
        with pytest.raises(ExpressionError) as info:
            verify("indrnn", bad, latex=True)
        assert words in str(info.value) and "\n" not in str(info.value).strip()
