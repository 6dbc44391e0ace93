"""The symbols of the step programs: unique, safe identifiers with their typed meaning."""

from __future__ import annotations

import keyword

import sympy as sp

from derive.kernel.plan.model import Kind, Ref

# identifiers a generated name must not take (Python, Cython and C words, builtins and
# the names the templates use at module level; the arrays of a call and the locals of
# the loops start with an underscore, which no identifier here does)
RESERVED = set(keyword.kwlist) | set(keyword.softkwlist) | {
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
    "fabs", "fabsf", "log1p", "log1pf", "sigmoid", "relu", "step", "softplus",
    "T", "B", "N", "M", "t",
    # arguments of the generated forward/backward functions
    "X", "W", "V", "S", "A", "G", "dY", "dG", "C", "acc", "dW", "dX",
}

#: the kinds of symbols that stand for a row of a node's or state's vector
_SIZED = (Kind.VALUE, Kind.PREVIOUS, Kind.DELTA, Kind.INCOMING, Kind.CARRY, Kind.ADJOINT)


class Symbols:
    """The symbol table of one plan: `new(ref, wanted)` is a fresh symbol whose name is
    a unique identifier (wanted, made safe), `refs` what each symbol stands for.

    Deterministic: identifiers depend only on the order of requests.
    """

    def __init__(self):
        self.refs: dict[sp.Symbol, Ref] = {}
        self._used: set[str] = set()
        self._by_ref: dict[Ref, sp.Symbol] = {}

    def new(self, ref: Ref, wanted: str) -> sp.Symbol:
        name = wanted
        while name in self._used or name in RESERVED or name.startswith("_"):
            name = name.lstrip("_") + "_" if name.startswith("_") else name + "_"
        self._used.add(name)
        sym = sp.Symbol(name)
        self.refs[sym] = ref
        return sym

    def of(self, ref: Ref, wanted: str) -> sp.Symbol:
        """The one symbol of `ref` (made on first request)."""
        if ref not in self._by_ref:
            self._by_ref[ref] = self.new(ref, wanted)
        return self._by_ref[ref]

    def temp(self, wanted: str) -> sp.Symbol:
        return self.new(Ref(Kind.TEMP), wanted)

    def kind(self, sym: sp.Symbol) -> Kind:
        return self.refs[sym].kind

    def row_size(self, cell, expr: sp.Expr) -> str:
        """The size (N or P) of the rows `expr` reads: that of its first vector (by name)
        of a node or state (value, previous value, delta, incoming gradient, carry or
        adjoint); N when it reads none. An auxiliary value's size, a reduction's row."""
        return next((cell.size(self.refs[s].name) for s in sorted(expr.free_symbols, key=str)
                     if self.refs[s].kind in _SIZED), "N")

    def cse(self, prefix: str = "_e"):
        """CSE temporaries `_e0`, `_e1` … of one program (a leading underscore: no other
        identifier has one; each program's locals are its own, so each counts from 0)."""
        k = 0
        while True:
            sym = sp.Symbol(f"{prefix}{k}")
            k += 1
            self.refs[sym] = Ref(Kind.TEMP)
            yield sym
