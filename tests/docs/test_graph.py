"""derive graph: the pictures' drawn edges are the forward graph and the derivation's flows."""

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import derive
from derive.cli import main
from derive.docs.graph import graph, render
from derive.printing.presentation import flow_path

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "generated"


def drawn_ids(svg: bytes) -> list[str]:
    """The ids of the drawn edges (forward `edge:` and flow `flow:`) in an SVG."""
    root = ET.fromstring(svg)
    return sorted(e.get("id") for e in root.iter()
                  if (e.get("id") or "").startswith(("edge:", "flow:")))


def _t(shift: int) -> str:
    return "t" if shift == 0 else f"t{shift:+d}"


def expected_ids(d, delta: str) -> list[str]:
    """Computed from the spec and the derivation, not from the picture's model."""
    cell = d.cell
    ids = []
    for node in cell.nodes.values():
        for p in node.projections:
            ids.append(f"edge:{p.operand}[{_t(p.shift)}]->{node.name}[t]:{p.matrix}")
        for name, shift in {(n, s) for n, s in node.references()
                            if any(str(sym) == f"{n}[{_t(s)}]"
                                   for sym in node.elementwise.free_symbols)}:
            ids.append(f"edge:{name}[{_t(shift)}]->{node.name}[t]")
    ids += [f"edge:{o}[t]->J" for o in cell.outputs]
    for f in d.deltas[delta].flows:
        ids.append(f"flow:{delta}:{flow_path(delta, f, 'text')}")
        if f.shift == 1 and not f.external:   # the next step's consumer reads the state
            matrix = [p.matrix for p in cell.nodes[f.consumer].projections
                      if p.operand == delta and p.shift == -1]
            ids.append(f"edge:{delta}[t]->{f.consumer}[t+1]" + (f":{matrix[0]}" if matrix
                                                                  else ""))
    return sorted(ids)


def test_drawn_edges_are_the_flows_of_every_delta_of_every_shipped_cell(cell_name):
    """The committed pictures (kept current by the generate --check test) against the spec
    and `Derivation.deltas[...].flows`: every flow drawn once, nothing else drawn."""
    d = derive.derive(cell_name)
    for delta in d.deltas:
        svg = (COMMITTED / cell_name / f"flows_{delta}.svg").read_bytes()
        assert drawn_ids(svg) == expected_ids(d, delta), (cell_name, delta)
        flows = [i for i in drawn_ids(svg) if i.startswith("flow:")]
        assert len(flows) == len(d.deltas[delta].flows) > 0


def test_a_fresh_picture_draws_the_flows_of_dc():
    d = derive.derive("lstm")
    svg = render(graph(d, "c"), "svg")
    ids = drawn_ids(svg)
    assert ids == expected_ids(d, "c")
    assert [i for i in ids if i.startswith("flow:")] == sorted([
        "flow:c:c[t] -> y[t]", "flow:c:c[t] -> o_bar[t]", "flow:c:c[t] -> i_bar[t+1]",
        "flow:c:c[t] -> f_bar[t+1]", "flow:c:c[t] -> c[t+1]"])
    # matrix products are drawn apart from element-wise edges
    assert "edge:y[t-1]->z_bar[t]:R_z" in ids and "edge:c[t-1]->f_bar[t]" in ids


def test_a_missing_flow_would_be_caught():
    d = derive.derive("lstm")
    g = graph(d, "c")
    g.flows.pop()
    assert drawn_ids(render(g, "svg")) != expected_ids(d, "c")


def test_the_layout_reads_left_to_right():
    g = graph(derive.derive("lstm"), "c")
    col = {k: n.column for k, n in g.nodes.items()}
    for e in g.edges:
        assert col[e.source] < col[e.target], e
    assert g.nodes[("x", 0)].column == g.nodes[("c", -1)].column == 0
    assert {n.kind for n in g.nodes.values()} == {"input", "previous", "node", "state", "next",
                                                 "loss"}


@pytest.mark.parametrize("fmt, magic", [("svg", b"<?xml"), ("png", b"\x89PNG"),
                                        ("pdf", b"%PDF"), ("dot", b"// ")])
def test_every_format_is_deterministic(fmt, magic, tmp_path):
    out = tmp_path / f"g.{fmt}"
    assert main(["graph", "rnn", "--delta", "y", "--out", str(out)]) == 0
    first = out.read_bytes()
    assert first.startswith(magic)
    code = ("import sys; from derive.cli import main; "
            f"sys.exit(main(['graph', 'rnn', '--delta', 'y', '--format', '{fmt}']))")
    again = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True,
                           env={"PYTHONHASHSEED": "7", "PATH": "/usr/bin:/bin",
                                "PYTHONPATH": str(ROOT)})
    assert again.stdout == first


def test_dot_names_every_flow_and_needs_no_graphviz(capsys):
    assert main(["graph", "lstm", "--delta", "y", "--format", "dot"]) == 0
    out = capsys.readouterr().out
    assert out.count('id="flow:y:') == len(derive.derive("lstm").deltas["y"].flows) == 5
    assert '"J" -> "y[t]"' in out and "R_z.T @ dz_bar[t+1]" in out


@pytest.mark.parametrize("args, message", [
    (["lstm", "--delta", "q"], "no delta of 'q'"),
    (["lstm", "--out", "x.txt"], "--format"),
    (["lstm", "--out", "/nonexistent/folder/x.svg"], "does not exist"),
    (["nope"], "unknown cell"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, capsys):
    assert main(["graph", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_documents_show_each_delta_beside_its_picture():
    for cell in ("lstm", "rnn"):
        md = (COMMITTED / cell / "equations.md").read_text()
        tex = (COMMITTED / cell / "equations.tex").read_text()
        for delta in derive.derive(cell).deltas:
            assert f"](flows_{delta}.svg)" in md
            assert f"\\includegraphics[width=\\linewidth]{{flows_{delta}.pdf}}" in tex
        assert "## State-to-state Jacobian" in md and "State-to-state Jacobian" in tex
