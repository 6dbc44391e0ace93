"""Stage 3b — lowering: from a plan to the functions of a kernel, language-neutral.

The plan says what a step computes; lowering says which generated function receives
which array at which row, once, for both the function's parameter list and its call
site (`StepFunction.params`: a parameter *is* its argument, so the two cannot drift),
and which products run before, inside and after the time loop (`Call`s). A step is a
sequence of `Phase`s: the per-step products and row means (`derive_row_means`, of the
reductions the phase before computed the arguments of) that run right before an
element-wise function, then that function (a single-phase cell: one forward and one backward
phase, the state products before them, the carry products after the backward). The
emitters (`derive.kernel.emit`) only map this to Cython or NumPy syntax.

Offsets are written in the names the generated row loops define: t (the step),
b0 (a thread's first batch row), at = (t·B + b0)·N and nxt = at + B·N (row b0 of steps
t and t+1 of a (T(+1), B, N) array); an array of P-wide rows (a cell's second node
size) is offset by (t·B + b0)·P. A step function runs over the entries of one size: it
is called with N or P as its row width (`StepFunction.size`), and every array it gets
has rows of that size (the plan refuses a phase mixing sizes).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import sympy as sp

from derive.kernel.isa import LEVELS
from derive.kernel.plan import Buffer, Kind, Plan, Program, Ref, Role, Storage


class Step(Enum):
    """Which row of a per-step array a step function gets."""

    CURRENT = "t"          # the step's own row (row t+1 of a state array)
    PREVIOUS = "t-1"       # the previous step's row (row t of a state array)


@dataclass(frozen=True)
class Tile:
    """The register block of the per-step small product for one C type at one
    instruction-set level: `lanes` elements per vector (the level's vector width),
    panels of two vectors of columns, `rows` rows at a time (2·rows accumulators: 16 of
    AVX-512's 32 registers, 8 of the 16 of AVX2 and SSE2; then blocks of 4 rows and
    single rows). `macro` is the compiler's macro for the level ("" for the portable
    one, 128-bit SSE2 vectors). `ahead`: how many rows of k ahead the loop prefetches
    the packed weights (0: no software prefetch)."""

    ctype: str
    suffix: str
    lanes: int
    macro: str
    rows: int = 4
    ahead: int = 0


#: the lanes of one vector register per C type and level (bytes: 16, 32, 64)
LANES = {"portable": {"float": 4, "double": 2}, "avx2": {"float": 8, "double": 4},
         "avx512": {"float": 16, "double": 8}}
#: the rows of one register block per level: 8 where 32 vector registers hold 16
#: accumulators besides the two panel vectors and the broadcast (AVX-512, on an Intel
#: Xeon family 6 model 207: lstm_np fwd+bwd in 0.83-0.98 of the time of 4 rows at S1,
#: S2 and S3, float32 and float64; benchmarks/results.md)
ROWS = {"portable": 4, "avx2": 4, "avx512": 8}
#: the software prefetch distance per level, in rows of k (0: none). AVX-512, same
#: machine: lstm_np fwd+bwd in 0.87-0.99 of the time without it (S2's weights do not fit
#: its L2); at the avx2 level there it changed nothing beyond the noise, so it stays off
AHEAD = {"portable": 0, "avx2": 0, "avx512": 16}
#: the products after the backward loop (dW, dX) are split by rows into parts that the
#: threads claim one at a time (a thread the machine slows down takes fewer): one part per
#: thread, and up to FINISH_PARTS per thread while each keeps FINISH_ROWS rows or more.
#: lstm_np fwd+bwd on the AVX-512 Xeon of benchmarks/results.md, against one static part
#: per thread: 0.92-1.05 of the time in three A/Bs, the noise of a quiet machine; with a
#: busy loop on one of its two cores, 0.89-0.97 in five shapes and dtypes of six. Four
#: parts per thread whatever their rows took 1.07-1.10 at S3 float32 in three A/Bs of
#: four (parts of 64 rows, whose BLAS calls each pack the 3200-row other operand again)
FINISH_PARTS = 4
FINISH_ROWS = 256
#: the tiles of the small product: per C type of a kernel module, one per level, widest
#: first (the source instantiates the first whose macro the compiler defines)
TILES = tuple(tuple(Tile(ct, sx, LANES[lv.name][ct], lv.macro, ROWS[lv.name],
                         AHEAD[lv.name])
                    for lv in reversed(LEVELS))
              for ct, sx in (("float", "f32"), ("double", "f64")))


@dataclass(frozen=True)
class Pointer:
    """Element `offset` of a kernel array (`field`: a Buffer's field, or the packed
    panels P_<operand>), or of a thread's slice of partial sums (`partial`). `optional`:
    the array may be absent (NULL: an input gradient nobody wants), the pointer then
    NULL too (the step skips its writes)."""

    field: str
    offset: str = ""
    partial: bool = False
    optional: bool = False


@dataclass(frozen=True)
class Param:
    """A parameter of a step function and, in the same record, its argument."""

    buffer: Buffer
    step: Step
    written: bool               # the step writes it (accessed in place, not by row)

    @property
    def name(self) -> str:
        return self.buffer.field + ("_prev" if self.step is Step.PREVIOUS else "")

    @property
    def argument(self) -> Pointer:
        return Pointer(self.buffer.field, _offset(self.buffer, self.step),
                       self.buffer.storage is Storage.ACCUMULATOR,
                       self.buffer.storage is Storage.INPUT_GRADIENT)


@dataclass(frozen=True)
class Place:
    """Where a program symbol is read or written: block `block` of `param`'s row."""

    param: Param
    block: int = 0


@dataclass(frozen=True)
class StepFunction:
    """One step's element-wise function: its parameters and where each symbol lives."""

    name: str                   # "forward" | "backward"
    program: Program
    params: tuple[Param, ...]
    reads: dict[sp.Symbol, Place]
    writes: tuple[Place, ...]   # one per program write, in order

    @property
    def size(self) -> str:
        """The row width the function runs over ("N" or "P"): that of its arrays."""
        sizes = {q.buffer.size for q in self.params if q.buffer.storage is not Storage.ACCUMULATOR}
        assert len(sizes) <= 1, f"{self.name} mixes sizes {sizes}"
        return next(iter(sizes), "N")

    @property
    def locals(self) -> list[sp.Symbol]:
        return sorted({s.target for s in self.program.statements}, key=lambda s: s.name)

    @property
    def rows(self) -> list[tuple[sp.Symbol, Place]]:
        """The symbols read through a row pointer (their buffer has a batch axis and the
        step does not write it), by name."""
        return sorted(((s, p) for s, p in self.reads.items()
                       if p.param.buffer.rows and not p.param.written
                       and p.param.buffer.storage is not Storage.MEANS),
                      key=lambda sp_: sp_[0].name)

    @property
    def scalars(self) -> list[tuple[sp.Symbol, Place]]:
        """The row means read (one scalar per batch row), by name."""
        return sorted(((s, p) for s, p in self.reads.items()
                       if p.param.buffer.storage is Storage.MEANS),
                      key=lambda sp_: sp_[0].name)


def _offset(b: Buffer, step: Step) -> str:
    """Row b0 of step t (t+1 for a state's current row) of `b`, as an element offset."""
    width = block_width(b.blocks, b.size)
    if b.storage is Storage.ACCUMULATOR:
        return {0: "", 1: "N"}.get(b.index, f"{b.index} * N")
    if b.storage is Storage.MEANS:
        return "b0"
    if not b.rows:
        return ""
    if not b.per_step:
        return f"b0 * {width}"
    if b.blocks == 1:
        return _row(b.size, b.storage is Storage.STATE and step is Step.CURRENT)
    return f"(t * B + b0) * {width}"


def _row(size: str, following: bool = False) -> str:
    """Row b0 of step t (t+1 if `following`) of a (T(+1), B, size) array."""
    if size == "N":
        return "nxt" if following else "at"
    return f"({'(t + 1)' if following else 't'} * B + b0) * {size}"


def _place(p: Plan, ref: Ref) -> tuple[Buffer, Step, int]:
    """The array, row and block a program symbol reads."""
    kind, name = ref.kind, ref.name
    if kind is Kind.PROJECTION:
        return p.buffer(Storage.PROJECTION, name), Step.CURRENT, ref.block
    if kind is Kind.PREVIOUS:
        return p.buffer(Storage.STATE, name), Step.PREVIOUS, 0
    if kind is Kind.INPUT:
        return p.buffer(Storage.INPUT, name), Step.CURRENT, 0
    if kind is Kind.VECTOR:
        return p.buffer(Storage.VECTOR, name), Step.CURRENT, 0
    if kind is Kind.INCOMING:
        return p.buffer(Storage.INCOMING, name), Step.CURRENT, 0
    if kind is Kind.CARRY:
        return p.buffer(Storage.CARRY, name), Step.CURRENT, 0
    if kind is Kind.ADJOINT:
        return p.buffer(Storage.ADJOINT, name), Step.CURRENT, 0
    if kind is Kind.MEAN:
        return p.buffer(Storage.MEANS, name), Step.CURRENT, 0
    if kind is Kind.VALUE and name in p.states:
        return p.buffer(Storage.STATE, name), Step.CURRENT, 0
    if kind in (Kind.VALUE, Kind.AUX):
        return p.buffer(Storage.STORED, name), Step.CURRENT, 0
    raise AssertionError(f"a step cannot read {ref}")  # pragma: no cover


def step_function(p: Plan, name: str, program: Program) -> StepFunction:
    """The parameters of one step (in calling-convention order) and its places."""
    wanted = {s: _place(p, p.refs[s]) for s in sorted(program.reads, key=lambda s: s.name)}
    written = {(w.buffer, Step.CURRENT) for w in program.writes}
    keys = written | {(b, step) for b, step, _ in wanted.values()}
    order = {b: k for k, b in enumerate(p.buffers)}
    params = {key: Param(key[0], key[1], key in written)
              for key in sorted(keys, key=lambda k: (order[k[0]], k[1].value))}
    reads = {s: Place(params[b, step], block) for s, (b, step, block) in wanted.items()}
    writes = tuple(Place(params[w.buffer, Step.CURRENT], w.block) for w in program.writes)
    return StepFunction(name, program, tuple(params.values()), reads, writes)


@dataclass(frozen=True)
class Call:
    """A call of a support function; `typed`: one version per C type (a suffix)."""

    function: str
    args: tuple                 # text or Pointer, positional
    comment: str = ""
    typed: bool = False


@dataclass(frozen=True)
class Task:
    """A product split by rows between threads: chunk c of nt of `rows` rows. `gradient`
    names what a product after the backward loop computes, for the backward's flags:
    ("dW", k) the weight gradient of operand k, ("dX", k) the gradient of input k."""

    rows: str
    call: Call
    comment: str
    gradient: tuple[str, int] | None = None


#: the arrays each entry point receives (in order) and the ones it writes
ENTRY_ARRAYS = {
    "forward": ((Storage.INPUT, Storage.WEIGHTS, Storage.VECTOR, Storage.STATE,
                 Storage.STORED, Storage.PROJECTION),
                {Storage.STATE, Storage.STORED, Storage.PROJECTION}),
    "backward": ((Storage.INPUT, Storage.WEIGHTS, Storage.VECTOR, Storage.STATE,
                  Storage.STORED, Storage.INCOMING, Storage.DELTAS, Storage.CARRY,
                  Storage.ACCUMULATOR, Storage.WEIGHT_GRADIENT, Storage.INPUT_GRADIENT),
                 {Storage.DELTAS, Storage.CARRY, Storage.ACCUMULATOR,
                  Storage.WEIGHT_GRADIENT, Storage.INPUT_GRADIENT}),
}


@dataclass(frozen=True)
class Phase:
    """One element-wise phase of a step: the per-step products that run right before
    it (forward: the projections it reads; backward: the adjoints Σ Wᵀ δ it reads) and
    the row means it reads that the phase before made, then its function."""

    calls: tuple[Call, ...]
    step: StepFunction
    operands: tuple = ()        # the operand of each product (the first calls)
    reductions: tuple = ()      # the Reduction of each row mean (the calls after them)


@dataclass(frozen=True)
class Kernel:
    """The lowered kernel of a plan: the phases of a step and the products around them.

    forward: the phases in order (phase 0 after the state products; phase p after the
    products of the node operands of phase p-1); backward: in the order they run,
    phase K first (phase p after the adjoint products of the node operands of phase p).
    """

    plan: Plan
    forward: tuple[Phase, ...]
    backward: tuple[Phase, ...]
    prepare: tuple[Task, ...]            # before the forward loop, split by rows
    pack_forward: tuple[Call, ...]       # panels of the per-step weights (forward)
    pack_backward: tuple[Call, ...]
    per_step_backward: tuple[Call, ...]  # after each backward step: carry products
    finish: tuple[Task, ...]             # after the backward loop: dW and dX
    panels_forward: tuple[tuple[str, str, str], ...]    # (field, k, n) of each P
    panels_backward: tuple[tuple[str, str, str], ...]

    @property
    def state_operands(self):
        return [o for o in self.plan.operands if o.role is Role.STATE]

    @property
    def node_operands(self):
        return [o for o in self.plan.operands if o.role is Role.NODE]


def block_width(k: int, rows: str = "N") -> str:
    """The width of a row of k blocks of `rows` entries ("4 * N", "P")."""
    return f"{k} * {rows}" if k > 1 else rows


def _values(p: Plan, o) -> tuple[str, str]:
    """The array holding a state or node operand's values and the row of step t that
    its product reads (a state: its previous value; a node: the step's own)."""
    if o.role is Role.NODE and o.name not in p.states:
        return p.buffer(Storage.STORED, o.name).field, _row(o.size)
    return p.buffer(Storage.STATE, o.name).field, _row(o.size, o.role is Role.NODE)


def _phases(p: Plan) -> tuple[tuple[Phase, ...], ...]:
    """The forward and backward phases: step functions, and the products (the states'
    before phase 0, the node operands' between phases) and row means before each."""
    dG = {g.index: p.buffer(Storage.DELTAS, " ".join(g.nodes)).field for g in p.groups}
    forward, backward = [], []
    for k, program in enumerate(p.forward):
        operands = tuple(o for o in p.operands if o.role is Role.STATE) if k == 0 else \
            tuple(o for o in p.operands if o.role is Role.NODE and o.phase == k - 1)
        calls = tuple(_projection_call(p, o) for o in operands)
        means = tuple(r for r in p.reductions if not r.backward and r.phase == k - 1)
        name = f"forward{k}" if len(p.forward) > 1 else "forward"
        forward.append(Phase(calls + tuple(_mean_call(p, r) for r in means),
                             step_function(p, name, program), operands, means))
    K = len(p.backward) - 1
    for i, program in enumerate(p.backward):
        operands = tuple(o for o in p.operands if o.role is Role.NODE and p.adjoints[o.name] == i)
        means = tuple(r for r in p.reductions if r.backward and r.phase == i - 1)
        calls = tuple(_transposed_call(p, o, dG[o.group]) for o in operands)
        name = f"backward{K - i}" if K else "backward"
        backward.append(Phase(calls + tuple(_mean_call(p, r) for r in means),
                              step_function(p, name, program), operands, means))
    return tuple(forward), tuple(backward)


def _mean_call(p: Plan, r) -> Call:
    """The row means of reduction r for the thread's rows: R[b] = Σⱼ E[b, j] / size."""
    E, R = p.buffer(Storage.REDUCED, r.name).field, p.buffer(Storage.MEANS, r.name).field
    return Call("derive_row_means", ("nb", r.size, Pointer(E, f"b0 * {r.size}"), r.size,
                                     Pointer(R, "b0")),
                f"{r.mean.name} = the row means of E_{r.name}", True)


def _projection_call(p: Plan, o) -> Call:
    """The per-step product of state or node operand o for the thread's rows: G_o
    (B × k·rows) = o · W_oᵀ, o read at t-1 (a state) or at t (a node of the step)."""
    w = block_width(o.k, o.rows)
    G = p.buffer(Storage.PROJECTION, o.name).field
    return Call("derive_small_gemm", (
        "nb", w, o.size, Pointer(*_values(p, o)), o.size, Pointer(f"P_{o.name}"),
        Pointer(G, f"b0 * {w}"), w, "0"),
        f"{' '.join(o.nodes)} += {' '.join(o.matrices)} @ "
        f"{o.name}[{'t' if o.role is Role.NODE else 't-1'}]", True)


def _transposed_call(p: Plan, o, dG: str) -> Call:
    """The transposed per-step product of state or node operand o at step t, Σ Wᵀ δ over
    its blocks = dG[t] · W_o (B × size): a state's into its carry C_o (added to the
    element-wise carry the step wrote, if it writes one), a node's into its adjoint D_o."""
    w = block_width(o.k, o.rows)
    if o.role is Role.NODE:
        into, add = p.buffer(Storage.ADJOINT, o.name).field, False
        what = f"adjoint of {o.name}[t] = Σ Wᵀ δ over"
    else:
        into, add = p.buffer(Storage.CARRY, o.name).field, o.name in p.carried
        what = f"d{o.name}[t-1] {'+' if add else ''}= Σ Rᵀ δ over"
    return Call("derive_small_gemm", (
        "nb", o.size, w, Pointer(dG, f"(t * B + b0) * {w}"), w, Pointer(f"P_{o.name}"),
        Pointer(into, f"b0 * {o.size}"), o.size, "1" if add else "0"),
        f"{what} {' '.join(o.matrices)}: dG{o.group}[t] · W_{o.name}", True)


def lower(p: Plan) -> Kernel:
    """The kernel of a plan: the step functions and every product around them."""
    inputs = [o for o in p.operands if o.role is Role.INPUT]
    states = [o for o in p.operands if o.role is Role.STATE]
    stepped = states + [o for o in p.operands if o.role is Role.NODE]
    G = {o.name: p.buffer(Storage.PROJECTION, o.name).field for o in p.operands}
    W = {o.name: p.buffer(Storage.WEIGHTS, o.name).field for o in p.operands}
    dG = {g.index: p.buffer(Storage.DELTAS, " ".join(g.nodes)).field for g in p.groups}
    prepare = tuple(_input_task(p, x, W[x.name], G[x.name]) for x in inputs)
    pack_fwd = tuple(Call("derive_pack", (o.size, block_width(o.k, o.rows), Pointer(W[o.name]),
                                          "1", o.size, Pointer(f"P_{o.name}"), "c", "nt"),
                          f"W_{o.name}ᵀ ({o.size} × {block_width(o.k, o.rows)}) for G_{o.name} = "
                          f"{o.name}[{'t' if o.role is Role.NODE else 't-1'}] · "
                          f"W_{o.name}ᵀ", True) for o in stepped)
    pack_bwd = tuple(Call("derive_pack", (block_width(o.k, o.rows), o.size, Pointer(W[o.name]),
                                          o.size, "1", Pointer(f"P_{o.name}"), "c", "nt"),
                          f"W_{o.name} ({block_width(o.k, o.rows)} × {o.size}) for the "
                          f"{'adjoint' if o.role is Role.NODE else 'carry'} of {o.name}", True)
                     for o in stepped)
    per_bwd = tuple(_transposed_call(p, o, dG[o.group]) for o in states)
    finish = (tuple(_weight_task(p, k, o, dG[o.group]) for k, o in enumerate(p.operands))
              + tuple(_input_gradient_task(p, x, W[x.name], dG[x.group]) for x in inputs))
    forward, backward = _phases(p)
    return Kernel(p, forward, backward, prepare, pack_fwd, pack_bwd, per_bwd, finish,
                  tuple((f"P_{o.name}", o.size, block_width(o.k, o.rows)) for o in stepped),
                  tuple((f"P_{o.name}", block_width(o.k, o.rows), o.size) for o in stepped))


def stepped_input_gradients(p: Plan) -> frozenset[str]:
    """The inputs whose dX the backward step writes (the element-wise part of δx of an
    input used element-wise): the GEMM after the loop adds to it."""
    return frozenset(w.buffer.name for program in p.backward for w in program.writes
                     if w.buffer.storage is Storage.INPUT_GRADIENT)


def _input_task(p: Plan, x, W: str, G: str) -> Task:
    """The projections of input operand x over all steps: G_x = X_x · W_xᵀ, by rows."""
    w, m, X = block_width(x.k, x.rows), x.size, p.buffer(Storage.INPUT, x.name).field
    return Task("T * B", Call("_gemm", ("False", "True", "r1 - r0", w, m, "1",
                                        Pointer(X, f"r0 * {m}"), m, Pointer(W), m, "0",
                                        Pointer(G, f"r0 * {w}"), w)),
                f"the input projections of all steps: G_{x.name} (T·B × {w}) = {X} · "
                f"W_{x.name}ᵀ")


def _input_gradient_task(p: Plan, x, W: str, dG: str) -> Task:
    """δx = dG · W_x over all steps, by rows (added to the steps' element-wise part of
    δx for an input used element-wise too)."""
    w, m = block_width(x.k, x.rows), x.size
    dX = p.buffer(Storage.INPUT_GRADIENT, x.name)
    adds = x.name in stepped_input_gradients(p)
    return Task("T * B", Call("_gemm", ("False", "False", "r1 - r0", m, w, "1",
                                        Pointer(dG, f"r0 * {w}"), w, Pointer(W), m,
                                        "1" if adds else "0",
                                        Pointer(dX.field, f"r0 * {m}"), m)),
                f"{dX.field} {'+' if adds else ''}= {dG} · W_{x.name}",
                ("dX", dX.index))


def _weight_task(p: Plan, k: int, o, dG: str) -> Task:
    """d[matrices of o] = dGᵀ · o's values over all steps, split by rows (o: operand k)."""
    w = block_width(o.k, o.rows)
    if o.role is Role.INPUT:
        values = Pointer(p.buffer(Storage.INPUT, o.name).field)
    else:   # a state's values at t-1 (rows 0 … T-1), a node's at t (a state's: 1 … T)
        field, _row_t = _values(p, o)
        values = Pointer(field, f"B * {o.size}" if (o.role is Role.NODE
                                                    and o.name in p.states) else "")
    call = Call("_gemm", ("True", "False", "r1 - r0", o.size, "T * B", "1",
                          Pointer(dG, "r0"), w, values, o.size, "0",
                          Pointer(p.buffer(Storage.WEIGHT_GRADIENT, o.name).field,
                                  f"r0 * {o.size}"), o.size))
    at = "[t-1]" if o.role is Role.STATE else ""
    return Task(w, call, f"d[{' '.join(o.matrices)}] = dG{o.group}ᵀ · {o.name}{at}", ("dW", k))
