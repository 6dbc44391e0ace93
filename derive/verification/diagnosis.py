"""Diagnosis of a wrong hand derivation: which terms are wrong, and how.

The wrong terms are found at the structured level: the terms of both sides are grouped
by the delta they carry (and the matrix in front of it); where one side writes a delta
the other expands (``dc[t+1]*i[t+1]*dtanh(z_bar[t+1])`` for ``dz_bar[t+1]``), the
expansion is followed until both meet. Each wrong term names its flow ("the path from
c[t] through f_bar[t+1]"), what was expected and what was found, and one of the `KINDS`.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy as sp

from derive.cell import symbols as S
from derive.printing.text import format_expression
from derive.verification.context import Context
from derive.verification.notation import Target
from derive.verification.report import Difference

KINDS = ("missing", "extra", "wrong time step", "wrong gate or parameter",
         "wrong coefficient or sign", "missing or doubled activation derivative",
         "wrong matrix order or transpose")


@dataclass
class _Piece:
    """A term of one side at the structured level, with where it comes from."""

    expr: sp.Expr        # one prepared monomial
    origin: str          # how it is written (a flow's term, or the user's own text)
    label: str = ""      # the flow (truth side)


def differences(ctx: Context, flows: list[tuple[sp.Expr, str]],
                terms: list[tuple[sp.Expr, str]], target: Target) -> list[Difference]:
    """The wrong terms of a hand derivation.

    `flows` are the derived terms with their flow labels, `terms` the hand-written
    top-level terms with their text, both at the target's step.
    """
    expected = [_Piece(m, format_expression(term, ctx.cell), label)
                for term, label in flows for m in sp.Add.make_args(ctx.prepare(term)) if m != 0]
    found = [_Piece(m, origin) for term, origin in terms
             for m in sp.Add.make_args(ctx.prepare(term)) if m != 0]
    return _Matcher(ctx, expected, found, target).run()


def _key(m: sp.Expr):
    """(carried deltas, operation) of a monomial: the operation is None (element-wise),
    ('T', A) for Aᵀ(...), ('N', A) for A(...), ('outer', position) for outer products."""
    factors = sp.Mul.make_args(m)
    linear = [f for f in factors if isinstance(f, (S.MatVec, S.MatTVec, S.Outer))]
    deltas = tuple(sorted((f for f in factors if _is_delta(f)), key=str))
    if not linear:
        return (deltas, None)
    if len(linear) == 1 and not deltas:
        f = linear[0]
        if isinstance(f, S.Outer):
            for pos, arg in enumerate(f.args):
                inner = tuple(sorted((g for g in sp.Mul.make_args(arg) if _is_delta(g)), key=str))
                if inner:
                    return (inner, ("outer", pos))
            return ((), ("outer", -1))
        inner = tuple(sorted((g for g in sp.Mul.make_args(f.args[1]) if _is_delta(g)), key=str))
        op = "T" if isinstance(f, S.MatTVec) else "N"
        return (inner, (op, f.args[0].name))
    return (deltas, ("other", str(m)))


def _is_delta(f) -> bool:
    r = S.ref(f) if isinstance(f, sp.Symbol) else None
    return r is not None and r.kind in ("delta", "incoming")


def _strip_linear(e: sp.Expr) -> sp.Expr:
    """Drop the matrix of every matrix product (to compare element-wise factors only)."""
    return e.replace(lambda x: isinstance(x, (S.MatVec, S.MatTVec)), lambda x: x.args[1])


class _Matcher:
    def __init__(self, ctx: Context, expected: list[_Piece], found: list[_Piece], target):
        self.ctx, self.cell, self.target = ctx, ctx.cell, target
        self.expected, self.found = expected, found

    @staticmethod
    def group(pieces):
        out: dict = {}
        for p in pieces:
            out.setdefault(_key(p.expr), []).append(p)
        return out

    def lower(self):
        """Follow expansions where one side writes a delta the other expands."""
        for _ in range(8):
            ge, gf = self.group(self.expected), self.group(self.found)
            de = {s for k in ge for s in k[0]}
            df = {s for k in gf for s in k[0]}
            changed = False
            for side, own, other in ((self.expected, de, df), (self.found, df, de)):
                only = own - other
                lowered = {s for s in only
                           if S.ref(s).kind == "delta" and self.ctx.reaches(s, other - own)}
                if lowered:
                    new = []
                    for p in side:
                        hit = [s for s in p.expr.free_symbols if s in lowered]
                        if hit:
                            sub = {s: self.ctx.expand_once(s) for s in hit}
                            for m in sp.Add.make_args(self.ctx.prepare(p.expr.xreplace(sub))):
                                if m != 0:
                                    new.append(_Piece(m, p.origin, p.label))
                        else:
                            new.append(p)
                    side[:] = new
                    changed = True
            if not changed:
                return

    def run(self) -> list[Difference]:
        self.pair_time_steps_first()
        self.lower()
        ge, gf = self.group(self.expected), self.group(self.found)
        out: list[Difference] = list(self.early)
        for key in [k for k in ge if k in gf]:
            e = sp.Add(*[p.expr for p in ge[key]])
            f = sp.Add(*[p.expr for p in gf[key]])
            if sp.expand(e - f) != 0:
                kind, detail = self.classify(e, f, key)
                out.append(Difference(self.label(ge[key]), kind, _origins(ge[key]),
                                      _origins(gf[key]), detail))
        missing = [k for k in ge if k not in gf]
        extra = [k for k in gf if k not in ge]
        for km in list(missing):
            partner = self.partner(km, extra)
            if partner is None:
                continue
            kx, kind, detail = partner
            missing.remove(km)
            extra.remove(kx)
            out.append(Difference(self.label(ge[km]), kind, _origins(ge[km]), _origins(gf[kx]),
                                  detail))
        for km in missing:
            out.append(Difference(self.label(ge[km]), "missing", _origins(ge[km]), "",
                                  "this term of the derivation is not in your equation"))
        for kx in extra:
            out.append(Difference(self.extra_label(kx), "extra", "", _origins(gf[kx]),
                                  "the derivation has no such term"))
        return out

    # time steps are paired before following expansions, which would blur them
    def pair_time_steps_first(self):
        self.early: list[Difference] = []
        ge, gf = self.group(self.expected), self.group(self.found)
        missing = [k for k in ge if k not in gf]
        extra = [k for k in gf if k not in ge]
        used_e, used_f = set(), set()
        for km in missing:
            for kx in extra:
                if kx in used_f or km[1] != kx[1] or not km[0] or len(km[0]) != len(kx[0]):
                    continue
                names_m = [(S.ref(s).kind, S.ref(s).name) for s in km[0]]
                names_x = [(S.ref(s).kind, S.ref(s).name) for s in kx[0]]
                if names_m != names_x or km[0] == kx[0]:
                    continue
                by = {S.ref(b).shift - S.ref(a).shift for a, b in zip(km[0], kx[0])}
                if len(by) != 1:
                    continue
                k = by.pop()
                used_e.add(km)
                used_f.add(kx)
                when = f"{abs(k)} step{'s' * (abs(k) != 1)} {'later' if k > 0 else 'earlier'}"
                self.early.append(Difference(
                    self.label(ge[km]), "wrong time step", _origins(ge[km]), _origins(gf[kx]),
                    f"{_names(kx[0])} is {when} than {_names(km[0])}"))
                break
        self.expected = [p for p in self.expected if _key(p.expr) not in used_e]
        self.found = [p for p in self.found if _key(p.expr) not in used_f]

    def partner(self, km, extra):
        """An extra key that is the missing one with a wrong matrix, transpose or gate."""
        deltas_m, op_m = km
        for kx in extra:
            deltas_x, op_x = kx
            if deltas_m and deltas_m == deltas_x and op_m != op_x:
                if op_m and op_x and op_m[0] in "TN" and op_x[0] in "TN":
                    if op_m[1] == op_x[1]:
                        return kx, "wrong matrix order or transpose", (
                            f"{op_x[1]}{'.T' if op_x[0] == 'T' else ''} where "
                            f"{op_m[1]}{'.T' if op_m[0] == 'T' else ''} belongs")
                    return kx, "wrong gate or parameter", f"{op_x[1]} instead of {op_m[1]}"
                if op_m and op_x and op_m[0] == op_x[0] == "outer":
                    return kx, "wrong matrix order or transpose", (
                        "the outer product's factors are swapped (a transposed gradient)")
                if op_m is None or op_x is None:
                    return kx, "wrong matrix order or transpose", (
                        "a matrix product is missing" if op_x is None
                        else "a matrix product where an element-wise product belongs")
        for kx in extra:
            deltas_x, op_x = kx
            if op_m == op_x and deltas_m and deltas_x and len(deltas_m) == len(deltas_x):
                shifts_m = [S.ref(s).shift for s in deltas_m]
                shifts_x = [S.ref(s).shift for s in deltas_x]
                if sorted(shifts_m) == sorted(shifts_x):
                    return kx, "wrong gate or parameter", (
                        f"{_names(deltas_x)} instead of {_names(deltas_m)}")
        return None

    def classify(self, e, f, key) -> tuple[str, str]:
        """Why two groups carrying the same delta differ."""
        se, sf = sp.expand(_strip_linear(e)), sp.expand(_strip_linear(f))
        if key[1] and key[1][0] in "TN" and sp.expand(se - sf) == 0:
            return "wrong matrix order or transpose", (
                "an element-wise factor is on the wrong side of the matrix product "
                "(A (u ⊙ v) is not (A u) ⊙ v)")
        if key[1] and key[1][0] == "outer" and sp.expand(se - sf) == 0:
            return "wrong matrix order or transpose", "an element-wise factor moved across outer()"
        ratio = sp.factor(sp.cancel(sf / se)) if se != 0 else None
        if ratio is not None and not ratio.has(*key[0]):
            if ratio == -1:
                return "wrong coefficient or sign", "the sign is wrong"
            if ratio.is_Number:
                return ("wrong coefficient or sign",
                        f"{format_expression(ratio)} times the expected term")
            for cand, text in self.derivatives(se, sf):
                if sp.expand(ratio - cand) == 0:
                    return "missing or doubled activation derivative", (
                        f"an extra factor {text}: the derivative is applied twice")
                if sp.expand(ratio * cand - 1) == 0 or sp.expand(sp.cancel(1 / ratio) - cand) == 0:
                    return "missing or doubled activation derivative", f"{text} is missing"
            for c1, t1 in self.derivatives(se, sf):
                for c2, t2 in self.derivatives(se, sf):
                    if c1 != c2 and sp.expand(sp.cancel(ratio - c1 / c2)) == 0:
                        if t1.split("(")[0] == t2.split("(")[0] and t1 != t2:
                            return "wrong gate or parameter", f"{t1} where {t2} belongs"
                        return "missing or doubled activation derivative", (
                            f"{t1} where {t2} belongs")
        if sp.expand(_untimed(se) - _untimed(sf)) == 0:
            return "wrong time step", self.time_detail(se, sf)
        swapped = self.swapped(se, sf)
        if swapped:
            return "wrong gate or parameter", swapped
        return "wrong coefficient or sign", "the factors multiplying the delta differ"

    def derivatives(self, *exprs):
        """Activation derivatives that could be involved: v(1−v), 1−v², 1−tanh(a)²."""
        out = []
        seen = set()
        for e in exprs:
            for sym in e.free_symbols:
                r = S.ref(sym)
                if r is None or r.kind != "value" or sym in seen:
                    continue
                seen.add(sym)
                for cand in (sym * (1 - sym), 1 - sym ** 2):
                    text = format_expression(cand, self.cell)
                    if "dsigmoid" in text or "dtanh" in text:
                        out.append((cand, text))
            for th in e.atoms(sp.tanh):
                if th not in seen:
                    seen.add(th)
                    cand = 1 - th ** 2
                    out.append((cand, format_expression(cand, self.cell)))
            for sg in e.atoms(S.sigmoid):
                if sg not in seen:
                    seen.add(sg)
                    out.append((sg * (1 - sg), f"dsigmoid({format_expression(sg.args[0])})"))
        return out

    def time_detail(self, se, sf) -> str:
        ve = {(S.ref(s).name, S.ref(s).shift) for s in se.free_symbols
              if S.ref(s) and S.ref(s).kind == "value"}
        vf = {(S.ref(s).name, S.ref(s).shift) for s in sf.free_symbols
              if S.ref(s) and S.ref(s).kind == "value"}
        wrong = sorted(vf - ve)
        right = sorted(ve - vf)
        if wrong and right:
            return (f"{', '.join(f'{n}[{S.time_label(k)}]' for n, k in wrong)} where "
                    f"{', '.join(f'{n}[{S.time_label(k)}]' for n, k in right)} belongs")
        return "a factor is taken at the wrong step"

    def swapped(self, se, sf) -> str:
        def names(e):
            return {(S.ref(s).kind, S.ref(s).name) for s in e.free_symbols
                    if S.ref(s) is not None and S.ref(s).kind in ("param", "value")}
        ne, nf = names(se), names(sf)
        if ne != nf and (nf - ne) and (ne - nf):
            return (f"{', '.join(sorted(n for _, n in nf - ne))} instead of "
                    f"{', '.join(sorted(n for _, n in ne - nf))}")
        return ""

    def label(self, pieces) -> str:
        labels = []
        for p in pieces:
            if p.label and p.label not in labels:
                labels.append(p.label)
        if len(labels) == 1:
            return labels[0]
        if labels:
            return "; ".join(labels)
        return "no path of the derivation"

    def extra_label(self, key) -> str:
        deltas, op = key
        if not deltas:
            return "a term that carries no delta"
        via = f" ({op[1]}{'.T' if op[0] == 'T' else ''})" if op and op[0] in "TN" else ""
        return f"no path of the derivation goes through {_names(deltas)}{via}"


def _origins(pieces) -> str:
    out = []
    for p in pieces:
        if p.origin not in out:
            out.append(p.origin)
    text = " + ".join(out)
    return text.replace("+ -", "- ")


def _names(deltas) -> str:
    return ", ".join(s.name for s in deltas)


def _untimed(e: sp.Expr) -> sp.Expr:
    """Every value at step t (to see whether only the time steps differ)."""
    sub = {}
    for s in e.free_symbols:
        r = S.ref(s)
        if r is not None and r.kind == "value" and r.shift != 0:
            sub[s] = S.value(r.name, 0)
    return sp.expand(e.xreplace(sub))
