"""How relu, softplus, sqrt, relu's derivative and the reduction mean print: text (which
`derive verify` reads back) and LaTeX (which `derive verify --latex` reads back)."""

import pytest
from catalog import cell_path

import derive
from derive.cell import symbols as S
from derive.printing import presentation
from derive.printing.code import CythonPrinter, NumpyPrinter
from derive.printing.latex import latex
from derive.printing.text import text


def _both(cell, name):
    e = presentation.structured(derive.derive(cell), name)
    return text(e), latex(e)


def test_relu_derivative_prints_as_the_step_of_the_output():
    assert _both("indrnn", "a") == ("dh[t]*step(h[t])",
                                    r"\delta h^{(t)} \odot \left[h^{(t)} > 0\right]")


def test_softplus_derivative_and_sqrt_print():
    t, tex = _both(cell_path("functions"), "a_bar")
    assert t == ("dy[t]*sigmoid(a_bar[t])*tanh(c[t]) "
                 "+ p*dc[t]*sigmoid(a_bar[t])/(2*sqrt(a[t] + c[t-1]**2 + 1/2))")
    assert tex == (r"\delta y^{(t)} \odot \sigma\left(\bar{a}^{(t)}\right) \odot "
                   r"\tanh\left(c^{(t)}\right) + \frac{p \odot \delta c^{(t)} \odot "
                   r"\sigma\left(\bar{a}^{(t)}\right)}{2 \sqrt{a^{(t)} + "
                   r"\left(c^{(t-1)}\right)^{2} + \frac{1}{2}}}")


def test_mean_prints_as_mean_and_operatorname():
    t, tex = _both(cell_path("layer_norm"), "v")
    assert t == "mean(dmu[t]) + d[t]*mean(ds[t])/s[t] + g*dn[t]/s[t]"
    assert tex == (r"\operatorname{mean}\left(\delta\mathit{mu}^{(t)}\right) + "
                   r"\frac{d^{(t)} \odot \operatorname{mean}\left(\delta s^{(t)}\right)}"
                   r"{s^{(t)}} + \frac{g \odot \delta n^{(t)}}{s^{(t)}}")


@pytest.mark.parametrize("fn,txt,tex", [
    (S.relu, "relu(a[t])", r"\operatorname{relu}\left(a^{(t)}\right)"),
    (S.softplus, "softplus(a[t])", r"\operatorname{softplus}\left(a^{(t)}\right)"),
    (S.sqrt, "sqrt(a[t])", r"\sqrt{a^{(t)}}"),
    (S.step, "step(a[t])", r"\left[a^{(t)} > 0\right]"),
    (S.Mean, "mean(a[t])", r"\operatorname{mean}\left(a^{(t)}\right)"),
])
def test_each_function_prints(fn, txt, tex):
    e = fn(S.value("a"))
    assert (text(e), latex(e)) == (txt, tex)


def test_kernel_printers_write_the_functions():
    import sympy as sp
    v = sp.Symbol("v")
    e = S.relu(v) + S.softplus(v) * S.step(v) + S.sqrt(v)
    c = CythonPrinter({}).doprint(e)
    for code in ("_relu(v)", "_softplus(v)", "_step(v)", "_sqrt(v)"):
        assert code in c, c
    n = NumpyPrinter().doprint(e)
    for code in ("_relu(v)", "np.logaddexp(0, v)", "_step(v)", "np.sqrt(v)"):
        assert code in n, n


@pytest.mark.parametrize("ctype,one,two", [("float", "(<float>1)", "(<float>2)"),
                                            ("double", "1", "2")])
def test_kernel_numbers_are_cast_in_float_code(ctype, one, two):
    """A bare 1 beside a float is the C double 1.0 in Cython's output, which turns the
    whole float32 expression into double arithmetic (conversions and vdivpd)."""
    import sympy as sp
    v = sp.Symbol("v")
    printer = CythonPrinter({}, ctype)
    assert printer.doprint(1 - v) == f"{one} - v"
    assert printer.doprint(1 / v) == f"{one}/(v)"
    assert printer.doprint(2 * v) == f"{two}*v"
