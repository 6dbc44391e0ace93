"""Pass 1 — phases, operands and groups: which vectors the matrices multiply, fused how.

Every vector that a matrix multiplies (each input, read at step t; states, read at t-1;
nodes of the same step) becomes an *operand* with its ordered blocks (projection node,
matrix): its matrices are
fused into one weight Wcat (k·N × size), so the forward does one GEMM per operand.
Operands whose blocks feed the same nodes in the same order share one *group*: one
buffer dG (T, B, k·N) of those nodes' deltas, so that after the time loop
dWcat = dGᵀ · operand values and δx = dG · Wcat are single large GEMMs.

An input may also be read element-wise (a highway term (1 - r) ⊙ x; its size is then
that of its node): the step reads x[t] from its array, and the backward step writes the
element-wise part of δx[t], to which the GEMM δx += dG · Wcat adds after the time loop
(an input used only element-wise is no operand: its δx is the step's part alone).

A node multiplied by a matrix in its own step (a *node operand*) splits the step into
*phases*: the phase of a node is 0 unless it multiplies a node of the same step (then one
more than that node's phase), reads a node of a later phase element-wise (then that
phase) or reads a mean over the hidden units (then at least one more than the level of
its argument: `derive.kernel.plan.reductions`). A node operand's product runs between
its phase and the next.
"""

from __future__ import annotations

from derive.cell import symbols as S
from derive.derivation import Derivation
from derive.errors import UserError
from derive.kernel.plan.model import Block, Group, Operand, Role
from derive.kernel.plan.reductions import node_level


def unsupported(cell, message: str) -> UserError:
    return UserError(f"{cell.display_path}: {message}; the compiled kernel and the NumPy "
                     f"reference do not support this yet (derive equations and derive "
                     f"verify work for this cell)")


def check_supported(cell) -> None:
    """The nodes of one phase of one size (N or P), an operand feeding nodes of one size,
    vector parameters of size N; a node of the same step multiplied by a matrix is not
    also a state multiplied at t-1 (the two would be one operand name). Any number of
    inputs, each used through matrices, element-wise (then of its node's size, N or P)
    or both; means over the hidden units."""
    phase = phases(cell)
    for name in cell.nodes:
        if cell.size(name) not in ("N", "P"):  # pragma: no cover - the spec infers N, P
            raise unsupported(cell, f"node {name!r} has size {cell.size(name)}")
        other = next((n for n in cell.nodes if phase[n] == phase[name]
                      and cell.size(n) != cell.size(name)), None)
        if other is not None:
            raise unsupported(cell, f"nodes {other!r} (size {cell.size(other)}) and "
                                    f"{name!r} (size {cell.size(name)}) are computed in "
                                    f"the same phase; a phase has nodes of one size")
    if any(cell.size(n) == "P" for n in cell.nodes) and {cell.size(s) for s in
                                                          cell.states} != {"N", "P"}:
        raise unsupported(cell, "a cell with nodes of size P needs a state of size N "
                                "and one of size P (a kernel call reads N and P from them)")
    for pname, param in cell.parameters.items():
        if len(param.shape) == 1 and param.shape[0] != "N":
            raise unsupported(cell, f"vector parameter {pname!r} has size {param.shape[0]}; "
                                    f"kernels take vector parameters of size N")
    sizes: dict[tuple[str, int], set] = {}
    for node in cell.nodes.values():
        for p in node.projections:
            sizes.setdefault((p.operand, p.shift), set()).add(cell.size(node.name))
    for (operand, _shift), fed in sizes.items():
        if len(fed) > 1:
            raise unsupported(cell, f"{operand!r} is multiplied into nodes of sizes "
                                    f"{' and '.join(sorted(fed))}; one operand feeds "
                                    f"nodes of one size")
    at_previous = {p.operand for n in cell.nodes.values() for p in n.projections
                   if p.shift == -1}
    for node in cell.nodes.values():
        for p in node.projections:
            if p.shift == 0 and p.operand in at_previous:
                raise unsupported(cell, f"node {node.name!r} multiplies {p.matrix} by "
                                        f"{p.operand!r} of the same step while another "
                                        f"node multiplies {p.operand}[t-1] (one operand "
                                        f"per vector)")


def phases(cell) -> dict[str, int]:
    """The phase of every node (see the module docstring), in the cell's node order."""
    out: dict[str, int] = {}
    for name, node in cell.nodes.items():          # dependency order
        projected = {p.operand for p in node.projections if p.shift == 0}
        out[name] = max([out[ref] + (ref in projected) for ref, shift in node.references()
                         if shift == 0 and ref in out] + [node_level(node, out)])
    return out


def input_sizes(cell) -> dict[str, str]:
    """The size of each input in the kernels: "M" for an input that enters only through
    matrices (M_<input> when several do: each its own size, read from its array), else
    the size of the nodes that use it element-wise ("N" or "P", as the spec infers)."""
    through_matrices = [x for x in cell.inputs if cell.size(x) == "M"]
    return {x: (cell.size(x) if x not in through_matrices
                else "M" if len(through_matrices) == 1 else f"M_{x}") for x in cell.inputs}


def operands_and_groups(cell) -> tuple[tuple[Operand, ...], tuple[Group, ...]]:
    """The operands (the inputs read through a matrix, in input order, then the states
    read through a matrix, in state order, then the node operands by phase and node
    order), their blocks in node order (then matrix name), and the groups of equal node
    lists."""
    sizes = input_sizes(cell)
    phase = phases(cell)
    blocks: dict[tuple[str, int], list[Block]] = {}
    for node in cell.nodes.values():
        for p in sorted(node.projections, key=lambda p: p.matrix):
            blocks.setdefault((p.operand, p.shift), []).append(Block(node.name, p.matrix))
    reads = [(x, 0, Role.INPUT, sizes[x]) for x in cell.inputs if (x, 0) in blocks]
    reads += [(s, -1, Role.STATE, "N") for s in cell.states if (s, -1) in blocks]
    reads += [(n, 0, Role.NODE, "N") for n in sorted(cell.nodes, key=lambda n: phase[n])
              if (n, 0) in blocks]
    keys: list[tuple[str, ...]] = []
    operands = []
    for name, shift, role, size in reads:
        bl = tuple(blocks[(name, shift)])
        key = tuple(b.node for b in bl)
        if key not in keys:
            keys.append(key)
        operands.append(Operand(name, role, cell.size(name) if role is not Role.INPUT
                                else size, bl, keys.index(key),
                                phase[name] if role is Role.NODE else 0, cell.size(key[0])))
    groups = tuple(Group(i, key, tuple(o.name for o in operands if o.group == i))
                   for i, key in enumerate(keys))
    return tuple(operands), groups


def check_matrix_gradients(d: Derivation, operands: tuple[Operand, ...]) -> None:
    """Every matrix gradient is ⟨δnode, operand⟩ of exactly the blocks of the plan."""
    for pname, pg in d.params.items():
        if not pg.is_matrix:
            continue
        seen = set()
        for node, term in pg.contributions:
            if not isinstance(term, S.Outer):  # pragma: no cover
                raise unsupported(d.cell, f"parameter {pname} is used element-wise")
            seen.add((node, S.ref(term.args[1]).name))
        expect = {(b.node, o.name) for o in operands for b in o.blocks if b.matrix == pname}
        if seen != expect:  # pragma: no cover
            raise AssertionError(f"gradient of {pname}: {seen} != {expect}")
