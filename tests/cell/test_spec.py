"""Cell specs: the shipped cells load; each validation rule gives exit 2 and one line."""

import subprocess
import sys

import catalog
import pytest
from catalog import cell_text

import derive
from derive.errors import SpecError

GOOD = cell_text("tiny")

# (rule, edit of GOOD, words the message must contain, line it must name)
BAD = [
    ("unknown name", ('y = "tanh(a)"', 'y = "tanh(aa)"'), ["unknown name 'aa'", "did you mean 'a'"], 13),
    ("cycle", ('a = "W @ x + R @ y[t-1] + b"', 'a = "W @ x + R @ y[t-1] + b + y"'), ["cycle"], 12),
    ("state never updated", ('state = ["y"]', 'state = ["y", "c"]'), ["state 'c' is never updated"], 3),
    ("parameter without shape", ('b = ["N"]', 'b = []'), ["parameter 'b' has no shape"], 9),
    ("bad shape", ('b = ["N"]', 'b = ["K"]'), ["shape", "N"], 9),
    ("syntax error", ('y = "tanh(a)"', 'y = "tanh(a"'), ["syntax error", "column"], 13),
    ("name clash", ('a = "W', 'W = "W'), ["name clash", "'W'"], 12),
    ("delta clash", ('y = "tanh(a)"', 'y = "tanh(a)"\nda = "a * 2"\n'), ["name clash", "'da'"], 14),
    ("unused parameter", ('b = ["N"]', 'b = ["N"]\nextra = ["N"]'), ["'extra' is declared but never used"], 10),
    ("matmul inside a function", ('y = "tanh(a)"', 'y = "tanh(R @ a)"'), ["top level"], 13),
    ("shape mismatch", ('W = ["N", "M"]', 'W = ["N", "N"]'), ["W has shape", "x has size M"], 12),
    ("previous step of a non-state", ('y = "tanh(a)"', 'y = "tanh(a[t-1])"'), ["not a state"], 13),
    ("future", ('y = "tanh(a)"', 'y = "tanh(a) + y[t+1]"'), ["future"], 13),
    ("attribute", ('y = "tanh(a)"', 'y = "a.__class__"'), ["attribute"], 13),
    ("unknown function", ('y = "tanh(a)"', 'y = "relux(a)"'), ["unknown function 'relux'"], 13),
    ("import", ('y = "tanh(a)"', 'y = "__import__(\'os\')"'), ["unknown function"], 13),
    ("lambda", ('y = "tanh(a)"', 'y = "(lambda: 1)()"'), ["only plain function names"], 13),
    ("not TOML", ('[nodes]', '[nodes'), ["not valid TOML"], None),
    ("missing section", ('[parameters]', '[params]'), ["unknown key 'params'"], None),
    ("output not a node", ('outputs = ["y"]', 'outputs = ["h"]'), ["output 'h' is not a node"], 4),
    ("unused node", ('y = "tanh(a)"', 'y = "tanh(a)"\nz = "a * a"'), ["'z' is computed but never used"], 14),
    ("state never read", ('R @ y[t-1] + b"\ny = "tanh(a)"', 'b"\ny = "tanh(a) + R @ a"'),
     ["state 'y' is never read as y[t-1]"], 3),
]


def write(tmp_path, text, name="cell.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_good_spec_loads(tmp_path):
    cell = derive.load_cell(write(tmp_path, GOOD))
    assert list(cell.nodes) == ["a", "y"] and cell.states == ("y",)


def test_shipped_cells_all_load(cell_name):
    cell = derive.load_cell(cell_name)
    assert cell.name == cell_name and cell.shipped


@pytest.mark.parametrize("name", catalog.NAMES)
def test_every_cell_of_the_test_catalog_is_a_valid_cell(name):
    """tests/cells/ holds valid cells only (the invalid ones are edits of tiny, in BAD)."""
    cell = derive.load_cell(catalog.cell_path(name))
    assert cell.nodes and cell.outputs


@pytest.mark.parametrize("rule,edit,words,line", BAD, ids=[b[0] for b in BAD])
def test_each_validation_rule_names_file_line_and_problem(tmp_path, rule, edit, words, line):
    old, new = edit
    assert old in GOOD
    path = write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(SpecError) as info:
        derive.load_cell(path)
    message = str(info.value)
    assert message.startswith(str(path)), message
    for w in words:
        assert w in message, message
    if line is not None:
        assert info.value.line == line, message


def test_cli_reports_a_bad_spec_in_one_line_with_exit_2(tmp_path):
    path = write(tmp_path, GOOD.replace('y = "tanh(a)"', 'y = "tanh(aa)"'))
    run = subprocess.run([sys.executable, "-m", "derive", "equations", str(path)],
                         capture_output=True, text=True)
    assert run.returncode == 2
    assert run.stdout == ""
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in run.stderr
    assert f"{path}:13:" in lines[0] and "did you mean 'a'" in lines[0]


def test_unknown_cell_name_suggests_a_shipped_one():
    with pytest.raises(SpecError, match="did you mean 'lstm'"):
        derive.load_cell("lstn")


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(SpecError, match="no such cell file"):
        derive.load_cell(str(tmp_path / "nothing.toml"))


def test_spec_is_never_executed(tmp_path):
    """A spec that tries to run code is rejected, and the code does not run."""
    marker = tmp_path / "pwned"
    evil = GOOD.replace('y = "tanh(a)"',
                        f'y = "__import__(\'os\').system(\'touch {marker}\')"')
    with pytest.raises(SpecError):
        derive.load_cell(write(tmp_path, evil))
    assert not marker.exists()


def test_one_resolver_for_the_spec_and_the_kernel_build(tmp_path):
    """spec.load_cell and kernel.build.spec_source find the same file, in the same order."""
    from derive.kernel import build
    path = write(tmp_path, GOOD)
    for cell in [*derive.shipped_cells(), path]:
        loaded = derive.load_cell(cell)
        assert build.spec_source(cell) == (loaded.name, loaded.source, loaded.shipped)
    for bad in ("lstn", str(tmp_path / "nothing.toml")):
        with pytest.raises(SpecError) as spec_error:
            derive.load_cell(bad)
        with pytest.raises(SpecError) as build_error:
            build.spec_source(bad)
        assert str(build_error.value) == str(spec_error.value)


def test_the_catalog_resolves_without_sympy():
    code = ("import sys; from derive.cell import catalog; from derive.kernel import build; "
            "catalog.resolve('lstm'); build.spec_source('gru'); print('sympy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_spec_order_is_kept_wherever_dependencies_allow(tmp_path):
    import tomllib
    for name in derive.shipped_cells():  # every shipped file is written in a valid order
        cell = derive.load_cell(name)
        assert list(cell.nodes) == list(tomllib.loads(cell.source)["nodes"]), name
    # a node written before what it reads moves just after it, and no further
    edited = GOOD.replace('a = "W @ x + R @ y[t-1] + b"\ny = "tanh(a)"',
                          'y = "tanh(a) + u"\nu = "tanh(a)"\na = "W @ x + R @ y[t-1] + b"')
    assert list(derive.load_cell(write(tmp_path, edited)).nodes) == ["a", "u", "y"]
