"""The typed plan of a kernel: what every symbol of a step program stands for, the arrays
a kernel call passes, and the programs of one forward and one backward step.

Nothing here is a name string to be parsed: a program symbol is `sp.Symbol(identifier)`
(the identifier the generated code uses, unique in the plan) and `Plan.refs` says what
it is, as a `Ref` of a `Kind`; an array of the calling convention is a `Buffer` of a
`Storage`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import Enum

import sympy as sp


class Role(Enum):
    """How an operand enters the step: an input at t, or a state at t-1."""

    INPUT = "input"      # its projections of all T steps: one GEMM before the time loop;
                         # its δ (dG · Wcat) one GEMM after it (added to the element-wise
                         # part of δx that the steps write, for an input used element-wise)
    STATE = "state"      # its projections: one (small) product per step
    NODE = "node"        # a node of the same step: one (small) product per step, between
                         # the phase that computes it and the next (a multi-phase cell)


class Kind(Enum):
    """What a symbol of a step program stands for."""

    PROJECTION = "projection"   # block `block` of operand `name`'s projection result
    PREVIOUS = "previous"       # state `name` at t-1
    INPUT = "input"             # input `name` at t, read element-wise (a highway term)
    VALUE = "value"             # node `name` at t (computed in the forward, read back)
    AUX = "aux"                 # an auxiliary value the forward stores (like tanh(c[t]))
    VECTOR = "vector"           # the vector parameter `name`
    INCOMING = "incoming"       # Δ of output `name` (from the loss)
    CARRY = "carry"             # the step-(t+1) part of δ of state `name`
    DELTA = "delta"             # δ of node `name`: a local of the backward step
    ADJOINT = "adjoint"         # Σ Wᵀ δ over the blocks of node operand `name` (a product
                                # between two backward phases)
    MEAN = "mean"               # the row mean of reduction `name` (one scalar per batch row,
                                # made between two phases)
    TEMP = "temp"               # a local: CSE temporary, new carry, parameter-gradient term


@dataclass(frozen=True)
class Ref:
    """The meaning of one program symbol."""

    kind: Kind
    name: str = ""       # the cell's node, state, operand, parameter or output
    block: int = 0       # PROJECTION: the block inside the operand's projection result


class Storage(Enum):
    """The arrays of a kernel call (the calling convention of generated/<cell>/kernel.pyx).

    value: (argument of forward/backward, its shape in T, B, M, N, k = blocks and size =
    the operand's length; for X and dX the input's size: M, or M_<input> in a cell with
    several inputs of size M, or N (P) for an input used element-wise).
    """

    INPUT = ("X", ("T", "B", "size"))                  # one array per input
    WEIGHTS = ("W", ("k * N", "size"))                 # fused matrices of an operand
    VECTOR = ("V", ("N",))
    STATE = ("S", ("T + 1", "B", "N"))                 # index 0: the initial state
    STORED = ("A", ("T", "B", "N"))                    # node or aux values for the backward
    PROJECTION = ("G", ("T", "B", "k * N"))            # a state operand's: (B, k·N)
    INCOMING = ("dY", ("T", "B", "N"))
    DELTAS = ("dG", ("T", "B", "k * N"))               # deltas of a group's projection nodes
    CARRY = ("C", ("B", "N"))                          # the initial-state gradients at the end
    ACCUMULATOR = ("acc", ("N",))                      # gradients of the vector parameters
    WEIGHT_GRADIENT = ("dW", ("k * N", "size"))
    INPUT_GRADIENT = ("dX", ("T", "B", "size"))
    ADJOINT = ("D", ("B", "N"))                        # scratch of the kernel (not an
                                                       # argument): a node operand's Σ Wᵀ δ
    REDUCED = ("E", ("B", "N"))                        # scratch: the values a reduction
                                                       # averages (one step)
    MEANS = ("R", ("B",))                              # scratch: a reduction's row means

    @property
    def argument(self) -> str:
        return self.value[0]


@dataclass(frozen=True)
class Buffer:
    """One array of a kernel call: `storage`[index], holding `name`'s values.

    blocks: how many blocks a row holds (k of a projection or delta group, else 1);
    size: the width of one block, "N" or "P" (a cell's second node size: the nodes,
    states and deltas of size P live in arrays of P-wide rows; the weights of an
    operand have `size`-row blocks).
    """

    storage: Storage
    name: str
    index: int
    shape: tuple[str, ...]
    blocks: int = 1
    size: str = "N"

    @property
    def field(self) -> str:
        """The identifier of this array in generated code (`S_c`, `dG0`, `X_x`)."""
        if self.storage is Storage.DELTAS:
            return f"dG{self.index}"
        return f"{self.storage.argument}_{self.name}"

    @property
    def rows(self) -> bool:
        """Has a batch axis: read row by row (b = 0 … B-1)."""
        return "B" in self.shape

    @property
    def per_step(self) -> bool:
        return self.shape[0] in ("T", "T + 1")


@dataclass(frozen=True)
class Block:
    """One projection `matrix @ operand` feeding `node`: the k-th N rows of Wcat."""

    node: str
    matrix: str


@dataclass(frozen=True)
class Operand:
    """A vector multiplied by matrices: an input (read at t), a state (read at t-1) or a
    node of the same step."""

    name: str
    role: Role
    size: str                 # "M" | "N" | "P": the length of the vector (an input's
                              # own size name: M_<input> where several have size M)
    blocks: tuple[Block, ...]
    group: int                # index of the dG buffer holding its blocks' deltas
    phase: int = 0            # NODE: the forward phase that computes it (its product runs
                              # after that phase; the backward's Σ Wᵀ δ before it)
    rows: str = "N"           # the size of its blocks' nodes (each block: rows × size)

    @property
    def matrices(self) -> tuple[str, ...]:
        return tuple(b.matrix for b in self.blocks)

    @property
    def nodes(self) -> tuple[str, ...]:
        return tuple(b.node for b in self.blocks)

    @property
    def k(self) -> int:
        return len(self.blocks)


@dataclass(frozen=True)
class Group:
    """A dG buffer (T, B, k·N): the deltas of `nodes`, shared by `operands`."""

    index: int
    nodes: tuple[str, ...]
    operands: tuple[str, ...]


@dataclass(frozen=True)
class Reduction:
    """mean(expr) over the `size` (N or P) entries of each batch row: a row reduction.

    The phase `phase` of its pass computes `value` = expr (inner means already read as
    their symbols) and writes it into the scratch E_<name> (B, size); between that phase
    and the next, the row means go into the scratch R_<name> (B,); later phases read
    `mean`, one scalar per row. name: "f<k>" (forward) or "b<k>" (backward); phase: a
    forward phase, or for the backward the index in Plan.backward (the order they run).
    """

    name: str
    mean: sp.Symbol
    value: sp.Symbol
    expr: sp.Expr
    phase: int
    size: str = "N"

    @property
    def backward(self) -> bool:
        return self.name.startswith("b")


@dataclass(frozen=True)
class Stored:
    """A (T, B, N) array the forward pass writes for the backward pass.

    symbol: what it holds at step t (a node value, or an AUX symbol); expr: for an
    auxiliary value, the forward expression it stands for.
    """

    name: str
    symbol: sp.Symbol
    expr: sp.Expr | None = None

    @property
    def is_aux(self) -> bool:
        return self.expr is not None


@dataclass(frozen=True)
class Statement:
    """`target = expr` in one step's straight-line program (comment: its equation)."""

    target: sp.Symbol
    expr: sp.Expr
    comment: str = ""


@dataclass(frozen=True)
class Write:
    """After the statements: store `value` into `buffer` (block `block` of a row), or
    add it into the buffer when it is an ACCUMULATOR."""

    buffer: Buffer
    value: sp.Symbol
    block: int = 0
    comment: str = ""

    @property
    def accumulates(self) -> bool:
        return self.buffer.storage is Storage.ACCUMULATOR


@dataclass(frozen=True)
class Program:
    """The element-wise work of one phase of a step: statements (dependency order), then
    writes. A step is a sequence of phases (`Plan.forward`, `Plan.backward`), one
    Program each; a single-phase cell has one.
    """

    statements: tuple[Statement, ...]
    writes: tuple[Write, ...]

    @property
    def reads(self) -> frozenset[sp.Symbol]:
        """The symbols the program reads and does not assign."""
        assigned = {s.target for s in self.statements}
        free = set().union(*(s.expr.free_symbols for s in self.statements), set())
        free |= {w.value for w in self.writes}
        return frozenset(free - assigned)


@dataclass(frozen=True)
class Plan:
    """Everything a backend needs to lay out the kernel of one cell.

    buffers: every array of the calling convention, in argument order (and the kernel's
    scratch arrays, Storage.ADJOINT, last); refs: the meaning of every program symbol;
    carried: the states whose carry the backward step writes element-wise (the others
    receive only the recurrent product); equations: the comment of each node, delta,
    carry and vector gradient.

    forward: the phases of one forward step, in order: phase p computes the nodes of
    phase p, after the products of the node operands of phase p-1 (phase 0: after the
    products of the states at t-1). backward: the phases of one backward step in the
    order they run, phase K first (backward[i] is phase K - i): before phase p run
    the products Σ Wᵀ δ of the node operands of phase p.

    A phase boundary is a product of a node of the same step, or a row reduction over
    the hidden units (mean(v) of layer normalisation; `reductions`): the values it
    averages computed by one phase, the (B,) row means made between phases like the
    products, read by the later phases as a scalar per row. The backward has its own
    phases (as many as its products and reductions need, not necessarily the forward's
    count): adjoints[o] is the index in `backward` of the phase that the adjoint
    product of node operand o runs before; a backward reduction (a mean of deltas, the
    adjoint of a forward mean) is made after the phase that computes its argument.
    """

    cell: object
    input: str
    states: tuple[str, ...]
    outputs: tuple[str, ...]
    parameters: dict[str, tuple[str, ...]]      # name -> paper shape
    vectors: tuple[str, ...]                    # element-wise parameters, in order
    operands: tuple[Operand, ...]
    groups: tuple[Group, ...]
    stored: tuple[Stored, ...]
    buffers: tuple[Buffer, ...]
    forward: tuple[Program, ...]
    backward: tuple[Program, ...]
    refs: dict[sp.Symbol, Ref]
    carried: frozenset[str]
    equations: dict[str, str]
    reductions: tuple[Reduction, ...] = ()
    adjoints: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.cell.name

    @property
    def phases(self) -> int:
        """How many element-wise phases one step has (1: a single-phase cell)."""
        return len(self.forward)

    @property
    def inputs(self) -> tuple[str, ...]:
        """The cell's inputs, in order: one array X[k] (and dX[k]) each."""
        return tuple(b.name for b in self.arrays(Storage.INPUT))

    def input_size(self, name: str) -> str:
        """The size of an input: "M" (M_<input> in a cell with several inputs of size
        M: each its own), or "N" / "P" for an input used element-wise."""
        return self.buffer(Storage.INPUT, name).shape[2]

    def reduction(self, mean: sp.Symbol) -> Reduction:
        """The reduction whose row mean is the symbol `mean`."""
        return next(r for r in self.reductions if r.mean == mean)

    def operand(self, name: str) -> Operand:
        return next(o for o in self.operands if o.name == name)

    def buffer(self, storage: Storage, name: str = "") -> Buffer:
        """The array of `storage` holding `name` (the first one if `name` is empty)."""
        return next(b for b in self.buffers if b.storage is storage
                    and (b.name == name or not name))

    def arrays(self, storage: Storage) -> tuple[Buffer, ...]:
        """The arrays of one argument of the calling convention, in order."""
        return tuple(b for b in self.buffers if b.storage is storage)

    def layout(self) -> dict:
        """JSON-able metadata embedded in generated modules (runtime needs no SymPy)."""
        return {
            "cell": self.cell.name,
            "title": self.cell.title,
            "spec_hash": self.cell.hash,
            "input": self.input,
            "inputs": [[x, self.input_size(x)] for x in self.inputs],
            "states": list(self.states),
            "outputs": list(self.outputs),
            "parameters": [[n, list(s)] for n, s in self.parameters.items()],
            "vectors": list(self.vectors),
            "operands": [{"name": o.name, "kind": o.role.value, "size": o.size,
                          "blocks": [[b.node, b.matrix] for b in o.blocks],
                          "group": o.group} for o in self.operands],
            "groups": [{"nodes": list(g.nodes), "operands": list(g.operands)}
                       for g in self.groups],
            "stored": [{"name": s.name, "kind": "aux" if s.is_aux else "node"}
                       for s in self.stored],
            "carry_set": [s in self.carried for s in self.states],
            **({"sizes": self.sizes} if self.sizes else {}),
        }

    @property
    def sizes(self) -> dict[str, str]:
        """The states, outputs and stored values whose rows are not of size N (P)."""
        out = {b.name: b.size for b in self.buffers
               if b.storage in (Storage.STATE, Storage.STORED, Storage.INCOMING)
               and b.size != "N"}
        return dict(sorted(out.items()))
