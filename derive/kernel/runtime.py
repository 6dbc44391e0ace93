"""Stage 6 — runtime: a Kernel runs a cell forward over a sequence and back (full BPTT).

    k = derive.load_kernel("lstm", dtype="float32")        # backend "cython" (default)
    params = k.init_params(input_size=M, hidden_size=N, seed=0)
    tr = k.forward(x, params, state0=None)                 # x: (T, B, M)
    tr.outputs                                             # (T, B, N), read-only view
    g = k.backward(tr, d_outputs)                          # every parameter, "x", "y0", "c0"

Sizes: M (input), N (hidden units) and, for a cell with a second node size (LSTMP's
projection, `proj_size`), P. Every array of a vector has the width of that vector's size:
`Kernel.size(name)` ("N" or "P") for a state, output or stored value (the layout's
"sizes" lists those of size P), a matrix the sizes of its paper shape (W_rm: P×N). The
sizes of a call are read from the arrays: M from x, N and P from the parameters (the
first dimension of the parameter shapes that say N or P); `init_params` takes P as
`proj_size` (required for a cell with P, refused for one without).

Both backends — the compiled Cython kernel and the NumPy reference generated from the
same plan — share one calling convention (see generated/<cell>/kernel.pyx), so this
module validates and allocates everything once for both. Every argument is checked in
Python before any C code runs: a wrong shape, ndim or dtype, a non-contiguous array, a
missing or extra parameter raise ValueError naming the argument and the expected shape.
Values are not checked: NaN and infinities propagate through the kernels.

Parameters are kept in the paper's shapes (W_z: N×M, R_z: N×N, p_i: N). The kernels use
fused weights per operand (rows [W_z; W_i; W_f; W_o] for x); `forward` packs the
parameters into such fused arrays (the trace's own copy, below).

A trace owns the values it was computed from: `forward` copies x, the parameters (the
fused weights and the vectors) and the initial state before it runs, and `backward`
computes with those copies, so a caller that refills its input buffer or updates its
parameters in place between the two (a data loader, an optimizer step) gets the
gradients of what `forward` saw. The cost is one copy of x (T·B·M values) and of the
parameters per call, a few percent of a forward pass (README, "Limits and costs").

The compiled kernels run on `Kernel.threads` threads (default: the CPUs this process
may use, or $DERIVE_NUM_THREADS), each on its own batch rows. In a child process made
by fork() they run on one thread: OpenMP's thread pool does not survive a fork, and a
parallel region in the child would wait forever for the parent's threads (use the
"spawn" or "forkserver" start method of multiprocessing for parallel kernels there).

Loading a built kernel imports neither SymPy nor the derivation.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from derive.errors import UserError
from derive.scratch import owner_tag, remove_stale

BACKENDS = ("cython", "numpy")
_INT32 = 2 ** 31 - 1


def load_kernel(cell, dtype="float64", backend: str | None = None) -> "Kernel":
    """The kernel of `cell` (a shipped name or a spec path) for `dtype`.

    backend "cython" (the default) is the compiled kernel: shipped cells were compiled
    at install, others compile on first use into the cache (seconds) and load from it
    afterwards. backend "numpy" is the NumPy reference generated from the same plan.
    With backend=None, a machine without a C compiler gets the NumPy reference (with a
    warning).
    """
    dt = _dtype(dtype)
    if backend not in (None, *BACKENDS):
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)} (or None), "
                         f"not {backend!r}")
    from derive.kernel import build
    if backend == "numpy":
        module, path = _reference_module(cell)
        return Kernel(module, "numpy", dt, path)
    try:
        module = build.load(cell)
    except build.BuildError as exc:
        if backend is None and shutil.which(build._cc()[0]) is None:
            warnings.warn(f"no C compiler ({build._cc()[0]}): using the NumPy reference "
                          f"backend ({exc.args[0].splitlines()[0]})", RuntimeWarning,
                          stacklevel=2)
            module, path = _reference_module(cell)
            return Kernel(module, "numpy", dt, path)
        raise
    return Kernel(module, "cython", dt, Path(module.__file__))


def _dtype(dtype) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"dtype must be float32 or float64, not {dtype!r}")
    return dt


_REFERENCE_LOCK = threading.Lock()


def _reference_module(cell):
    """The NumPy reference module of a cell, generated once into the cache and loaded
    once per process (under a lock: threads asking at once get the same module)."""
    from derive.kernel import build
    name, text, _ = build.spec_source(cell)
    key = build.fingerprint(text, kind="reference")[:20]
    folder = build.cache_dir() / "reference"
    path = folder / f"{name}-{key}.py"
    modname = f"derive_reference_{name}_{key}"
    with _REFERENCE_LOCK:
        if modname not in sys.modules:
            _load_reference(cell, name, folder, path, modname)
        return sys.modules[modname], path


def _load_reference(cell, name: str, folder: Path, path: Path, modname: str) -> None:
    """Generate the reference into `path` unless it is there, and import it; a cached file
    that does not import (truncated, corrupt) is generated again, with a warning."""
    from derive.kernel import build
    for attempt in (1, 2):
        if attempt == 2 or not path.exists():
            from derive.cell.spec import load_cell
            from derive.derivation import derive
            from derive.kernel.emit import reference_source
            build.usable_folder(folder)
            remove_stale(folder, ".*.py")  # what killed writers left
            source = reference_source(derive(load_cell(cell)))
            fd, tmp = tempfile.mkstemp(prefix=f".{name}-{owner_tag()}", suffix=".py",
                                       dir=folder)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(source)
            os.replace(tmp, path)  # atomic: concurrent writers write the same bytes
        spec = importlib.util.spec_from_file_location(modname, path)
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as exc:  # noqa: BLE001 - whatever a damaged file raises
            if attempt == 2:
                raise
            warnings.warn(f"derive: the cached NumPy reference {path} does not load "
                          f"({type(exc).__name__}: {exc}); generating it again",
                          RuntimeWarning, stacklevel=4)
            continue
        sys.modules[modname] = module
        return


@dataclass
class Trace:
    """What `forward` returns: the outputs, the final states, what `backward` needs."""

    outputs: object                       # (T, B, N) array, or {output: array}
    states: dict[str, np.ndarray]         # final state of each state, (B, N)
    kernel: "Kernel" = field(repr=False)
    x: np.ndarray = field(repr=False)
    W: tuple = field(repr=False)
    V: tuple = field(repr=False)
    S: tuple = field(repr=False)
    A: tuple = field(repr=False)
    sizes: tuple = field(repr=False)      # (T, B, M, N)
    dims: dict = field(default_factory=dict, repr=False)   # {"M": M, "N": N, "P": P}


class Kernel:
    """Forward and backward of one cell, one dtype, one backend."""

    def __init__(self, module, backend: str, dtype, path):
        from derive.kernel.abi import KERNEL_API
        if getattr(module, "KERNEL_API", None) != KERNEL_API:
            raise UserError(f"{path}: kernel built for another version of derive; rebuild "
                            f"it (derive build CELL --force)")
        self.module = module
        self.backend = backend
        #: the instruction-set level the module was compiled for (None: NumPy reference)
        self.isa = (getattr(module, "BUILD_INFO", None) or {}).get("isa")
        self.threads = default_threads()
        _watch_forks()
        self.dtype = np.dtype(dtype)
        self.path = path
        L = module.LAYOUT
        self.layout = L
        self.cell = L["cell"]
        self.input = L["input"]
        self.states = tuple(L["states"])
        self.outputs = tuple(L["outputs"])
        self.parameters = {n: tuple(s) for n, s in L["parameters"]}
        self.vectors = tuple(L["vectors"])
        self.operands = L["operands"]
        self.groups = L["groups"]
        self.stored = [s["name"] for s in L["stored"]]
        #: the vectors (states, outputs, stored values) whose size is not N: {name: "P"}
        self.sizes = dict(L.get("sizes", {}))
        #: the size of the rows of each operand's blocks (that of the nodes it feeds)
        self.rows = [self.parameters[op["blocks"][0][1]][0] for op in self.operands]
        #: the cell has a second node size P (init_params then needs proj_size)
        self.has_proj_size = any("P" in shape for shape in self.parameters.values())
        # where each matrix lives: [(operand index, block index)]
        self.blocks: dict[str, list[tuple[int, int]]] = {}
        for i, op in enumerate(self.operands):
            for k, (_node, matrix) in enumerate(op["blocks"]):
                self.blocks.setdefault(matrix, []).append((i, k))

    def __repr__(self):
        return (f"<derive Kernel {self.cell} {self.dtype.name} backend={self.backend} "
                f"path={self.path}>")

    def size(self, name: str) -> str:
        """The size ("N" or "P") of a state, output or stored value."""
        return self.sizes.get(name, "N")

    # --- parameters --------------------------------------------------------------------------
    def init_params(self, input_size: int, hidden_size: int, seed: int = 0,
                    proj_size: int | None = None) -> dict:
        """Random parameters in the paper's shapes: uniform in ±1/√N (like torch).

        proj_size is P, the second node size of a cell that has one (LSTMP: the size of
        its output y; nn.LSTM's proj_size): required for such a cell, refused otherwise.
        Matrices are views into fused buffers (one per operand, laid out as the kernel
        fuses them); vectors are separate arrays.
        """
        M, N = _size("input_size", input_size), _size("hidden_size", hidden_size)
        if self.has_proj_size != (proj_size is not None):
            raise ValueError(f"{self.cell}: proj_size (the size P) is "
                             + ("required" if self.has_proj_size
                                else "not a size of this cell"))
        dims = {"M": M, "N": N}
        if self.has_proj_size:
            dims["P"] = _size("proj_size", proj_size)
        rng = np.random.default_rng(seed)
        bound = 1.0 / np.sqrt(N)
        fused = [rng.uniform(-bound, bound, shape).astype(self.dtype)
                 for shape in self.weight_shapes(dims)]
        params = {}
        for name, shape in self.parameters.items():
            if len(shape) == 1:
                params[name] = rng.uniform(-bound, bound, dims[shape[0]]).astype(self.dtype)
            else:
                n = dims[shape[0]]
                i, k = self.blocks[name][0]
                params[name] = fused[i][k * n:(k + 1) * n]
                for i2, k2 in self.blocks[name][1:]:   # a matrix used in several blocks
                    fused[i2][k2 * n:(k2 + 1) * n] = params[name]
        return params

    def _check_params(self, params, M: int) -> dict:
        """The sizes {"M", "N"(, "P")} of a call, after checking every parameter's shape:
        each size read from the first parameter whose paper shape starts with it
        (`read_sizes`)."""
        if not isinstance(params, dict):
            raise ValueError(f"params must be a dict of parameter name -> array "
                             f"({', '.join(self.parameters)}), not {type(params).__name__}")
        missing, extra = _missing_and_unknown(params, self.parameters)
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing {', '.join(map(str, missing))}")
            if extra:
                parts.append(f"unknown {', '.join(map(str, extra))}")
            raise ValueError(f"params of {self.cell}: {'; '.join(parts)} (expected "
                             f"{', '.join(self.parameters)})")
        dims, source = {"M": M}, {"M": "x"}
        for name, shape in self.parameters.items():
            if shape[0] in dims:
                continue
            a = params[name]
            if not isinstance(a, np.ndarray) or a.ndim < 1:
                raise ValueError(f"params[{name!r}] must be a numpy array of shape "
                                 f"{_shape_text(shape)}")
            if a.shape[0] < 1:
                raise ValueError(f"params[{name!r}] is empty: the size {shape[0]} must be "
                                 f">= 1")
            read_sizes([(name, shape[:1], a.shape[:1])], dims, source)
        given = sizes_text(dims, source)
        for name, shape in self.parameters.items():
            _check_array(f"params[{name!r}]", params[name], shape_of(shape, dims),
                         self.dtype, f"{_shape_text(shape)} with {given}")
        return dims

    def weight_shapes(self, dims: dict) -> list[tuple[int, int]]:
        """The shape of each operand's fused weights (and of their gradient) in the sizes
        `dims`: k blocks of the size of the nodes it feeds (self.rows) by the size of the
        operand (`fused_shapes`, in sizes)."""
        return [shape_of(shape, dims) for shape in self.fused_shapes()]

    def fused_shapes(self) -> list[tuple]:
        """Each operand's fused weights' shape in sizes, ((k, rows), size): k·rows rows
        (lstm_np's x: ((4, "N"), "M"); lstmp's m: ((1, "P"), "N"))."""
        return [((len(op["blocks"]), rows), op["size"])
                for op, rows in zip(self.operands, self.rows)]

    def _fused(self, params, N: int, M: int, P: int | None = None) -> tuple:
        """The fused weights of each operand, its blocks packed into a new array (the
        trace's own copy, one per call whatever the caller's arrays are)."""
        dims = {"M": M, "N": N, "P": P}
        out = []
        for op, rows, shape in zip(self.operands, self.rows, self.weight_shapes(dims)):
            n = dims[rows]
            W = np.empty(shape, self.dtype)
            for j, (_node, matrix) in enumerate(op["blocks"]):
                W[j * n:(j + 1) * n] = params[matrix]
            out.append(W)
        return tuple(out)

    # --- forward ------------------------------------------------------------------------------
    def forward(self, x, params, state0=None) -> Trace:
        """Run the cell over x (T, B, M) from state0 ({state: (B, N)}, zeros if None)."""
        if not isinstance(x, np.ndarray):
            raise ValueError(f"x must be a numpy array of shape (T, B, M) and dtype "
                             f"{self.dtype.name}, not {type(x).__name__}")
        if x.ndim != 3:
            raise ValueError(f"x must have shape (T, B, M) (3 dimensions), not {x.shape}")
        T, B, M = x.shape
        if T < 1 or B < 1 or M < 1:
            raise ValueError(f"x must have shape (T, B, M) with T, B, M >= 1, not {x.shape}")
        _check_array("x", x, (T, B, M), self.dtype, "(T, B, M)")
        dims = self._check_params(params, M)
        N = dims["N"]
        if T * B > _INT32 or max(len(o["blocks"]) for o in self.operands) * N > _INT32:
            raise ValueError(f"x of shape {x.shape} with N={N} is too large for 32-bit BLAS")
        S = []
        for s, v in self._per_state("state0", state0, B, dims, contiguous=False).items():
            buf = np.empty((T + 1, B, dims[self.size(s)]), self.dtype)
            buf[0] = 0 if v is None else v
            S.append(buf)
        x = x.copy()  # the trace's own values: see the module docstring
        W = self._fused(params, N, M, dims.get("P"))
        V = tuple(params[v].copy() for v in self.vectors)
        A = tuple(np.empty((T, B, dims[self.size(a)]), self.dtype) for a in self.stored)
        S = tuple(S)
        self.forward_buffers(x, W, V, S, A)
        outputs = {}
        for o in self.outputs:
            arr = S[self.states.index(o)][1:] if o in self.states else A[self.stored.index(o)]
            view = arr.view()
            view.flags.writeable = False
            outputs[o] = view
        finals = {}
        for s, buf in zip(self.states, S):
            view = buf[T].view()
            view.flags.writeable = False
            finals[s] = view
        out = outputs[self.outputs[0]] if len(self.outputs) == 1 else outputs
        return Trace(out, finals, self, x, W, V, S, A, (T, B, M, N), dims)

    def _per_state(self, name, given, B, dims: dict, contiguous=True) -> dict:
        """{state: (B, N) array or None (not given)} from `given`, None or a dict of some
        of the states, checked (a ValueError naming `name` and what was expected); a
        state of size P: (B, P)."""
        if given is not None and not isinstance(given, dict):
            raise ValueError(f"{name} must be None or a dict of state name -> (B, N) array "
                             f"({', '.join(self.states)}), not {type(given).__name__}")
        given = {} if given is None else given
        _missing, extra = _missing_and_unknown(given, self.states)
        if extra:
            raise ValueError(f"{name} has unknown states {', '.join(map(str, extra))} "
                             f"(the states of {self.cell}: {', '.join(self.states)})")
        for s, v in given.items():
            _check_array(f"{name}[{s!r}]", v, (B, dims[self.size(s)]), self.dtype,
                         f"(B, {self.size(s)})", contiguous)
        return {s: given.get(s) for s in self.states}

    # --- backward -----------------------------------------------------------------------------
    def backward(self, trace: Trace, d_outputs, d_finals=None) -> dict:
        """Gradients of every parameter, the input and each initial state ("<state>0").

        d_outputs: the gradient of each output (T, B, N); d_finals: None or {state:
        (B, N)}, gradients of final states (trace.states) besides the outputs' last step
        (missing states: zeros)."""
        if not isinstance(trace, Trace) or trace.kernel.layout is not self.layout \
                or trace.kernel.dtype != self.dtype:
            raise ValueError(f"trace must be what this kernel's forward returned "
                             f"({self.cell}, {self.dtype.name})")
        T, B, M, N = trace.sizes
        dims = trace.dims
        if len(self.outputs) == 1 and not isinstance(d_outputs, dict):
            d_outputs = {self.outputs[0]: d_outputs}
        if not isinstance(d_outputs, dict):
            raise ValueError(f"d_outputs must be a dict of output name -> (T, B, N) array "
                             f"({', '.join(self.outputs)})")
        missing, extra = _missing_and_unknown(d_outputs, self.outputs)
        if missing or extra:
            raise ValueError(f"d_outputs must hold exactly the outputs "
                             f"{', '.join(self.outputs)} (missing: {', '.join(missing) or '-'}"
                             f"; unknown: {', '.join(map(str, extra)) or '-'})")
        dY = []
        for o in self.outputs:
            name = "d_outputs" if len(self.outputs) == 1 else f"d_outputs[{o!r}]"
            _check_array(name, d_outputs[o], (T, B, dims[self.size(o)]), self.dtype,
                         f"(T, B, {self.size(o)})")
            dY.append(d_outputs[o])
        C_in = None
        if d_finals is not None:
            C_in = [np.zeros((B, dims[self.size(s)]), self.dtype) if d is None else d
                    for s, d in self._per_state("d_finals", d_finals, B, dims).items()]
        g = self.backward_buffers(trace.x, trace.W, trace.V, trace.S, trace.A, dY, C_in=C_in)
        dW, acc, dX, C = g["W"], g["V"], g["x"], g["S"]
        grads = {}
        for name, shape in self.parameters.items():
            if len(shape) == 1:
                grads[name] = acc[self.vectors.index(name)]
            else:
                n = dims[shape[0]]
                parts = [dW[i][k * n:(k + 1) * n] for i, k in self.blocks[name]]
                grads[name] = parts[0] if len(parts) == 1 else sum(parts[1:], parts[0].copy())
        grads[self.input] = dX
        for s, c in zip(self.states, C):
            grads[f"{s}0"] = c
        return grads

    # --- caller-owned buffers (derive.torch) ----------------------------------------------------
    def forward_buffers(self, x, W, V, S, A) -> None:
        """`forward` on buffers the caller allocated and checked, without copies or a Trace.

        x (T, B, M); W the fused weights of each operand (self.operands: k·N rows, its
        blocks in order; k·P for an operand feeding nodes of size P, self.rows); V the
        vector parameters (self.vectors), (N,) each; S one (T+1, B, N) buffer per state
        holding the initial state in S[k][0]; A one (T, B, N) buffer per stored value
        (self.stored); a state or stored value of size P (self.size): (…, B, P). Fills
        S[k][1:] and A. Every array C-contiguous and of this kernel's dtype; the kernel
        checks the shapes.
        """
        T, B, M = x.shape
        dims = self._dims(x, S)
        N = dims["N"]
        G = tuple(np.empty((T, B, len(o["blocks"]) * dims[r]) if o["kind"] == "input"
                           else (B, len(o["blocks"]) * dims[r]), self.dtype)
                  for o, r in zip(self.operands, self.rows))
        self.module.forward(x, W, V, S, A, G, _threads(self.threads, T, B, M, N))

    def _dims(self, x, S) -> dict:
        """{"M", "N"(, "P")}: the sizes of a call on caller-owned buffers, from x and
        the states (`state_sizes`)."""
        return {"M": x.shape[2], **self.state_sizes(S)}

    def state_sizes(self, states) -> dict:
        """{"N": N(, "P": P)} from one array (or tensor) per state, in the order of
        self.states, each of its state's size in its last dimension: (B, n) initial
        states or (T+1, B, n) buffers (a cell with P has a state of each size)."""
        dims: dict[str, int] = {}
        for s, a in zip(self.states, states):
            dims.setdefault(self.size(s), a.shape[-1])
        return dims

    def backward_buffers(self, x, W, V, S, A, dY, needs=None, C_in=None) -> dict:
        """`backward` on the buffers of `forward_buffers`; dY one (T, B, N) per output.

        Returns {"W": fused weight gradients per operand, "V": vector gradients, "x": dX,
        "S": gradient of each initial state}, entries not in `needs` set to None. `needs`
        names what the caller wants ("x", "W<k>" for operand k, "V<k>", "S<k>"; None:
        everything); the kernel skips the products of the others (the δx product when
        "x" is not needed, the weight-gradient product of an operand whose "W<k>" is not)
        and the summing of unwanted vector gradients. The initial-state gradients are
        always computed (they are the carries of the time loop). C_in: None, or one
        (B, N) array per state, the gradients of the final states S[k][T] besides what
        reaches them through the outputs (dY[T-1]): the carries the backward starts from.
        """
        T, B, M = x.shape
        dims = self._dims(x, S)
        N = dims["N"]
        rows = {o["group"]: r for o, r in zip(self.operands, self.rows)}
        want = (lambda key: True) if needs is None else (lambda key: key in needs)
        dG = tuple(np.empty((T, B, len(g["nodes"]) * dims[rows[k]]), self.dtype)
                   for k, g in enumerate(self.groups))
        C = tuple(np.empty((B, dims[self.size(s)]), self.dtype) for s in self.states)
        acc = tuple(np.empty(N, self.dtype) for _ in self.vectors)
        dW = tuple(np.empty(shape, self.dtype) for shape in self.weight_shapes(dims))
        dX = np.empty((T, B, M), self.dtype)   # not touched (nor paged in) unless wanted
        want_dW = tuple(want(f"W{k}") for k in range(len(dW)))
        want_acc = tuple(want(f"V{k}") for k in range(len(acc)))
        self.module.backward(x, W, V, S, A, tuple(dY), dG, C, acc, dW, dX,
                             _threads(self.threads, T, B, M, N),
                             None if C_in is None else tuple(C_in), want("x"), want_dW,
                             want_acc)
        return {"W": [g if w else None for g, w in zip(dW, want_dW)],
                "V": [g if w else None for g, w in zip(acc, want_acc)],
                "x": dX if want("x") else None,
                "S": [g if want(f"S{k}") else None for k, g in enumerate(C)]}


_forked = False
_fork_watch = False


def _after_fork_in_child():
    global _forked
    _forked = True


def _watch_forks():
    """Note forks from the first kernel on (a hook registered once, not at import)."""
    global _fork_watch
    if not _fork_watch:
        os.register_at_fork(after_in_child=_after_fork_in_child)
        _fork_watch = True


#: below this many multiply-adds per call (T·B·N·(N+M)) a kernel runs on one thread:
#: starting and joining a thread team costs more than the work, and on a loaded machine
#: a waiting thread can lose whole scheduler slices (a gradient check of small shapes
#: took 21.7 s on 2 threads and 1.2 s on 1 with the other core busy)
SERIAL_BELOW = 1 << 20


def _threads(requested: int, T: int, B: int, M: int, N: int) -> int:
    """The threads a kernel call uses: `requested`, at most one per batch row; one for
    small calls (SERIAL_BELOW) and in a forked child."""
    if T * B * N * (N + M) < SERIAL_BELOW:
        return 1
    requested = min(requested, B)
    if _forked and requested > 1:
        warnings.warn("derive: kernels run on 1 thread in a forked child process (OpenMP "
                      "does not survive fork); use multiprocessing's 'spawn' or "
                      "'forkserver' start method to run them in parallel", RuntimeWarning,
                      stacklevel=3)
        return 1
    return requested


def default_threads() -> int:
    """$DERIVE_NUM_THREADS, else the CPUs this process may run on."""
    env = os.environ.get("DERIVE_NUM_THREADS", "").strip()
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            raise UserError(f"DERIVE_NUM_THREADS must be a whole number, not {env!r}") from None
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _size(name, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, not {value!r}")
    return int(value)


def _missing_and_unknown(given: dict, expected) -> tuple[list, list]:
    """The expected keys `given` lacks, and the keys it holds that are not expected."""
    return [k for k in expected if k not in given], [k for k in given if k not in expected]


def read_sizes(arrays, dims: dict, source: dict) -> None:
    """Fill in each size `dims` lacks ("N", "P") from the first of `arrays` whose shape
    has it, and in `source` the label of that array: `arrays` holds (label, shape in
    sizes, actual shape), a size written (k, "N") standing for k·N (a fused weight's
    k blocks: the length divided by k)."""
    for label, shape, actual in arrays:
        for size, n in zip(shape, actual):
            k, name = size if isinstance(size, tuple) else (1, size)
            if name not in dims:
                dims[name], source[name] = n // k, label


def shape_of(shape, dims: dict) -> tuple[int, ...]:
    """A shape in sizes (("N", "M"), or ((4, "N"), "P") for k·N rows) in numbers."""
    return tuple(s[0] * dims[s[1]] if isinstance(s, tuple) else dims[s] for s in shape)


def sizes_text(dims: dict, source: dict) -> str:
    """"M=5 (from x) and N=4 (from W_z)": a call's sizes and the array each came from."""
    return " and ".join(f"{k}={v} (from {source[k]})" for k, v in dims.items())


def _shape_text(shape) -> str:
    return "(" + ", ".join(shape) + ("," if len(shape) == 1 else "") + ")"


def _check_array(name, a, shape, dtype, meaning, contiguous=True):
    if not isinstance(a, np.ndarray):
        raise ValueError(f"{name} must be a numpy array of shape {tuple(shape)} {meaning} and "
                         f"dtype {dtype.name}, not {type(a).__name__}")
    if a.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)} {meaning}, not {a.shape}")
    if a.dtype != dtype:
        raise ValueError(f"{name} must have dtype {dtype.name} (the kernel's dtype), not "
                         f"{a.dtype}; convert it with .astype(np.{dtype.name})")
    if contiguous and not a.flags.c_contiguous:
        raise ValueError(f"{name} of shape {a.shape} must be C-contiguous; pass "
                         f"np.ascontiguousarray({name.split('[')[0]})")
