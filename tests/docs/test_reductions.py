"""The documents of a cell with a reduction (mean): its equations print with
\\operatorname{mean}, its graph draws, and its Jacobian is said not derived (in the
documents; `derive jacobian` refuses in one line)."""

import subprocess
import sys
import xml.etree.ElementTree as ET

from catalog import cell_path

import derive
from derive.docs import documents
from derive.docs.graph import graph, render

LN = cell_path("layer_norm")


def test_the_documents_print_the_mean_and_say_the_jacobian_is_not_derived():
    d = derive.derive(LN)
    parts = documents.sections(d, pictures=True)
    tex = documents.latex_document(d, parts)
    assert r"\delta v^{(t)} &= \operatorname{mean}\left(\delta\mathit{mu}^{(t)}\right)" in tex
    assert r"\mathit{mu}^{(t)} &= \operatorname{mean}\left(v^{(t)}\right)" in tex
    md = documents.markdown(d, parts=parts)
    assert "Not derived: node $\\mathit{mu}$ reduces over the hidden units" in md


def test_the_graph_of_a_reduction_draws_its_edges_and_flows():
    svg = render(graph(derive.derive(LN), "v"), "svg")
    ids = {e.get("id") for e in ET.fromstring(svg).iter()}
    assert {"edge:v[t]->mu[t]", "edge:mu[t]->d[t]", "flow:v:v[t] -> mu[t]",
            "flow:v:v[t] -> d[t] -> s[t]"} <= ids, ids


def test_derive_jacobian_refuses_a_reduction_in_one_line():
    run = subprocess.run([sys.executable, "-m", "derive", "jacobian", LN],
                         capture_output=True, text=True)
    assert run.returncode == 2 and run.stdout == "" and "Traceback" not in run.stderr
    (line,) = run.stderr.strip().splitlines()
    assert "node 'mu' reduces over the hidden units (mean)" in line
