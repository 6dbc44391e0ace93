"""A derivation displays itself in Jupyter: LaTeX, Markdown and an SVG picture."""

import xml.etree.ElementTree as ET

import derive


def test_latex_repr_aligns_the_backward_equations():
    text = derive.derive("lstm")._repr_latex_()
    assert text.startswith("$$\\begin{aligned}") and text.endswith("\\end{aligned}$$")
    assert "\\delta c^{(t)} &= " in text and "\\delta W_{z}^{(t)} &= " in text
    rows = text.count(" \\\\\n") + 1
    d = derive.derive("lstm")
    assert rows == len(d.deltas) + len(d.params) + len(d.cell.states)


def test_markdown_repr_is_the_document():
    text = derive.derive("rnn")._repr_markdown_()
    assert "## Backward pass, structured" in text and "$$" in text


def test_svg_repr_is_the_forward_graph_and_a_delta_picture_has_its_flows():
    d = derive.derive("gru")
    root = ET.fromstring(d._repr_svg_())
    ids = [e.get("id") or "" for e in root.iter()]
    assert any(i.startswith("edge:") for i in ids) and not any(i.startswith("flow:") for i in ids)
    picture = d.graph("y")
    flows = [i for i in (e.get("id") or "" for e in ET.fromstring(picture._repr_svg_()).iter())
             if i.startswith("flow:")]
    assert len(flows) == len(d.deltas["y"].flows)
    assert picture._repr_png_().startswith(b"\x89PNG")


def test_drawing_leaves_the_callers_matplotlib_settings_alone():
    import matplotlib
    before = (matplotlib.get_backend(), dict(matplotlib.rcParams))
    derive.derive("rnn")._repr_svg_()
    assert (matplotlib.get_backend(), dict(matplotlib.rcParams)) == before
