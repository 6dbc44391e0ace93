"""Pass 1 — operands and groups: which vectors the matrices multiply, fused how.

Every vector that a matrix multiplies (the input x, read at step t; states, read at t-1)
becomes an *operand* with its ordered blocks (projection node, matrix): its matrices are
fused into one weight Wcat (k·N × size), so the forward does one GEMM per operand.
Operands whose blocks feed the same nodes in the same order share one *group*: one
buffer dG (T, B, k·N) of those nodes' deltas, so that after the time loop
dWcat = dGᵀ · operand values and δx = dG · Wcat are single large GEMMs.
"""

from __future__ import annotations

from derive.cell import symbols as S
from derive.derivation import Derivation
from derive.errors import UserError
from derive.kernel.plan.model import Block, Group, Operand, Role


def unsupported(cell, message: str) -> UserError:
    return UserError(f"{cell.display_path}: {message}; the compiled kernel and the NumPy "
                     f"reference do not support this yet (derive equations and derive "
                     f"verify work for this cell)")


def check_supported(cell) -> None:
    """One input, used only through matrices; no product of a same-step node; no
    reduction (mean) over the hidden units.

    (A multi-phase step — a product of a node of the same step — is what a plan of
    several forward/backward Programs per step would support.)
    """
    if len(cell.inputs) != 1:
        raise unsupported(cell, f"the cell has {len(cell.inputs)} inputs "
                                f"({', '.join(cell.inputs)}); kernels take one input x")
    for node in cell.nodes.values():
        for p in node.projections:
            if p.operand in cell.nodes and p.shift == 0:
                raise unsupported(cell, f"node {node.name!r} multiplies {p.matrix} by "
                                        f"{p.operand!r} of the same step (a multi-phase "
                                        f"cell)")
        if node.elementwise.has(S.Mean):
            raise unsupported(cell, f"node {node.name!r} reduces over the hidden units "
                                    f"(mean: reductions are not compiled yet)")
        for sym in node.elementwise.free_symbols:
            r = S.ref(sym)
            if r is not None and r.kind == "value" and r.name in cell.inputs:
                raise unsupported(cell, f"node {node.name!r} uses the input {r.name!r} "
                                        f"element-wise (inputs enter only through "
                                        f"matrix products)")


def operands_and_groups(cell) -> tuple[tuple[Operand, ...], tuple[Group, ...]]:
    """The operands (x first, then the states read through a matrix, in state order),
    their blocks in node order (then matrix name), and the groups of equal node lists."""
    x = cell.inputs[0]
    blocks: dict[tuple[str, int], list[Block]] = {}
    for node in cell.nodes.values():
        for p in sorted(node.projections, key=lambda p: p.matrix):
            blocks.setdefault((p.operand, p.shift), []).append(Block(node.name, p.matrix))
    reads = [(x, 0, Role.INPUT, "M")] + [(s, -1, Role.STATE, "N") for s in cell.states
                                          if (s, -1) in blocks]
    keys: list[tuple[str, ...]] = []
    operands = []
    for name, shift, role, size in reads:
        bl = tuple(blocks[(name, shift)])
        key = tuple(b.node for b in bl)
        if key not in keys:
            keys.append(key)
        operands.append(Operand(name, role, size, bl, keys.index(key)))
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
