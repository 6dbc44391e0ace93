"""Passes 3–5 — the backward program of one step: deltas, carries, accumulators.

Every contribution that reaches a state from step t+1 arrives through one *carry*
buffer per state: carry_s holds the step-(t+1) part of δsᵗ, that is
`shift_time(d.initial[s], +1)`; its element-wise part is written by step t+1's loop and
its matrix part (Σ Rᵀ δūᵗ⁺¹) is added by one product per state, carry_s += dG[t+1] ·
Wcat_s. So δsᵗ = (its step-t flows and Δᵗ) + carry_s, and after step 0 the carry *is*
the initial-state gradient δs⁰. An input used element-wise gets the element-wise part
of its δxᵗ written into dX[t] by the step (the matrix part: one GEMM after the loop). The program writes each projection node's delta into
dG of every group that has it, the new carries, and accumulates the gradients of the
vector parameters (peepholes, biases) over the batch and time.

In a multi-phase cell the δ of a node operand v holds Σ Wᵀ δu over the blocks of v (the
nodes u of later phases that project it): one product per step, between backward
phases, into a scratch array read as the ADJOINT symbol of v. A mean in a backward
statement (mean(K) of deltas of the step: the adjoint of a forward mean) is a row
reduction between backward phases (`derive.kernel.plan.reductions`); a mean of
forward values only is an auxiliary value the forward stores. `stages` splits the
writes: each dG or vector-gradient write goes to the first backward phase that can
compute it (its level: one phase after the deltas an adjoint product reads, one after
the argument of a mean), the carries to the last (earlier phases read the step-(t+1)
carries). Every phase's program is the whole statement list pruned to its writes, so
a delta that two phases need (δy of a reset-before GRU: its dG in phase 1, δu in
phase 0) is recomputed from the arrays (a few element-wise operations) instead of
stored.
"""

from __future__ import annotations

import sympy as sp

from derive.cell import symbols as S
from derive.derivation import Derivation
from derive.kernel.plan.cse import prune
from derive.kernel.plan.model import (
    Buffer,
    Group,
    Kind,
    Operand,
    Program,
    Ref,
    Role,
    Statement,
    Storage,
    Write,
)
from derive.kernel.plan.operands import unsupported
from derive.kernel.plan.reductions import Means
from derive.kernel.plan.symbols import Symbols
from derive.printing import presentation
from derive.printing.text import text

Buffers = dict[tuple[Storage, str], Buffer]


class Backward:
    """The statements and writes of one backward step, built pass by pass."""

    def __init__(self, d: Derivation, subs: dict, symbols: Symbols):
        cell = d.cell
        self.d, self.cell, self.symbols = d, cell, symbols
        self.statements: list[Statement] = []
        self.writes: list[Write] = []
        self.comments: dict[str, str] = {}
        self.carries = {s: symbols.of(Ref(Kind.CARRY, s), f"carry_{s}") for s in cell.states}
        single = len(cell.outputs) == 1
        self.subs = dict(subs)
        for o in cell.outputs:
            self.subs[S.incoming(o, 0, single=single)] = symbols.of(
                Ref(Kind.INCOMING, o), "Delta" if single else f"Delta_{o}")
        self.delta = {n: symbols.of(Ref(Kind.DELTA, n), f"d{n}") for n in d.deltas
                      if n not in cell.inputs}
        self.subs.update({S.delta(n): sym for n, sym in self.delta.items()})

    def deltas(self, groups: tuple[Group, ...], buffers: Buffers,
               operands: tuple[Operand, ...]) -> None:
        """Pass 3: δ of every node (its step-t flows, plus the carry of a state, plus
        the adjoint of a node operand); each projection node's δ is written into its
        groups' dG."""
        cell, d = self.cell, self.d
        for n, sym in self.delta.items():
            now = [f.term for f in d.deltas[n].flows if f.shift == 0]
            expr = sp.Add(*[t for t in now if not isinstance(t, S.MatTVec)])
            if any(isinstance(t, S.MatTVec) for t in now):
                _check_matrix_part(n, now, [o for o in operands if o.role is Role.NODE])
                expr = expr + self.symbols.of(Ref(Kind.ADJOINT, n), f"adjoint_{n}")
            later = [f.term for f in d.deltas[n].flows if f.shift != 0]
            if later and n not in cell.states:  # pragma: no cover - only states at t+1
                raise unsupported(cell, f"δ{n} receives terms from step t+1 but {n} is "
                                        f"not a state")
            if later and sp.expand(sp.Add(*later) - S.shift_time(d.initial[n], 1)) != 0:
                raise AssertionError(f"carry of {n} does not match d.initial")  # pragma: no cover
            if n in cell.states:
                expr = expr + self.carries[n]
            if expr.has(S.MatTVec, S.MatVec):  # pragma: no cover - multi-phase is rejected
                raise unsupported(cell, f"δ{n} needs a matrix product inside the step")
            comment = f"d{n}[t] = {text(presentation.structured(d, n))}"
            self.comments[f"d{n}"] = comment
            self.statements.append(Statement(sym, expr.xreplace(self.subs), comment))
        for g in groups:
            for k, node in enumerate(g.nodes):
                self.writes.append(Write(buffers[Storage.DELTAS, " ".join(g.nodes)],
                                         self.delta[node], k, f"dG{g.index}[t][{k}] = "
                                                              f"d{node}[t]"))

    def input_gradients(self, operands: tuple[Operand, ...], buffers: Buffers) -> None:
        """Pass 3b: the element-wise part of δx[t] of every input used element-wise,
        written into its dX[t] (the GEMM dX += dG · Wcat of an input operand adds the
        matrix part Σ Wᵀ δ after the time loop)."""
        inputs = [o for o in operands if o.role is Role.INPUT]
        for x in self.cell.inputs:
            flows = self.d.deltas[x].flows
            if any(f.shift != 0 for f in flows):  # pragma: no cover - inputs are read at t
                raise AssertionError(f"δ{x} receives terms from another step")
            terms = [f.term for f in flows]
            _check_matrix_part(x, terms, inputs)
            ew = sp.Add(*[t for t in terms if not isinstance(t, S.MatTVec)])
            if ew == 0:
                continue
            target = self.symbols.temp(f"d{x}_step")
            matrix = f" (dG · W_{x} is added after the loop)" if any(
                o.name == x for o in inputs) else ""
            comment = f"d{x}[t] gets: {text(ew)}{matrix}"
            self.comments[f"d{x}"] = comment
            self.statements.append(Statement(target, ew.xreplace(self.subs), comment))
            self.writes.append(Write(buffers[Storage.INPUT_GRADIENT, x], target, 0, comment))

    def carry_writes(self, operands: tuple[Operand, ...], buffers: Buffers) -> frozenset:
        """Pass 4: the element-wise part of δs at t-1, written at step t, for every state
        that has one; returns those states (the others get only the matrix part)."""
        carried = set()
        for s in self.cell.states:
            init = self.d.initial[s]
            terms = sp.Add.make_args(sp.expand(init) if init.has(S.MatTVec) else init)
            ew = sp.Add(*[t for t in terms if not t.has(S.MatTVec)])
            _check_matrix_part(s, terms, [o for o in operands if o.role is Role.STATE])
            if ew == 0:
                continue
            carried.add(s)
            target = self.symbols.temp(f"carry_{s}_next")
            comment = f"d{s}[t-1] gets: {text(presentation.initial_state(self.d, s))}"
            self.comments[f"carry_{s}"] = comment
            self.statements.append(Statement(target, ew.xreplace(self.subs), comment))
            self.writes.append(Write(buffers[Storage.CARRY, s], target, 0, comment))
        return frozenset(carried)

    def stages(self, statements: list[Statement], operands: tuple[Operand, ...]
               ) -> tuple[list[list[Write]], list[Statement], Means, dict[str, int]]:
        """The backward phases, in the order they run (see the module docstring).

        statements: self.statements with the auxiliary values read as their symbols.
        Returns the writes of each phase, the statements with every mean read as the
        symbol of its reduction (and, last, the arguments of the reductions), the
        reductions (the writes of their arguments into E are the caller's: phase
        r.phase), and the phase each node operand's adjoint product runs before."""
        adjoint = {self.symbols.of(Ref(Kind.ADJOINT, o.name), f"adjoint_{o.name}"): o
                   for o in operands if o.role is Role.NODE}
        stage: dict[sp.Symbol, int] = {}
        adjoints: dict[str, int] = {}

        def phase_of(sym: sp.Symbol) -> int:
            if sym in stage:
                return stage[sym]
            if sym in adjoint:    # after the phase that writes its nodes' deltas into dG
                o = adjoint[sym]
                missing = [n for n in o.nodes if self.delta[n] not in stage]
                if missing:  # pragma: no cover - deltas come in reverse node order
                    raise AssertionError(f"adjoint of {o.name} before δ{missing[0]}")
                adjoints[o.name] = max(stage[self.delta[n]] for n in o.nodes) + 1
                stage[sym] = adjoints[o.name]
                return stage[sym]
            return 0

        means = Means("b", self.symbols, phase_of,
                      lambda e: self.symbols.row_size(self.cell, e))
        needed = {st.target for st in prune(Program(tuple(statements), tuple(self.writes)))}
        out = []
        for st in statements:
            if st.target not in needed:
                continue
            expr = means.replace(st.expr)
            stage[st.target] = means.level(expr)
            out.append(Statement(st.target, expr, st.comment))
        for o in adjoint.values():   # an adjoint no statement needs: made before phase 0
            adjoints.setdefault(o.name, 0)
        out += [Statement(r.value, r.expr) for r in means.reductions]
        count = max([stage[w.value] for w in self.writes]
                    + [r.phase for r in means.reductions]) + 1
        phases: list[list[Write]] = [[] for _ in range(count)]
        for w in self.writes:
            phases[count - 1 if w.buffer.storage is Storage.CARRY else stage[w.value]].append(w)
        return phases, out, means, adjoints

    def accumulators(self, vectors: tuple[str, ...], buffers: Buffers) -> None:
        """Pass 5: each vector parameter's gradient term, summed over batch and time."""
        for v in vectors:
            expr = self.d.params[v].step
            if expr.has(S.Outer, S.MatTVec, S.MatVec):  # pragma: no cover
                raise AssertionError(f"vector parameter {v} has a matrix gradient term")
            target = self.symbols.temp(f"g_{v}")
            comment = f"d{v} += {text(presentation.parameter_term(self.d, v))}"
            self.statements.append(Statement(target, expr.xreplace(self.subs), comment))
            self.writes.append(Write(buffers[Storage.ACCUMULATOR, v], target, 0, comment))


def _check_matrix_part(s: str, terms, operands: list[Operand]) -> None:
    """The matrix part of δs (at t-1 through the state operands, at t through the node
    operands) is Σ Rᵀ δ over exactly the blocks of operand s."""
    mat = {(t.args[0].name, S.ref(t.args[1]).name) for t in terms if isinstance(t, S.MatTVec)}
    bad = [t for t in terms if t.has(S.MatTVec) and not isinstance(t, S.MatTVec)]
    expect = {(b.matrix, b.node) for o in operands if o.name == s for b in o.blocks}
    if bad or mat != expect:  # pragma: no cover - guarded by the derivation
        raise AssertionError(f"matrix part of the carry of {s}: {terms}")
