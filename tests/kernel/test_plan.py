"""The kernel plan (stage 3) and the sources printed from it: no compiling here."""

import re

import pytest
import sympy as sp
from catalog import cell_path

import derive
from derive.errors import UserError
from derive.kernel import build
from derive.kernel import emit as codegen
from derive.kernel import plan as rewrite


def test_lstm_plan_fuses_the_four_gates_of_x_and_y_into_one_group():
    p = rewrite.plan("lstm")
    assert [o.name for o in p.operands] == ["x", "y"]
    x, y = p.operands
    assert [b.node for b in x.blocks] == ["z_bar", "i_bar", "f_bar", "o_bar"]
    assert x.matrices == ("W_z", "W_i", "W_f", "W_o")
    assert y.matrices == ("R_z", "R_i", "R_f", "R_o")
    assert x.group == y.group == 0 and len(p.groups) == 1
    # c is carried element-wise only (peepholes); y only through the recurrent GEMM
    assert p.carried == {"c"}
    # the backward reads tanh(c[t]) from storage; it is computed once in the forward
    stored = {s.name: s.is_aux for s in p.stored}
    assert stored == {"z": False, "i": False, "f": False, "o": False, "tanh_c": True}
    c = next(s for s, r in p.refs.items() if r == rewrite.Ref(rewrite.Kind.VALUE, "c"))
    assert p.phases == 1
    tanh_calls = [s for s in p.forward[0].statements if s.expr.has(sp.tanh)
                  and any(isinstance(a, sp.tanh) and a.args[0] == c
                          for a in s.expr.atoms(sp.tanh))]
    assert len(tanh_calls) == 1
    assert not any(s.expr.atoms(*rewrite.FUNCTIONS) for s in p.backward[0].statements)


def test_gru_has_two_groups_and_fgr_fuses_the_gate_states():
    g = rewrite.plan("gru")
    assert [(o.name, [b.node for b in o.blocks]) for o in g.operands] == [
        ("x", ["r_bar", "u_bar", "h_bar"]), ("y", ["r_bar", "u_bar", "q"])]
    assert len(g.groups) == 2
    f = rewrite.plan("lstm_fgr")
    groups = {o.name: o.group for o in f.operands}
    assert groups["x"] == groups["y"] != groups["i"] == groups["f"] == groups["o"]


def test_every_shipped_cell_plans_and_writes_every_projection_delta(cell_name):
    p = rewrite.plan(cell_name)
    writes = [w for prog in p.backward for w in prog.writes]
    for g in p.groups:
        written = [w for w in writes if w.buffer.storage is rewrite.Storage.DELTAS
                   and w.buffer.index == g.index]
        assert sorted(w.block for w in written) == list(range(len(g.nodes)))
    assert {w.buffer.name for w in writes if w.accumulates} == set(p.vectors)
    # every program symbol has a typed meaning
    for prog in p.forward + p.backward:
        assert all(isinstance(p.refs[s].kind, rewrite.Kind) for s in prog.reads)
    layout = p.layout()
    assert layout["cell"] == cell_name and layout["spec_hash"] == p.cell.hash


def test_sources_are_deterministic_and_print_products_not_pow(cell_name):
    d = derive.derive(cell_name)
    first, second = codegen.sources(d), codegen.sources(derive.derive(cell_name))
    assert first == second and set(first) == {"kernel.pyx", "reference.py"}
    code = [line for line in first["kernel.pyx"].split("# --- one step")[1].splitlines()
            if not line.lstrip().startswith("#")]
    assert not any("_pow(" in line for line in code)
    code = [line for line in first["reference.py"].split("def forward")[1].splitlines()
            if not line.lstrip().startswith("#")]
    assert not any("**" in line for line in code)
    # comments name the equation each block computes
    assert "# d" in first["kernel.pyx"] and "# d" in first["reference.py"]


def test_float32_kernel_casts_numbers_to_float():
    src = codegen.kernel_source(cell_path("weird"))
    f32 = src.split("cdef void _forward_step_f32")[1].split("cdef void _forward_step_f64")[0]
    f64 = src.split("cdef void _forward_step_f64")[1].split("cdef void _backward_step_f64")[0]
    assert "<float>0.5" in f32 and "<double>" not in f32
    assert "<double>0.5" in f64 and "<float>" not in f64


def test_expand_powers_keeps_products():
    x = sp.Symbol("x")
    e = rewrite.expand_powers(1 - x ** 2 + x ** -3)
    assert "**" not in sp.sstr(e).replace("**(-1)", "").replace("**-1", "")
    assert sp.simplify(e - (1 - x ** 2 + x ** -3)) == 0


def test_weird_names_plan_and_reference_gradients():
    path = cell_path("weird")
    p = rewrite.plan(path)
    idents = {s.name for s in p.refs}
    assert "del" not in idents and "do" not in idents
    assert {"del_", "do_"} <= idents
    from derive.check import gradient_check
    report = gradient_check(path, backend="numpy")
    assert report.passed, report.table()
    assert {r.name for r in report.rows} >= {"u", "el0", "h0", "Q", "p"}


@pytest.mark.parametrize("name", ["input_elementwise", "two_inputs"])
def test_cells_with_several_inputs_or_an_element_wise_input_get_a_kernel(name):
    path = cell_path(name)          # refused with "kernels take one input" before
    p = rewrite.plan(path)
    assert p.inputs == derive.load_cell(path).inputs
    assert "def backward(" in codegen.reference_source(path)


@pytest.mark.parametrize("name", ["weird", "leaky", "shared"])
def test_unusual_cells_cythonize_and_their_reference_is_right(tmp_path, name):
    path = cell_path(name)
    assert build.cythonize(codegen.kernel_source(path), "k", tmp_path).stat().st_size > 0
    from derive.check import gradient_check
    assert gradient_check(path, backend="numpy").passed


def test_kernel_calls_pass_every_step_argument_by_the_name_of_its_parameter():
    src = codegen.kernel_source("lstm")
    for step in ("_forward_step_f32", "_backward_step_f64"):
        signature = src.split(f"cdef void {step}(")[1].split(") noexcept")[0]
        params = re.findall(r"_rp (\w+),", signature)
        call = src.split(f"        {step}(nb, N,")[1].split("\n        )")[0]
        arguments = re.findall(r"(\w+)=", call)
        assert params and arguments == params
    assert "+ 0 * N" not in src and "void* W0" not in src


def test_forward_terms_follow_the_spec():
    src = codegen.kernel_source("lstm")
    assert "i_bar = W_i_x[_j] + R_i_y[_j] + _V_p_i[_j]*c_prev[_j] + _V_b_i[_j]" in src


def test_derive_plan_prints_operands_buffers_and_both_programs(capsys):
    from derive.cli.main import main
    assert main(["plan", "lstm"]) == 0
    out = capsys.readouterr().out
    assert "y (state, N): R_z→z_bar, R_i→i_bar, R_f→f_bar, R_o→o_bar; group 0" in out
    assert "G[1]     G_y            (B, 4 * N)" in out
    forward = out.split("forward step:")[1].split("backward step:")[0]
    backward = out.split("backward step:")[1]
    assert "tanh_c = tanh(c)" in forward and "-> A_tanh_c = tanh_c" in forward
    assert "_e0 = " in backward and "-> acc_b_z += dz_bar" in backward
    assert main(["plan", "no_such_cell"]) == 2
