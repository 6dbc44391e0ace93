"""Stage 3 — the kernel *plan* of a derivation, built by small passes over a typed plan.

Every decision about what a kernel computes, stores and fuses lives here; the lowering
(`derive.kernel.lower`), the emitters (`derive.kernel.emit`) and the templates only lay
the plan out. The passes, in order (one module each):

1. `operands` — phases, operands (the vectors matrices multiply) and groups (shared dG
   buffers);
2. `forward` — forward allocation: the program symbols of one step's values;
3. `backward` — backward deltas: δ of every node, the projection deltas into dG, the
   element-wise part of δx of an input used element-wise;
4. `backward` — carries: the element-wise part of δs[t-1], written at step t;
5. `backward` — accumulators: the vector parameters' gradients over batch and time;
   then the backward phases (`stages`: the writes split, the means of deltas made
   between phases with `reductions`); the forward's means (`reductions`) likewise;
6. `storage` — auxiliary values, the values the forward stores, the arrays of a call;
7. `cse` — every phase's program as CSE'd, dependency-ordered straight-line code.

The model (`model`): the plan's symbols are plain identifiers whose meaning is a typed
`Ref` (`Plan.refs`); the arrays of a call are `Buffer`s; a step is a `Program` of
statements and writes. `describe(plan)` prints it (`derive plan CELL`).

**Phases.** A step is a sequence of element-wise phases (`Plan.forward`,
`Plan.backward`: one Program each). A cell whose projections read only the input and
the states at t-1 has one phase, the code path of every shipped single-phase cell. A
projection of a node of the same step (LSTMP's h = W_hr m, the reset-before GRU's
R_h (r ⊙ y[t-1])) is a phase boundary: the forward computes phase 0, the per-step
product of the node, phase 1 …; the backward runs the phases in reverse with the
transposed products between them, and the weight gradients of such products are large
GEMMs after the time loop (the node's values are stored per step). A row reduction over
the hidden units is the second kind of boundary (see **Reductions** below).

**Inputs.** Each input is an array X[k] of its own (dX[k] its gradient). An input
multiplied by matrices is an operand (its projections of all T steps: one GEMM before
the time loop; δx = dG · Wcat: one GEMM after it). An input used element-wise (a highway
term (1 - r) ⊙ x; its size is that of its node, N or P) is read by the step programs
from X[k][t] (the forward stores nothing for it), and the backward step writes the
element-wise part of δx[t] into dX[k][t], to which the GEMM after the loop adds (an
input used only element-wise has no GEMM). Several inputs of size M each have their own
size (M_<input> in the generated code), read from their arrays.

**Reductions.** A mean over the hidden units (layer normalisation) is the second kind
of phase boundary (`reductions`): the phase that computes its argument writes it into
a scratch row, the row means are made between that phase and the next, and the later
phases read one scalar per row. The backward has its own phases (`Backward.stages`):
a statement's backward phase is one after the deltas an adjoint product it reads
needs, and one after the argument of each mean of deltas it reads.
"""

from __future__ import annotations

from derive.derivation import Derivation, derive
from derive.kernel.plan.backward import Backward
from derive.kernel.plan.cse import expand_powers, finish
from derive.kernel.plan.describe import describe
from derive.kernel.plan.forward import Allocation, forward_programs
from derive.kernel.plan.model import (
    Block,
    Buffer,
    Group,
    Kind,
    Operand,
    Plan,
    Program,
    Reduction,
    Ref,
    Role,
    Statement,
    Storage,
    Stored,
    Write,
)
from derive.kernel.plan.operands import (
    check_matrix_gradients,
    check_supported,
    operands_and_groups,
    phases,
    unsupported,
)
from derive.kernel.plan.reductions import Means
from derive.kernel.plan.storage import (
    FUNCTIONS,
    all_buffers,
    auxiliaries,
    fixed_buffers,
    reduction_buffers,
    stored_values,
)
from derive.kernel.plan.symbols import Symbols
from derive.printing.text import text

__all__ = ["FUNCTIONS", "Block", "Buffer", "Group", "Kind", "Operand", "Plan", "Program",
           "Reduction", "Ref", "Role", "Statement", "Storage", "Stored", "Write", "describe",
           "expand_powers", "plan"]


def plan(d: "Derivation | str") -> Plan:
    """The kernel plan of a derivation (or of a cell name / spec path)."""
    if not isinstance(d, Derivation):
        d = derive(d)
    cell = d.cell
    check_supported(cell)
    phase = phases(cell)
    operands, groups = operands_and_groups(cell)
    check_matrix_gradients(d, operands)
    params = {n: p.shape for n, p in cell.parameters.items()}
    vectors = tuple(n for n, s in params.items() if len(s) == 1)
    symbols = Symbols()
    alloc = Allocation(cell, operands, vectors, symbols)
    fixed = fixed_buffers(cell, operands, groups, vectors)
    by_name = {(b.storage, b.name): b for b in fixed}
    bwd = Backward(d, alloc.subs, symbols)
    bwd.deltas(groups, by_name, operands)
    bwd.input_gradients(operands, by_name)
    carried = bwd.carry_writes(operands, by_name)
    bwd.accumulators(vectors, by_name)
    aux = auxiliaries(bwd.statements, symbols)
    staged, statements, bmeans, adjoints = bwd.stages(
        [Statement(s.target, s.expr.xreplace(aux), s.comment) for s in bwd.statements],
        operands)
    reduced = reduction_buffers(bmeans.reductions)
    for r in bmeans.reductions:
        staged[r.phase].append(_argument_write(r, reduced))
    backward = tuple(finish(Program(tuple(statements), tuple(w)), symbols) for w in staged)
    reads = frozenset().union(*(b.reads for b in backward))
    value_phase = {alloc.values[n]: phase[n] for n in cell.nodes}
    fmeans = Means("f", symbols, lambda s: value_phase.get(s, 0),
                   lambda e: symbols.row_size(cell, e))
    nodes = {n: fmeans.replace(node.elementwise.xreplace(alloc.subs))
             for n, node in cell.nodes.items()}
    later = [(fmeans.replace(e), None) for e, sym in aux.items() if sym in reads]
    later = [(e, fmeans.level(e)) for e, _ in later]
    later += [(r.expr, r.phase) for r in fmeans.reductions]
    kept = _kept_across_phases(cell, operands, phase) | {
        symbols.refs[s].name for e, k in later for s in e.free_symbols
        if s in value_phase and value_phase[s] < k} - set(cell.states)
    stored = stored_values(cell, alloc.values, aux, backward, symbols, kept)
    buffers = all_buffers(fixed + reduced + reduction_buffers(fmeans.reductions), stored,
                          {s.name: symbols.row_size(cell, s.expr)
                           if s.is_aux else cell.size(s.name) for s in stored})
    forward, comments = forward_programs(cell, alloc, nodes, stored,
                                         {(b.storage, b.name): b for b in buffers}, phase,
                                         fmeans)
    result = Plan(cell, cell.inputs[0], cell.states, cell.outputs, params, vectors,
                  operands, groups, stored, buffers,
                  tuple(finish(f, symbols) for f in forward), backward, symbols.refs,
                  carried, {**comments, **bwd.comments},
                  fmeans.reductions + bmeans.reductions, adjoints)
    _check_backward_reads(result)
    _check_phase_sizes(result)
    return result


def _argument_write(r: Reduction, buffers: tuple[Buffer, ...]) -> Write:
    """The write of a reduction's argument into its E scratch."""
    E = next(b for b in buffers if b.storage is Storage.REDUCED and b.name == r.name)
    return Write(E, r.value, 0, f"E_{r.name} = {text(r.expr)}: {r.mean.name} is its row mean")


def _check_phase_sizes(p: Plan) -> None:
    """Every phase's program reads and writes vectors of one size (its loop runs over
    the N or P entries of a row); otherwise a one-line UserError."""
    sized = {Kind.PREVIOUS, Kind.VALUE, Kind.INCOMING, Kind.CARRY, Kind.ADJOINT, Kind.INPUT}
    for program in p.forward + p.backward:
        sizes = {w.buffer.size: w.buffer.name for w in program.writes}
        for sym in program.reads:
            ref = p.refs[sym]
            if ref.kind in sized:
                sizes.setdefault(p.cell.size(ref.name), ref.name)
            elif ref.kind is Kind.PROJECTION:
                sizes.setdefault(p.operand(ref.name).rows, ref.name)
        if len(sizes) > 1:
            raise unsupported(p.cell, f"one phase of a step would combine "
                                      f"{' and '.join(f'{v!r} (size {k})' for k, v in sorted(sizes.items()))}; "
                                      f"a phase works on vectors of one size")


def _kept_across_phases(cell, operands: tuple[Operand, ...], phase: dict) -> set[str]:
    """The nodes (not states) whose values outlive their phase: the node operands (their
    product and weight gradients read them) and those a later phase reads."""
    out = {o.name for o in operands if o.role is Role.NODE}
    for n, node in cell.nodes.items():
        out |= {r for r, shift in node.references()
                if shift == 0 and r in cell.nodes and phase[r] < phase[n]}
    return out - set(cell.states)


def _check_backward_reads(p: Plan) -> None:
    """The backward reads only what the forward stores (no values at t+1), and each
    phase only the adjoints and row means made before it."""
    ok = {Kind.PREVIOUS, Kind.VECTOR, Kind.INCOMING, Kind.CARRY, Kind.AUX, Kind.INPUT}
    stored = {s.symbol for s in p.stored}
    for k, program in enumerate(p.backward):
        for sym in program.reads:
            ref = p.refs[sym]
            if ref.kind in ok or sym in stored or (ref.kind is Kind.VALUE
                                                   and ref.name in p.states):
                continue
            if ref.kind is Kind.ADJOINT and p.adjoints[ref.name] <= k:
                continue
            if ref.kind is Kind.MEAN and p.reduction(sym).backward \
                    and p.reduction(sym).phase < k:
                continue
            raise AssertionError(f"backward reads {ref}")  # pragma: no cover
