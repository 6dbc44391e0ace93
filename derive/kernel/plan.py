"""Stage 3 — rewrite: from a Derivation, the kernel *plan* both backends are printed from.

Every decision about what a kernel computes, stores and fuses lives here; the printers
(`derive.kernel.emit`) and the templates only lay the plan out.

The plan of a cell:

* **operands** — every vector that a matrix multiplies (the input x, read at step t;
  states, read at t-1), each with its ordered *blocks* (projection node, matrix). The
  matrices of an operand are fused into one weight Wcat (k·N × size), so the forward
  does one GEMM per operand: all T steps at once for the input, one per step for a state.
* **groups** — operands whose blocks feed the same nodes in the same order share one
  buffer dG (T, B, k·N) of those nodes' deltas (x and y in the LSTM). After the time
  loop, dWcat = dGᵀ · operand values and δx = dG · Wcat are single large GEMMs.
* **forward program** — the element-wise work of one step, after the projections:
  straight-line assignments CSE'd across all nodes, reading the projection results,
  the previous states and the vector parameters, and writing the new states, the node
  values the backward pass reads, and *auxiliary* values (like tanh(cᵗ)): functions of
  forward values that the backward needs are stored, never recomputed.
* **backward program** — the element-wise work of one step of BPTT. Every contribution
  that reaches a state from step t+1 arrives through one *carry* buffer per state:
  carry_s holds the step-(t+1) part of δsᵗ, that is `shift_time(d.initial[s], +1)`; its
  element-wise part is written by step t+1's loop and its matrix part (Σ Rᵀ δūᵗ⁺¹) is
  added by one GEMM per state, carry_s += dG[t+1] · Wcat_s. So δsᵗ = (its step-t flows
  and Δᵗ) + carry_s, and after step 0 the carry *is* the initial-state gradient δs⁰.
  The program writes each projection node's delta into dG of every group that has it,
  the new carries, and accumulates the gradients of vector parameters (peepholes,
  biases) over the batch and time.

Cells whose projections read a node of the same step (a multi-phase cell), cells with
several inputs and cells that use an input element-wise are valid specs that the
kernels do not support yet: `plan()` raises a UserError naming the node.
"""

from __future__ import annotations

import keyword
from dataclasses import dataclass, field

import sympy as sp

from derive.cell import symbols as S
from derive.derivation import Derivation, derive
from derive.errors import UserError
from derive.printing import presentation
from derive.printing.text import text

#: functions of the element-wise programs (applied to one vector)
FUNCTIONS = (S.sigmoid, sp.tanh, sp.exp, sp.log)

# identifiers a generated name must not take (Python, Cython and C words, builtins and
# the names the templates use at module level)
_RESERVED = set(keyword.kwlist) | set(keyword.softkwlist) | {
    "auto", "break", "case", "char", "const", "continue", "default", "do", "double",
    "else", "enum", "extern", "float", "for", "goto", "if", "inline", "int", "long",
    "register", "restrict", "return", "short", "signed", "sizeof", "static", "struct",
    "switch", "typedef", "union", "unsigned", "void", "volatile", "while", "bool",
    "cdef", "cpdef", "cimport", "ctypedef", "fused", "nogil", "gil", "api", "public",
    "readonly", "include", "DEF", "IF", "ELIF", "ELSE", "NULL", "new", "operator",
    "bint", "object", "noexcept", "cython", "floating", "np", "numpy", "math",
    "list", "tuple", "dict", "set", "str", "bytes", "range", "len", "min", "max", "abs",
    "sum", "any", "all", "print", "type", "id", "zip", "map", "iter", "next", "object",
    "exp", "expf", "log", "logf", "tanh", "tanhf", "sqrt", "sqrtf", "pow", "powf",
    "fabs", "fabsf", "sigmoid", "T", "B", "N", "M", "t",
    # arguments of the generated forward/backward functions
    "X", "W", "V", "S", "A", "G", "dY", "dG", "C", "acc", "dW", "dX",
}


@dataclass(frozen=True)
class Block:
    """One projection `matrix @ operand` feeding `node`: k-th N rows of Wcat."""

    node: str
    matrix: str


@dataclass(frozen=True)
class Operand:
    """A vector multiplied by matrices: the input (read at t) or a state (read at t-1)."""

    name: str
    kind: str                 # "input" | "state"
    size: str                 # "M" | "N"
    blocks: tuple[Block, ...]
    group: int                # index of the dG buffer holding its blocks' deltas

    @property
    def matrices(self) -> tuple[str, ...]:
        return tuple(b.matrix for b in self.blocks)


@dataclass(frozen=True)
class Group:
    """A dG buffer (T, B, k·N): the deltas of `nodes`, shared by `operands`."""

    index: int
    nodes: tuple[str, ...]
    operands: tuple[str, ...]


@dataclass(frozen=True)
class Stored:
    """A (T, B, N) array the forward pass writes for the backward pass."""

    name: str                 # node name, or the auxiliary value's identifier
    kind: str                 # "node" | "aux"
    symbol: sp.Symbol         # the value it holds at step t
    expr: sp.Expr | None = None   # for an auxiliary value: what it is


@dataclass(frozen=True)
class Access:
    """What a symbol of an element-wise program stands for in the generated code.

    kind: "proj" (block `index` of operand `array`'s projection result),
    "prev" (state `array` at t-1), "value" (node/state `array` at t: computed in the
    forward, read from storage in the backward), "aux" (auxiliary stored value),
    "vector" (parameter), "incoming" (Δ of output `array`), "carry" (carry of state
    `array`), "delta" (δ of node `array`, a local of the backward step), "temp" (CSE).
    """

    kind: str
    ident: str
    array: str = ""
    index: int = 0


@dataclass(frozen=True)
class Statement:
    target: sp.Symbol
    expr: sp.Expr
    comment: str = ""


@dataclass(frozen=True)
class Write:
    """After the statements: store `symbol` into `array` (kind: state, stored, dG,
    carry) or add it into an accumulator (kind acc)."""

    kind: str
    array: str
    symbol: sp.Symbol
    index: int = 0            # block index inside a dG group
    comment: str = ""


@dataclass
class Program:
    """The element-wise work of one step: statements, then writes."""

    statements: list[Statement]
    writes: list[Write]

    @property
    def reads(self) -> set[sp.Symbol]:
        assigned = {s.target for s in self.statements}
        free = set().union(*(s.expr.free_symbols for s in self.statements), set())
        free |= {w.symbol for w in self.writes}
        return free - assigned


@dataclass
class Plan:
    """Everything a backend needs to lay out the kernel of one cell."""

    cell: object
    input: str
    states: tuple[str, ...]
    outputs: tuple[str, ...]
    parameters: dict[str, tuple[str, ...]]      # name -> paper shape
    vectors: tuple[str, ...]                    # element-wise parameters, in order
    operands: tuple[Operand, ...]
    groups: tuple[Group, ...]
    stored: tuple[Stored, ...]
    forward: Program
    backward: Program
    access: dict[sp.Symbol, Access]
    carry_set: dict[str, bool]                  # state -> the loop writes its carry
    equations: dict[str, str] = field(default_factory=dict)   # comments by name

    @property
    def name(self) -> str:
        return self.cell.name

    def operand(self, name: str) -> Operand:
        return next(o for o in self.operands if o.name == name)

    def output_location(self, output: str) -> tuple[str, str]:
        """("state", s) when an output is a state, else ("stored", name)."""
        return ("state", output) if output in self.states else ("stored", output)

    def layout(self) -> dict:
        """JSON-able metadata embedded in generated modules (runtime needs no SymPy)."""
        return {
            "cell": self.cell.name,
            "title": self.cell.title,
            "spec_hash": self.cell.hash,
            "input": self.input,
            "states": list(self.states),
            "outputs": list(self.outputs),
            "parameters": [[n, list(s)] for n, s in self.parameters.items()],
            "vectors": list(self.vectors),
            "operands": [{"name": o.name, "kind": o.kind, "size": o.size,
                          "blocks": [[b.node, b.matrix] for b in o.blocks],
                          "group": o.group} for o in self.operands],
            "groups": [{"nodes": list(g.nodes), "operands": list(g.operands)}
                       for g in self.groups],
            "stored": [{"name": s.name, "kind": s.kind} for s in self.stored],
            "carry_set": [self.carry_set[s] for s in self.states],
        }


# --- building the plan ------------------------------------------------------------------

def plan(d: "Derivation | str") -> Plan:
    """The kernel plan of a derivation (or of a cell name / spec path)."""
    if not isinstance(d, Derivation):
        d = derive(d)
    return _Planner(d).run()


class _Names:
    """Unique, safe identifiers for the generated code, deterministic by request order."""

    def __init__(self):
        self.used: set[str] = set()

    def take(self, wanted: str) -> str:
        name = wanted
        while name in self.used or name in _RESERVED or name.startswith("_"):
            name = name.lstrip("_") + "_" if name.startswith("_") else name + "_"
        self.used.add(name)
        return name


def unsupported(cell, message: str) -> UserError:
    return UserError(f"{cell.display_path}: {message}; the compiled kernel and the NumPy "
                     f"reference do not support this yet (derive equations and derive "
                     f"verify work for this cell)")


class _Planner:
    def __init__(self, d: Derivation):
        self.d = d
        self.cell = d.cell
        self.names = _Names()
        self.access: dict[sp.Symbol, Access] = {}

    def sym(self, key: str, kind: str, wanted: str, array: str = "", index: int = 0):
        """A fresh symbol of the programs, with its access description."""
        s = sp.Symbol(f"@{kind}:{key}")
        if s not in self.access:
            self.access[s] = Access(kind, self.names.take(wanted), array, index)
        return s

    # ---------------------------------------------------------------------------------
    def check_supported(self):
        cell = self.cell
        if len(cell.inputs) != 1:
            raise unsupported(cell, f"the cell has {len(cell.inputs)} inputs "
                                    f"({', '.join(cell.inputs)}); kernels take one input x")
        for node in cell.nodes.values():
            for p in node.projections:
                if p.operand in cell.nodes and p.shift == 0:
                    raise unsupported(cell, f"node {node.name!r} multiplies {p.matrix} by "
                                            f"{p.operand!r} of the same step (a multi-phase "
                                            f"cell)")
            for sym in node.elementwise.free_symbols:
                r = S.ref(sym)
                if r is not None and r.kind == "value" and r.name in cell.inputs:
                    raise unsupported(cell, f"node {node.name!r} uses the input {r.name!r} "
                                            f"element-wise (inputs enter only through "
                                            f"matrix products)")

    def run(self) -> Plan:
        self.check_supported()
        cell, d = self.cell, self.d
        x = cell.inputs[0]
        order = list(cell.nodes)
        # operands and their blocks, in node order (then matrix name)
        blocks: dict[tuple[str, int], list[Block]] = {}
        for node in cell.nodes.values():
            for p in sorted(node.projections, key=lambda p: p.matrix):
                blocks.setdefault((p.operand, p.shift), []).append(Block(node.name, p.matrix))
        operand_names = [x] + [s for s in cell.states if (s, -1) in blocks]
        groups: list[tuple[str, ...]] = []
        operands = []
        for name in operand_names:
            bl = tuple(blocks[(name, 0 if name == x else -1)])
            key = tuple(b.node for b in bl)
            if key not in groups:
                groups.append(key)
            operands.append(Operand(name, "input" if name == x else "state",
                                    "M" if name == x else "N", bl, groups.index(key)))
        group_objs = tuple(Group(i, g, tuple(o.name for o in operands if o.group == i))
                           for i, g in enumerate(groups))
        self.operands = operands
        self.groups = group_objs
        params = {n: p.shape for n, p in cell.parameters.items()}
        vectors = tuple(n for n, s in params.items() if len(s) == 1)
        self.check_matrix_gradients(operands)

        # symbols of the forward program
        fwd_map: dict[sp.Symbol, sp.Expr] = {}
        for o in operands:
            for k, b in enumerate(o.blocks):
                self.sym(f"{o.name}:{k}", "proj", f"{b.matrix}_{o.name}", o.name, k)
        for s in cell.states:
            fwd_map[S.value(s, -1)] = self.sym(s, "prev", f"{s}_prev", s)
        for v in vectors:
            fwd_map[S.param(v)] = self.sym(v, "vector", v, v)
        for n in order:
            fwd_map[S.value(n, 0)] = self.sym(n, "value", n, n)

        # backward: deltas (state flows from t+1 replaced by the carry)
        bwd_statements, comments = [], {}
        delta_sym = {}
        carries = {s: self.sym(s, "carry", f"carry_{s}", s) for s in cell.states}
        incoming = {}
        for o in cell.outputs:
            sym = S.incoming(o, 0, single=len(cell.outputs) == 1)
            incoming[sym] = self.sym(o, "incoming", "Delta" if len(cell.outputs) == 1
                                     else f"Delta_{o}", o)
        for n, nd in d.deltas.items():
            if n in cell.inputs:
                continue
            delta_sym[n] = self.sym(n, "delta", f"d{n}", n)
        bwd_map = dict(fwd_map)
        bwd_map.update(incoming)
        bwd_map.update({S.delta(n): s for n, s in delta_sym.items()})
        for n, nd in d.deltas.items():
            if n in cell.inputs:
                continue
            terms = [f.term for f in nd.flows if f.shift == 0]
            later = [f for f in nd.flows if f.shift != 0]
            expr = sp.Add(*terms)
            if later:
                if n not in cell.states:  # pragma: no cover - only states are read at t+1
                    raise unsupported(cell, f"δ{n} receives terms from step t+1 but {n} is "
                                            f"not a state")
                carried = sp.Add(*[f.term for f in later])
                if sp.expand(carried - S.shift_time(d.initial[n], 1)) != 0:  # pragma: no cover
                    raise AssertionError(f"carry of {n} does not match d.initial")
                expr = expr + carries[n]
            elif n in cell.states:
                expr = expr + carries[n]
            if expr.has(S.MatTVec, S.MatVec):  # pragma: no cover - multi-phase is rejected
                raise unsupported(cell, f"δ{n} needs a matrix product inside the step")
            comments[f"d{n}"] = f"d{n}[t] = {text(presentation.structured(d, n))}"
            bwd_statements.append(Statement(delta_sym[n], expr.xreplace(bwd_map),
                                            comments[f"d{n}"]))
        writes = []
        for g in group_objs:
            for k, node in enumerate(g.nodes):
                writes.append(Write("dG", str(g.index), delta_sym[node], k,
                                    f"dG{g.index}[t][{k}] = d{node}[t]"))
        # carries: the element-wise part of δs at t-1, written at step t
        carry_set = {}
        for s in cell.states:
            init = sp.expand(d.initial[s]) if d.initial[s].has(S.MatTVec) else d.initial[s]
            ew = sp.Add(*[t for t in sp.Add.make_args(init) if not t.has(S.MatTVec)])
            mat = {(t.args[0].name, S.ref(t.args[1]).name) for t in sp.Add.make_args(init)
                   if isinstance(t, S.MatTVec)}
            bad = [t for t in sp.Add.make_args(init) if t.has(S.MatTVec)
                   and not isinstance(t, S.MatTVec)]
            expect = set()
            if s in operand_names:
                expect = {(b.matrix, b.node) for o in operands if o.name == s
                          for b in o.blocks}
            if bad or mat != expect:  # pragma: no cover - guarded by the derivation
                raise AssertionError(f"matrix part of the carry of {s}: {init}")
            carry_set[s] = ew != 0
            if ew != 0:
                target = self.sym(f"new:{s}", "temp", f"carry_{s}_next")
                comment = f"d{s}[t-1] gets: {text(presentation.initial_state(d, s))}"
                comments[f"carry_{s}"] = comment
                bwd_statements.append(Statement(target, ew.xreplace(bwd_map), comment))
                writes.append(Write("carry", s, target, 0, comment))
        # vector parameter gradients, accumulated over the batch and time
        for v in vectors:
            pg = d.params[v]
            expr = pg.step
            if expr.has(S.Outer, S.MatTVec, S.MatVec):  # pragma: no cover
                raise AssertionError(f"vector parameter {v} has a matrix gradient term")
            target = self.sym(f"acc:{v}", "temp", f"g_{v}")
            comment = f"d{v} += {text(presentation.parameter_term(d, v))}"
            bwd_statements.append(Statement(target, expr.xreplace(bwd_map), comment))
            writes.append(Write("acc", v, target, 0, comment))

        # auxiliary stored values: functions of forward values the backward reads
        aux: dict[sp.Expr, sp.Symbol] = {}
        for st in bwd_statements:
            for f in sorted(st.expr.atoms(*FUNCTIONS), key=sp.default_sort_key):
                if f not in aux:
                    aux[f] = self.sym(f"aux:{sp.srepr(f)}", "aux", self.aux_name(f))
        bwd_statements = [Statement(s.target, s.expr.xreplace(aux), s.comment)
                          for s in bwd_statements]
        backward = self.finish(Program(bwd_statements, writes), "_e")

        # what the backward reads from storage
        reads = backward.reads
        stored = []
        for n in order:
            sym = fwd_map[S.value(n, 0)]
            if n not in cell.states and (sym in reads or n in cell.outputs):
                stored.append(Stored(n, "node", sym))
        aux_by_symbol = {v: k for k, v in aux.items()}
        for sym in sorted(aux.values(), key=lambda s: self.access[s].ident):
            if sym in reads:
                ident = self.access[sym].ident
                self.access[sym] = Access("aux", ident, ident)
                stored.append(Stored(ident, "aux", sym, aux_by_symbol[sym]))
        self.check_backward_reads(backward, stored, fwd_map)

        # forward: every node, then the auxiliary values
        fwd_statements = []
        for n in order:
            node = cell.nodes[n]
            expr = node.elementwise.xreplace(fwd_map)
            for k_op, o in enumerate(operands):
                for k, b in enumerate(o.blocks):
                    if b.node == n:
                        expr = expr + self.access_symbol("proj", f"{o.name}:{k}")
            comments[n] = f"{n}[t] = {node.text}"
            fwd_statements.append(Statement(fwd_map[S.value(n, 0)], expr, comments[n]))
        fwd_writes = [Write("state", s, fwd_map[S.value(s, 0)], 0, f"{s}[t]") for s in
                      cell.states]
        for st in stored:
            if st.kind == "aux":
                fwd_statements.append(Statement(st.symbol, st.expr,
                                                f"{st.name} = {self.text(st.expr)} (stored "
                                                f"for the backward pass)"))
            fwd_writes.append(Write("stored", st.name, st.symbol, 0, st.name))
        forward = self.finish(Program(fwd_statements, fwd_writes), "_e")
        return Plan(cell, x, cell.states, cell.outputs, params, vectors, tuple(operands),
                    group_objs, tuple(stored), forward, backward, self.access, carry_set,
                    comments)

    def access_symbol(self, kind: str, key: str) -> sp.Symbol:
        return sp.Symbol(f"@{kind}:{key}")

    def aux_name(self, f: sp.Expr) -> str:
        a = self.access.get(f.args[0])
        if a is not None and a.kind in ("value", "prev"):
            return f"{type(f).__name__}_{a.ident}"
        return f"{type(f).__name__}_aux"

    def text(self, expr: sp.Expr) -> str:
        """A program expression in the derivation's notation (c[t], c[t-1], p_i)."""
        back = {}
        for sym in expr.free_symbols:
            a = self.access.get(sym)
            if a is not None and a.kind in ("value", "prev", "vector"):
                back[sym] = (S.value(a.array, -1 if a.kind == "prev" else 0)
                             if a.kind != "vector" else S.param(a.array))
        return text(expr.xreplace(back))

    def check_matrix_gradients(self, operands):
        """Every matrix gradient is ⟨δnode, operand⟩ of exactly the blocks of the plan."""
        for pname, pg in self.d.params.items():
            if not pg.is_matrix:
                continue
            seen = set()
            for node, term in pg.contributions:
                if not isinstance(term, S.Outer):  # pragma: no cover
                    raise unsupported(self.cell, f"parameter {pname} is used element-wise")
                r = S.ref(term.args[1])
                seen.add((node, r.name))
            expect = {(b.node, o.name) for o in operands for b in o.blocks
                      if b.matrix == pname}
            if seen != expect:  # pragma: no cover
                raise AssertionError(f"gradient of {pname}: {seen} != {expect}")

    def check_backward_reads(self, backward, stored, fwd_map):
        """The backward reads only what the forward stores (no values at t+1)."""
        ok_kinds = {"prev", "vector", "incoming", "carry", "aux"}
        state_syms = {fwd_map[S.value(s, 0)] for s in self.cell.states}
        stored_syms = {st.symbol for st in stored}
        for sym in backward.reads:
            a = self.access.get(sym)
            if a is None:  # pragma: no cover
                raise AssertionError(f"backward reads an unknown symbol {sym}")
            if a.kind in ok_kinds or sym in state_syms or sym in stored_syms:
                continue
            raise AssertionError(f"backward reads {a.kind} {a.ident}")  # pragma: no cover

    # ---------------------------------------------------------------------------------
    def finish(self, program: Program, temp_prefix: str) -> Program:
        """Prune, CSE across all statements, expand powers; a dependency-ordered program."""
        statements = prune(program)
        targets = [s.target for s in statements]
        exprs = [s.expr for s in statements]
        counter = iter(range(10 ** 6))

        def temps():
            while True:
                k = next(counter)
                sym = sp.Symbol(f"@temp:{temp_prefix}{k}")
                self.access[sym] = Access("temp", f"{temp_prefix}{k}")
                yield sym

        replacements, reduced = sp.cse(exprs, symbols=temps(), order="none")
        comments = {s.target: s.comment for s in statements}
        # place each CSE temporary right before its first use
        temp_defs = dict(replacements)
        out: list[Statement] = []
        done: set[sp.Symbol] = set()

        def emit_temps(expr):
            for sym in sorted(expr.free_symbols, key=lambda s: s.name):
                if sym in temp_defs and sym not in done:
                    emit_temps(temp_defs[sym])
                    done.add(sym)
                    out.append(Statement(sym, temp_defs[sym]))

        for target, expr in zip(targets, reduced):
            emit_temps(expr)
            out.append(Statement(target, expr, comments[target]))
            done.add(target)
        program = simplify_aliases(Program(out, program.writes))
        # last (a later xreplace would fold the products back into powers)
        return Program([Statement(s.target, expand_powers(s.expr), s.comment)
                        for s in program.statements], program.writes)


def simplify_aliases(program: Program) -> Program:
    """Drop statements `a = b` that only rename a symbol.

    A CSE temporary that a named target merely copies takes the target's name (tanh_c
    instead of _f0 then tanh_c = _f0); a write of a copied symbol writes the original
    (db_z += dz_bar, not g_b_z = dz_bar; db_z += g_b_z).
    """
    statements = list(program.statements)
    writes = list(program.writes)
    while True:
        alias = next((s for s in statements if isinstance(s.expr, sp.Symbol)
                      and any(o.target == s.expr for o in statements)), None)
        if alias is None:
            break
        old, new = alias.expr, alias.target
        if old.name.startswith("@temp:") and not alias.target.name.startswith("@temp:"):
            keep, drop = new, old      # the temporary takes the target's name
        else:
            keep, drop = old, new      # the copy is dropped
        mapping = {drop: keep}
        out = []
        for s in statements:
            if s is alias:
                continue
            target = keep if s.target == drop else s.target
            comment = s.comment or (alias.comment if target == keep else "")
            out.append(Statement(target, s.expr.xreplace(mapping), comment))
        statements = out
        writes = [Write(w.kind, w.array, mapping.get(w.symbol, w.symbol), w.index, w.comment)
                  for w in writes]
    return Program(statements, writes)


def prune(program: Program) -> list[Statement]:
    """Drop statements no write needs."""
    need = {w.symbol for w in program.writes}
    keep = []
    for st in reversed(program.statements):
        if st.target in need:
            keep.append(st)
            need |= st.expr.free_symbols
    return list(reversed(keep))


def expand_powers(expr: sp.Expr) -> sp.Expr:
    """x**2 → x*x (up to the 8th power), x**-2 → 1/(x*x): products, not pow()."""

    # rebuilt bottom-up without evaluation: SymPy would fold x*x back into x**2
    if expr.is_Atom:
        return expr
    args = [expand_powers(a) for a in expr.args]
    if isinstance(expr, sp.Pow):
        b, e = args
        if e.is_Integer and 2 <= abs(int(e)) <= 8:
            n = abs(int(e))
            prod = sp.Mul(*([b] * n), evaluate=False)
            return prod if e > 0 else sp.Pow(prod, -1, evaluate=False)
        return sp.Pow(b, e, evaluate=False)
    if isinstance(expr, (sp.Add, sp.Mul)):
        return expr.func(*args, evaluate=False)
    return expr.func(*args)
