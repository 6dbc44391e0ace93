"""A float32 kernel computes in float32: the C that Cython writes for its loop bodies and
its element-wise helpers holds no double constant (Cython writes a bare 1 beside a float
as 1.0, a C double, and C then evaluates the expression in double precision: conversions
and double divisions in every float32 sigmoid and derivative)."""

import re

import pytest

from derive.cell.spec import load_cell
from derive.derivation import derive
from derive.kernel import build
from derive.kernel.emit import kernel_source

#: a C floating literal not cast to float: 1.0, 0.5, 2., 1e-3 (not inside identifiers)
DOUBLE = re.compile(r"(?<![\w.])(?<!\(float\))\d+(\.\d*([eE][-+]?\d+)?|[eE][-+]?\d+)(?![\w.])")


def _functions(c_source: str, pattern: str) -> dict[str, str]:
    """The bodies of the C functions whose names match `pattern`, by name."""
    out = {}
    for m in re.finditer(r"^static [^\n;]*?\b(\w*" + pattern + r"\w*)\([^;{]*\)\s*{", c_source,
                         re.M):
        end = c_source.index("\n}\n", m.end())
        out[m.group(1)] = c_source[m.end():end]
    return out


def _c_source(cell, folder) -> str:
    """The C that Cython writes for the cell's kernel source (as the build runs it)."""
    return build.cythonize(kernel_source(derive(load_cell(cell))), cell, folder).read_text()


@pytest.mark.parametrize("cell", ["lstm_np", "gru", "indrnn", "lstm_ln"])
def test_float32_loop_bodies_hold_no_double_constant(cell, tmp_path):
    c = _c_source(cell, tmp_path)
    bodies = {**_functions(c, r"_(forward|backward)\d*_step_f32"),
              **_functions(c, r"__pyx_fuse_0__pyx_f_\w+?__(sigmoid|relu|step|softplus)")}
    assert any("forward" in name and "_step_f32" in name for name in bodies)
    assert any("sigmoid" in name or "relu" in name for name in bodies)
    code = {name: re.sub(r"/\*.*?\*/", "", body, flags=re.S) for name, body in bodies.items()}
    found = {name: m.group(0) for name, body in code.items() if (m := DOUBLE.search(body))}
    assert not found, found


def test_the_pattern_finds_a_double_constant():
    assert DOUBLE.search("x = (1.0 - y) * z;")
    assert DOUBLE.search("x = 0.5 * y;")
    assert not DOUBLE.search("x = ((float)1) - y_1 + a[2];")
    assert not DOUBLE.search("x = ((float)0.5) * y;")
