"""Pass 7 — CSE: a step's statements as one straight-line, dependency-ordered program.

Statements no write needs are pruned; common subexpressions across all statements
become temporaries `_e0, _e1 …` placed right before their first use; copies `a = b`
are folded away; integer powers become products (x*x, not pow).
"""

from __future__ import annotations

import sympy as sp

from derive.kernel.plan.model import Kind, Program, Statement, Write
from derive.kernel.plan.symbols import Symbols


def finish(program: Program, symbols: Symbols) -> Program:
    """Prune, CSE across all statements, fold aliases, expand powers."""
    statements = prune(program)
    replacements, reduced = sp.cse([s.expr for s in statements], symbols=symbols.cse(),
                                   order="none")
    temp_defs = dict(replacements)
    out: list[Statement] = []
    done: set[sp.Symbol] = set()

    def place_temps(expr):
        for sym in sorted(expr.free_symbols, key=lambda s: s.name):
            if sym in temp_defs and sym not in done:
                place_temps(temp_defs[sym])
                done.add(sym)
                out.append(Statement(sym, temp_defs[sym]))

    for st, expr in zip(statements, reduced):
        place_temps(expr)
        out.append(Statement(st.target, expr, st.comment))
        done.add(st.target)
    program = simplify_aliases(Program(tuple(out), program.writes), symbols)
    # last (a later xreplace would fold the products back into powers)
    return Program(tuple(Statement(s.target, expand_powers(s.expr), s.comment)
                         for s in program.statements), program.writes)


def prune(program: Program) -> list[Statement]:
    """The statements some write needs, in order."""
    need = {w.value for w in program.writes}
    keep = []
    for st in reversed(program.statements):
        if st.target in need:
            keep.append(st)
            need |= st.expr.free_symbols
    return list(reversed(keep))


def simplify_aliases(program: Program, symbols: Symbols) -> Program:
    """Drop statements `a = b` that only rename a symbol.

    A temporary that a named target merely copies takes the target's name (tanh_c
    instead of _e0 then tanh_c = _e0); a write of a copied symbol writes the original
    (db_z += dz_bar, not g_b_z = dz_bar; db_z += g_b_z).
    """
    statements, writes = list(program.statements), list(program.writes)
    while True:
        alias = next((s for s in statements if isinstance(s.expr, sp.Symbol)
                      and any(o.target == s.expr for o in statements)), None)
        if alias is None:
            break
        old, new = alias.expr, alias.target
        if symbols.kind(old) is Kind.TEMP and symbols.kind(new) is not Kind.TEMP:
            keep, drop = new, old      # the temporary takes the target's name
        else:
            keep, drop = old, new      # the copy is dropped
        out = []
        for s in statements:
            if s is alias:
                continue
            target = keep if s.target == drop else s.target
            comment = s.comment or (alias.comment if target == keep else "")
            out.append(Statement(target, s.expr.xreplace({drop: keep}), comment))
        statements = out
        writes = [Write(w.buffer, keep if w.value == drop else w.value, w.block, w.comment)
                  for w in writes]
    return Program(tuple(statements), tuple(writes))


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
