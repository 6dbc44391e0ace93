"""Stage 1 — spec: parse and validate a cell file into a forward graph.

A cell file is TOML and pure data; nothing in it is executed. One step of the cell:

    name    = "lstm"
    title   = "Vanilla LSTM with peephole connections"
    inputs  = ["x"]          # vectors of size M, one per step
    state   = ["y", "c"]     # nodes carried to the next step, read there as y[t-1]
    outputs = ["y"]          # nodes that receive a gradient Δ from outside

    [parameters]             # shapes in the sizes N (state), M (input) and P (a second
    W_z = ["N", "M"]         # size of nodes, like the projection of an LSTMP)
    p_i = ["N"]

    [nodes]                  # named values of step t, element-wise except for @
    z_bar = "W_z @ x + R_z @ y[t-1] + b_z"
    z     = "tanh(z_bar)"

A node's expression uses the grammar of `derive.cell.grammar`: a bare name is the value at
step t, `c[t-1]` the previous value of a state. Matrix products `A @ v` must be
top-level terms of a node and multiply a single named vector: they are the linear
nodes (GEMMs); everything else is element-wise (functions `sigmoid tanh exp log relu
softplus sqrt`), except the reduction `mean(v)`: the mean of v over the hidden units of
one batch row (the N entries of a vector of size N; never an input's M), broadcast back
to every unit, usable anywhere inside an expression (`v - mean(v)`).

Sizes: an input has size M; a node has the size of the rows of its matrices, of the
vector parameters it uses and of the values it combines element-wise (N unless a
parameter says P: W_hr = ["P", "N"] makes W_hr @ m a vector of size P); an input used
element-wise has the size of the node using it (so W @ x then needs W = ["N", "N"]);
every matrix's columns are the size of the vector it multiplies.
"""

from __future__ import annotations

import graphlib
import hashlib
import heapq
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import sympy as sp

from derive.cell import symbols as S
from derive.cell.catalog import resolve
from derive.cell.grammar import Matrix, parse
from derive.errors import ExpressionError, SpecError, suggest

SIZES = ("N", "M", "P")
#: the sizes a node (the rows of a parameter) may have
NODE_SIZES = ("N", "P")
#: the most nodes (and the most parameters) a cell may have; the derivation's work grows
#: with the square of the number of nodes (a chain of 100 derives in about a second)
MAX_NODES = 100
#: the longest name (of the cell, a node, a parameter): names become file names, folder
#: names and C identifiers
MAX_NAME = 64
_IDENT = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_RESERVED = ({"t", "T", "Delta", "outer"} | set(S.ACTIVATIONS) | set(S.REDUCTIONS)
             | {"dsigmoid", "dtanh", "drelu", "step"})
_TOP_KEYS = {"name", "title", "description", "reference", "inputs", "state", "outputs",
             "parameters", "nodes"}


@dataclass(frozen=True)
class Parameter:
    """A parameter with its paper shape: ("N", "M"), ("N", "N") or ("N",) (or with P)."""

    name: str
    shape: tuple[str, ...]

    @property
    def is_matrix(self) -> bool:
        return len(self.shape) == 2


@dataclass(frozen=True)
class Projection:
    """One linear term `matrix @ operand[t+shift]` of a node (a GEMM)."""

    matrix: str
    operand: str
    shift: int  # 0 (an input or a node of this step) or -1 (a state of the last step)


@dataclass(frozen=True)
class Node:
    """A named value of one step: Σ projections + an element-wise expression."""

    name: str
    text: str
    line: int
    projections: tuple[Projection, ...]
    elementwise: sp.Expr

    @property
    def expr(self) -> sp.Expr:
        """The whole right-hand side, with matrix products as `MatVec`."""
        return self.elementwise + sp.Add(*[
            S.MatVec(S.param(p.matrix), S.value(p.operand, p.shift)) for p in self.projections])

    def references(self) -> set[tuple[str, int]]:
        """(name, shift) of every value this node reads."""
        out = {(p.operand, p.shift) for p in self.projections}
        for sym in self.elementwise.free_symbols:
            r = S.ref(sym)
            if r is not None and r.kind == "value":
                out.add((r.name, r.shift))
        return out

    def parameters(self) -> set[str]:
        out = {p.matrix for p in self.projections}
        for sym in self.elementwise.free_symbols:
            r = S.ref(sym)
            if r is not None and r.kind == "param":
                out.add(r.name)
        return out


@dataclass
class Cell:
    """A validated forward graph of one step of a recurrent cell."""

    name: str
    title: str
    description: str
    reference: str
    path: str
    source: str
    inputs: tuple[str, ...]
    states: tuple[str, ...]
    outputs: tuple[str, ...]
    parameters: dict[str, Parameter]
    nodes: dict[str, Node]  # step t in the spec's order, moved only where a node reads a later one
    shipped: bool = False
    _sizes: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def hash(self) -> str:
        """sha256 of the spec file's bytes (first 12 hex digits)."""
        return hashlib.sha256(self.source.encode()).hexdigest()[:12]

    @property
    def display_path(self) -> str:
        """Where the spec lives, as written in generated headers (stable across machines)."""
        return f"derive/cells/{self.name}.toml" if self.shipped else self.path

    def size(self, vector: str) -> str:
        """'M' for an input (the size of the nodes that use it element-wise, if any: a
        highway term (1 - r) * x needs M = N), a node's size ('N', or 'P' where its
        parameters say so)."""
        return self._sizes.get(vector, "M" if vector in self.inputs else "N")

    def consumers(self, name: str) -> list[tuple[str, int]]:
        """(node, shift) pairs for every node that reads `name` (shift -1: read at t+1)."""
        return [(n.name, shift) for n in self.nodes.values()
                for (ref, shift) in sorted(n.references(), key=lambda r: -r[1]) if ref == name]


# --- loading -----------------------------------------------------------------------

def load_cell(cell: "str | Path | Cell") -> Cell:
    """Load and validate a cell: a shipped name (`"lstm"`) or a path to a spec file."""
    if isinstance(cell, Cell):
        return cell
    source = resolve(str(cell))
    result = parse_spec(source.text, source.path)
    result.shipped = source.shipped
    return result


def parse_spec(text: str, path: str = "<spec>") -> Cell:
    """Validate the text of a cell file; raise SpecError naming the line and the fix."""
    return _SpecReader(text, path).read()


class _SpecReader:
    def __init__(self, text: str, path: str):
        self.text, self.path = text, path
        self.lines = text.splitlines()

    def error(self, message: str, line: int | None = None):
        raise SpecError(message, path=self.path, line=line)

    def line_of(self, key: str, section: str | None = None) -> int | None:
        """Line number of `key = ...` (inside [section] when given)."""
        current = None
        for number, raw in enumerate(self.lines, 1):
            stripped = raw.strip()
            m = re.match(r"^\[\s*([A-Za-z0-9_.]+)\s*\]", stripped)
            if m:
                current = m.group(1)
                continue
            if current == section and re.match(rf"^\"?{re.escape(key)}\"?\s*=", stripped):
                return number
        return None

    # ---------------------------------------------------------------------------
    def read(self) -> Cell:
        try:
            data = tomllib.loads(self.text)
        except tomllib.TOMLDecodeError as exc:
            m = re.search(r"at line (\d+)", str(exc))
            self.error(f"not valid TOML: {exc}", int(m.group(1)) if m else None)
        for key in data:
            if key not in _TOP_KEYS:
                self.error(f"unknown key {key!r}{suggest(key, _TOP_KEYS)}; a cell file has "
                           f"{', '.join(sorted(_TOP_KEYS))}", self.line_of(key))
        for key in ("name", "inputs", "state", "outputs", "parameters", "nodes"):
            if key not in data:
                self.error(f"missing {key!r}: every cell file needs name, inputs, state, "
                           f"outputs, [parameters] and [nodes]")
        name = data["name"]
        if not isinstance(name, str) or not _IDENT.match(name):
            self.error("name must be an identifier like \"my_cell\"", self.line_of("name"))
        self.check_length(name, "the cell's name", self.line_of("name"))
        inputs = self.names_list(data, "inputs")
        states = self.names_list(data, "state")
        outputs = self.names_list(data, "outputs")
        params = self.read_parameters(data["parameters"])
        if not isinstance(data["nodes"], dict) or not data["nodes"]:
            self.error("[nodes] must map each node name to its expression, like "
                       "z = \"tanh(z_bar)\"", self.line_of("nodes"))
        node_names = list(data["nodes"])
        for key, table in (("nodes", data["nodes"]), ("parameters", params)):
            if len(table) > MAX_NODES:
                self.error(f"{len(table)} {key}: a cell has at most {MAX_NODES} {key} "
                           f"(the limit)", self.line_of(key))
        self.check_names(inputs, params, node_names)
        for s in states:
            if s not in data["nodes"]:
                self.error(f"state {s!r} is never updated: add a node named {s} under [nodes] "
                           f"(its value at step t is carried to step t+1)", self.line_of("state"))
        for o in outputs:
            if o not in data["nodes"]:
                self.error(f"output {o!r} is not a node: add it under [nodes] or remove it from "
                           f"outputs", self.line_of("outputs"))
        nodes = {n: self.read_node(n, data["nodes"][n], inputs, states, params, node_names)
                 for n in node_names}
        order = self.topological(nodes, inputs)
        cell = Cell(name=name, title=str(data.get("title", name)),
                    description=str(data.get("description", "")).strip(),
                    reference=str(data.get("reference", "")).strip(), path=self.path,
                    source=self.text, inputs=tuple(inputs), states=tuple(states),
                    outputs=tuple(outputs), parameters=params,
                    nodes={n: nodes[n] for n in order})
        self.check_usage(cell)
        self.check_sizes(cell)
        return cell

    def check_length(self, name: str, what: str, line: int | None):
        if len(name) > MAX_NAME:
            self.error(f"{what} {name[:20]!r}... is {len(name)} characters long; the limit "
                       f"is {MAX_NAME}", line)

    def names_list(self, data, key) -> list[str]:
        value = data[key]
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.error(f"{key} must be a list of names, like {key} = [\"x\"]", self.line_of(key))
        if len(value) > MAX_NODES:
            self.error(f"{key} lists {len(value)} names; the limit is {MAX_NODES}",
                       self.line_of(key))
        if key in ("inputs", "outputs") and not value:
            self.error(f"{key} must name at least one vector", self.line_of(key))
        for v in value:
            if not _IDENT.match(v):
                self.error(f"{v!r} in {key} is not a valid name (letters, digits, _)",
                           self.line_of(key))
            self.check_length(v, f"a name in {key}", self.line_of(key))
        if len(set(value)) != len(value):
            self.error(f"{key} lists a name twice", self.line_of(key))
        return value

    def read_parameters(self, table) -> dict[str, Parameter]:
        if not isinstance(table, dict):
            self.error("[parameters] must be a table of name = shape", self.line_of("parameters"))
        params = {}
        for name, shape in table.items():
            line = self.line_of(name, "parameters")
            if isinstance(shape, dict) or shape in ("", [], None):
                self.error(f"parameter {name!r} has no shape: write {name} = [\"N\", \"M\"] "
                           f"(matrix), [\"N\", \"N\"] or [\"N\"] (vector)", line)
            if isinstance(shape, str):
                shape = [shape]
            if (not isinstance(shape, list) or not 1 <= len(shape) <= 2
                    or any(s not in SIZES for s in shape)):
                self.error(f"parameter {name!r} has shape {shape!r}; a shape is [\"N\", \"M\"], "
                           f"[\"N\", \"N\"] or [\"N\"] (N: state size, M: input size, P: a "
                           f"second node size)", line)
            if shape[0] not in NODE_SIZES:
                self.error(f"parameter {name!r}: the first dimension must be N (or P), the "
                           f"size of the node it feeds (the shape of W in W x, as in the "
                           f"paper)", line)
            if not _IDENT.match(name) or name in _RESERVED:
                self.error(f"{name!r} is not a usable parameter name", line)
            params[name] = Parameter(name, tuple(shape))
        return params

    def check_names(self, inputs, params, node_names):
        seen: dict[str, str] = {}
        for kind, names in (("input", inputs), ("parameter", list(params)), ("node", node_names)):
            for n in names:
                section = {"parameter": "parameters", "node": "nodes"}.get(kind)
                line = self.line_of(n, section) if section else self.line_of("inputs")
                if n in _RESERVED:
                    self.error(f"{n!r} is a reserved word of the grammar; rename the {kind}",
                               line)
                if not _IDENT.match(n):
                    self.error(f"{n!r} is not a valid {kind} name (letters, digits, _)", line)
                self.check_length(n, f"{kind} name", line)
                if n in seen:
                    self.error(f"name clash: {n!r} is both {seen[n]} and {kind}; rename one",
                               line)
                seen[n] = kind
        for n in seen:  # `dname` is the delta of name in hand derivations
            if n.startswith("d") and n[1:] in seen and seen[n] != "parameter":
                self.error(f"name clash: {n!r} reads as the delta of {n[1:]!r} in equations; "
                           f"rename it", self.line_of(n, "nodes"))

    def read_node(self, name, text, inputs, states, params, node_names) -> Node:
        line = self.line_of(name, "nodes")
        if not isinstance(text, str):
            self.error(f"node {name!r} must be an expression in quotes, like "
                       f"{name} = \"tanh(z_bar)\"", line)
        scope = _SpecScope(name, inputs, states, params, node_names)
        try:
            expr = parse(text, scope)
        except ExpressionError as exc:
            self.error(f"node {name}: {exc}", line)
        projections, rest = [], []
        for term in sp.Add.make_args(expr):
            if isinstance(term, S.MatVec):
                matrix, operand = term.args
                r = S.ref(operand)
                if r is None or r.kind != "value":
                    self.error(f"node {name}: the right side of {matrix} @ must be a single named "
                               f"vector; name the expression as a node of its own", line)
                projections.append(Projection(matrix.name, r.name, r.shift))
            elif term.has(S.MatVec, S.MatTVec):
                self.error(f"node {name}: matrix products must be added at the top level of a "
                           f"node (like W_z @ x + R_z @ y[t-1] + b_z); make the projection a node "
                           f"of its own to use it inside a function or product", line)
            else:
                rest.append(term)
        for m in sp.Add(*rest).atoms(S.Mean):
            for sym in m.free_symbols:
                r = S.ref(sym)
                if r is not None and r.kind == "value" and r.name in inputs:
                    self.error(f"node {name}: mean() averages over the hidden units (size "
                               f"N), but {r.name} is an input (size M)", line)
        return Node(name, text, line or 0, tuple(projections), sp.Add(*rest))

    def topological(self, nodes: dict[str, Node], inputs) -> list[str]:
        graph = {n: sorted(ref for ref, shift in node.references()
                           if shift == 0 and ref in nodes) for n, node in nodes.items()}
        sorter = graphlib.TopologicalSorter(graph)
        try:
            sorter.prepare()
        except graphlib.CycleError as exc:
            cycle = exc.args[1]
            self.error(f"cycle in step t: {' <- '.join(cycle)}; one of these must read the "
                       f"previous step (as {cycle[0]}[t-1], if it is a state)",
                       self.line_of(cycle[0], "nodes"))
        # the spec's order wherever the dependencies allow: always the earliest node of
        # the file whose inputs are computed (a file already in order stays as it is)
        names = list(nodes)
        position = {n: i for i, n in enumerate(names)}
        ready: list[int] = []
        order = []
        while sorter.is_active():
            for n in sorter.get_ready():
                heapq.heappush(ready, position[n])
            n = names[heapq.heappop(ready)]
            order.append(n)
            sorter.done(n)
        return order

    def check_usage(self, cell: Cell):
        used_params = set().union(*(n.parameters() for n in cell.nodes.values()))
        for p in cell.parameters:
            if p not in used_params:
                self.error(f"parameter {p!r} is declared but never used; remove it or use it in a "
                           f"node", self.line_of(p, "parameters"))
        read = set().union(*({r for r, _ in n.references()} for n in cell.nodes.values()))
        for x in cell.inputs:
            if x not in read:
                self.error(f"input {x!r} is never used by any node", self.line_of("inputs"))
        for n in cell.nodes:
            if n not in read and n not in cell.outputs and n not in cell.states:
                self.error(f"node {n!r} is computed but never used; use it, list it in outputs, "
                           f"or remove it", self.line_of(n, "nodes"))
        for s in cell.states:
            if (s, -1) not in set().union(*(n.references() for n in cell.nodes.values())):
                self.error(f"state {s!r} is never read as {s}[t-1]; remove it from state or use "
                           f"it", self.line_of("state"))


    def check_sizes(self, cell: Cell):
        """Infer every node's size (see the module docstring) into cell._sizes; a node
        that mixes two sizes, or a matrix whose columns do not fit its vector, is an
        error naming the node."""
        sizes: dict[str, str] = {}      # of nodes; inputs below

        def fits(node: Node) -> set[str]:
            out = {cell.parameters[p.matrix].shape[0] for p in node.projections}
            for sym in node.elementwise.free_symbols:
                r = S.ref(sym)
                if r is not None and r.kind == "param":
                    out.add(cell.parameters[r.name].shape[0])
                elif r is not None and r.kind == "value" and r.name in sizes:
                    out.add(sizes[r.name])
            return out

        changed = True
        while changed:
            changed = False
            for node in cell.nodes.values():
                known = fits(node) | ({sizes[node.name]} if node.name in sizes else set())
                if len(known) > 1:
                    self.error(f"node {node.name}: combines vectors of sizes "
                               f"{' and '.join(sorted(known))}; a node has one size",
                               node.line or None)
                if known and node.name not in sizes:
                    sizes[node.name], changed = known.pop(), True
                if node.name in sizes:
                    for sym in node.elementwise.free_symbols:
                        r = S.ref(sym)
                        if (r is not None and r.kind == "value" and r.name not in sizes
                                and r.name in cell.nodes):
                            sizes[r.name], changed = sizes[node.name], True
        cell._sizes = {n: sizes.get(n, "N") for n in cell.nodes}
        for node in cell.nodes.values():    # an input used element-wise: the node's size
            for sym in node.elementwise.free_symbols:
                r = S.ref(sym)
                if r is None or r.kind != "value" or r.name not in cell.inputs:
                    continue
                size = cell._sizes[node.name]
                if cell._sizes.setdefault(r.name, size) != size:
                    self.error(f"node {node.name}: uses input {r.name} element-wise with "
                               f"vectors of size {size}, another node with size "
                               f"{cell._sizes[r.name]}", node.line or None)
        for node in cell.nodes.values():
            for p in node.projections:
                shape, need = cell.parameters[p.matrix].shape, cell.size(p.operand)
                if shape[1] != need:
                    self.error(f"node {node.name}: {p.matrix} has shape {list(shape)} but "
                               f"{p.operand} has size {need}; declare {p.matrix} = "
                               f"[\"{shape[0]}\", \"{need}\"]", node.line or None)


class _SpecScope:
    """Name resolution inside a spec: bare names are step t, states may be [t-1]."""

    def __init__(self, node, inputs, states, params: dict[str, Parameter], node_names):
        self.node, self.inputs, self.states = node, inputs, states
        self.params, self.node_names = params, node_names

    def functions(self):
        return {**S.ACTIVATIONS, **S.REDUCTIONS}

    def name(self, name: str, shift: int | None, column: int):
        known = set(self.inputs) | set(self.params) | set(self.node_names)
        if name in self.params:
            if shift is not None:
                raise ExpressionError(f"parameter {name} has no time index", column=column)
            p = self.params[name]
            return Matrix(S.param(name)) if p.is_matrix else S.param(name)
        if name not in known:
            raise ExpressionError(f"unknown name {name!r}{suggest(name, known)}", column=column)
        shift = 0 if shift is None else shift
        if name in self.inputs and shift != 0:
            raise ExpressionError(f"input {name} is only available at step t", column=column)
        if shift > 0:
            raise ExpressionError(f"{name}[t+{shift}] reads the future; a step can read only "
                                  f"step t and states at t-1", column=column)
        if shift < -1:
            raise ExpressionError(f"{name}[t{shift}]: only the previous step (t-1) is carried",
                                  column=column)
        if shift == -1 and name not in self.states:
            raise ExpressionError(f"{name}[t-1] reads the previous step, but {name!r} is not a "
                                  f"state; add it to state = [...]", column=column)
        if shift == 0 and name == self.node:
            raise ExpressionError(f"node {name} refers to itself at step t (a cycle); "
                                  f"use {name}[t-1] if it is a state", column=column)
        return S.value(name, shift)
