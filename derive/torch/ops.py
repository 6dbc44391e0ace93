"""A cell's kernel as two PyTorch custom operators: one forward, one backward per sequence.

    ops = operators("lstm_np")                      # a shipped name or a cell file; once each
    outputs, finals = ops.run(x, W, V, state0)      # differentiable; what the modules call

`torch.library.custom_op` registers, per cell (named by the cell and its spec hash):

    derive::<cell>_<hash>_forward(x, W0.., V0.., s0_0..) -> (S_0.., A_0.., F_0..)
    derive::<cell>_<hash>_backward(x, W0.., V0.., s0_0.., S_0.., A_0.., dS_0.., dA_0..,
        dF_0.., needs) -> (dx, dW0.., dV0.., ds0_0..)

x (T, B, M) the input; W<k> the fused weights of operand k of the kernel's layout (k·N rows,
its blocks in order, e.g. lstm_np: [W_z; W_i; W_f; W_o] for x, [R_z; …] for y); V<k> the
vector parameters (N,); s0_<k> the initial state k (B, N). The forward returns what the
backward needs: every state over the sequence S_k (T, B, N) (steps 1…T, row T-1 the final
state) and the kernel's stored values A_k (T, B, N); then F_j (B, N), a copy of the final
value of each state that is not an output (lstm_np's c). `run` returns them (outputs)
and views of them (final states). The stored values and the sequences of the states that
are not outputs are not differentiable (they exist for the backward operator): a
gradient reaches such a state through F_j only.

Sizes: M from x; N and, for a cell with a second node size (LSTMP: nn.LSTM's
proj_size), P. Every array of a vector has that vector's size (`Kernel.size`: "N" or
"P"), so "N" above reads "P" for those of size P: lstmp's state y is s0 (B, P), S (T, B,
P), its c (B, N); an operand feeding nodes of size P has k·P rows (`Kernel.rows`:
lstmp's W_rm (P, N)), an operand of size P has P columns (R_★ in (4·N, P)). `run`
(`check`) reads N and P from the fused weights' rows and columns (an initial state for
a size no weight has) and checks every argument against them; the operators read them
from the initial states (a cell with P has a state of each size).

The kernel takes each state as one (T+1, B, N) buffer, row 0 the initial state: S_k is
rows 1…T of that buffer, so the outputs are tensors of their own for autograd (their
gradient arrives as it is, with no (T+1, B, N) zeros-and-copy for a view), and the
backward finds the buffer again behind S_k (`_with_initial`: the row before S_k in its
storage, if it holds s0_k; else it rebuilds it by a copy).

Both operators have fake (meta) implementations and the pair is registered with
`register_autograd`, so autograd, `torch.compile(fullgraph=True)` and `torch.export` see
one opaque operator per sequence: compile time does not grow with T.

The gradient flags: `needs` (one bool per input of the forward operator, from autograd's
`needs_input_grad`) reaches the kernel (`Kernel.backward_buffers`), which skips the
products nobody needs: no δx product (T·B × k·N × M) for an input that does not require
grad (the first layer), no weight-gradient product for a frozen weight, no sum for a
frozen vector; those gradients come back as empty tensors (None to autograd).

Undefined output gradients (a final state nobody uses) count as zeros. The gradient of a
final state that is not an output of the cell (lstm's c_n, through F_j) is where the
kernel's backward starts its carries (C_in); a final state that is an output (h_n) is the
output's last step, its gradient part of dS.

Tensors are used in place, without copies, when they are contiguous: x, the fused
weights and the vectors are handed to the kernel as they are (`run` makes a
non-contiguous one contiguous); the states over the sequence are allocated once by the
forward operator.
"""

from __future__ import annotations

import numpy as np
import torch

from derive.kernel.runtime import load_kernel, read_sizes, shape_of, sizes_text

DTYPES = {torch.float32: "float32", torch.float64: "float64"}

_registry: dict[tuple[str, str], "CellOperators"] = {}


def operators(cell) -> "CellOperators":
    """The registered operators of `cell` (a shipped name, a cell file or a loaded Cell)."""
    kernel = load_kernel(cell, "float64")
    key = (kernel.cell, kernel.layout["spec_hash"])
    if key not in _registry:
        _registry[key] = CellOperators(cell, kernel)
    return _registry[key]


class CellOperators:
    """The forward and backward operators of one cell (float32 and float64, CPU)."""

    def __init__(self, cell, kernel64):
        self.cell = cell
        self.kernels = {"float64": kernel64}
        #: the float64 kernel: its layout gives the shapes and sizes of every dtype's call
        self.kernel64 = k = kernel64
        self.name = k.cell
        self.states = k.states
        self.outputs = k.outputs
        self.stored = tuple(k.stored)
        self.operands = tuple(o["name"] for o in k.operands)
        self.vectors = k.vectors
        self.blocks = tuple(tuple(m for _node, m in o["blocks"]) for o in k.operands)
        self.sizes = tuple(o["size"] for o in k.operands)
        #: the size of the rows of each operand's blocks ("N" or "P")
        self.rows = tuple(k.rows)
        #: the size ("N" or "P") of each state, output and stored value
        self.size = {v: k.size(v) for v in (*k.states, *k.outputs, *k.stored)}
        #: the size of each vector parameter (N)
        self.vector_sizes = tuple(k.parameters[v][0] for v in k.vectors)
        self.has_proj_size = k.has_proj_size
        nW, nV, nS, nA = len(self.operands), len(self.vectors), len(self.states), len(self.stored)
        self.n_inputs = 1 + nW + nV + nS
        self.stored_outputs = tuple(o for o in self.outputs if o not in self.states)
        #: the states that are not outputs: their final values are outputs F_j of their own
        self.hidden = tuple(k for k, s in enumerate(self.states) if s not in self.outputs)
        nF = len(self.hidden)
        base = f"derive::{self.name}_{k.layout['spec_hash']}"
        W = [f"Tensor W{i}" for i in range(nW)]
        V = [f"Tensor V{i}" for i in range(nV)]
        s0 = [f"Tensor s0_{i}" for i in range(nS)]
        S = [f"Tensor S{i}" for i in range(nS)]
        A = [f"Tensor A{i}" for i in range(nA)]
        dS = [f"Tensor? dS{i}" for i in range(nS)]
        dA = [f"Tensor? dA{i}" for i in range(len(self.stored_outputs))]
        dF = [f"Tensor? dF{j}" for j in range(nF)]
        fwd_schema = (f"(Tensor x, {', '.join(W + V + s0)}) -> "
                      f"({', '.join(['Tensor'] * (nS + nA + nF))})")
        self.n_outputs = nS + nA + nF  # one output (rnn: the state y alone) is a Tensor
        bwd_schema = (f"(Tensor x, {', '.join(W + V + s0 + S + A + dS + dA + dF)}, bool[] needs) -> "
                      f"({', '.join(['Tensor'] * self.n_inputs)})")
        self.forward = torch.library.custom_op(f"{base}_forward", self._forward_impl,
                                               mutates_args=(), device_types="cpu",
                                               schema=fwd_schema)
        self.forward.register_fake(self._forward_fake)
        self.backward = torch.library.custom_op(f"{base}_backward", self._backward_impl,
                                                mutates_args=(), device_types="cpu",
                                                schema=bwd_schema)
        self.backward.register_fake(self._backward_fake)
        self.forward.register_autograd(self._autograd_backward,
                                       setup_context=self._setup_context)

    def __repr__(self):
        return f"<derive.torch operators of {self.name}: {self.forward}, {self.backward}>"

    # --- kernels -----------------------------------------------------------------------------
    def kernel(self, dtype):
        name = DTYPES[dtype]
        if name not in self.kernels:
            self.kernels[name] = load_kernel(self.cell, name)
        return self.kernels[name]

    # --- argument lists ----------------------------------------------------------------------
    def _split(self, args, counts):
        out, i = [], 0
        for n in counts:
            out.append(list(args[i:i + n]))
            i += n
        return out

    def _forward_args(self, args):
        x = args[0]
        W, V, s0 = self._split(args[1:], (len(self.operands), len(self.vectors),
                                          len(self.states)))
        return x, W, V, s0

    def _backward_args(self, args):
        x = args[0]
        nW, nV, nS, nA = len(self.operands), len(self.vectors), len(self.states), len(self.stored)
        W, V, s0, S, A, dS, dA, dF = self._split(args[1:], (nW, nV, nS, nS, nA, nS,
                                                            len(self.stored_outputs),
                                                            len(self.hidden)))
        return x, W, V, s0, S, A, dS, dA, dF, list(args[-1])

    # --- forward -----------------------------------------------------------------------------
    def _forward_impl(self, *args):
        x, W, V, s0 = self._forward_args(args)
        kernel = self.kernel(x.dtype)
        T, B, _ = x.shape
        n = self.kernel64.state_sizes(s0)
        S = [torch.empty((T + 1, B, n[self.size[s]]), dtype=x.dtype) for s in self.states]
        for buf, s in zip(S, s0):
            buf[0].copy_(s)
        A = [torch.empty((T, B, n[self.size[a]]), dtype=x.dtype) for a in self.stored]
        kernel.forward_buffers(_np(x), tuple(map(_np, W)), tuple(map(_np, V)),
                               tuple(map(_np, S)), tuple(map(_np, A)))
        return self._result((*(buf[1:] for buf in S), *A,
                             *(S[k][T].clone() for k in self.hidden)))

    def _result(self, outputs: tuple):
        return outputs[0] if self.n_outputs == 1 else outputs

    def _forward_fake(self, *args):
        x, _W, _V, s0 = self._forward_args(args)
        T, B, _ = x.shape
        n = self.kernel64.state_sizes(s0)
        return self._result((*(x.new_empty((T + 1, B, n[self.size[s]]))[1:]
                               for s in self.states),
                             *(x.new_empty((T, B, n[self.size[a]])) for a in self.stored),
                             *(x.new_empty((B, n[self.size[self.states[k]]]))
                               for k in self.hidden)))

    # --- backward ----------------------------------------------------------------------------
    def _backward_impl(self, *args):
        x, W, V, s0, S, A, dS, dA, dF, needs = self._backward_args(args)
        T, B, M = x.shape
        n = self.kernel64.state_sizes(s0)
        S = [_with_initial(s, s_0) for s, s_0 in zip(S, s0)]
        dY = []
        for o in self.outputs:
            if o in self.states:
                d = dS[self.states.index(o)]
            else:
                d = dA[self.stored_outputs.index(o)]
            dY.append(np.zeros((T, B, n[self.size[o]]), DTYPES[x.dtype]) if d is None
                      else _np(d))
        C_in = None
        if any(d is not None for d in dF):  # the carries the backward starts from
            C_in = [np.zeros((B, n[self.size[s]]), DTYPES[x.dtype]) for s in self.states]
            for k, d in zip(self.hidden, dF):
                if d is not None:
                    C_in[k] = _np(d)
        keys = (["x"] + [f"W{i}" for i in range(len(W))] + [f"V{i}" for i in range(len(V))]
                + [f"S{i}" for i in range(len(S))])
        g = self.kernel(x.dtype).backward_buffers(
            _np(x), tuple(map(_np, W)), tuple(map(_np, V)), tuple(map(_np, S)),
            tuple(map(_np, A)), dY, needs={k for k, n in zip(keys, needs) if n}, C_in=C_in)
        grads = [g["x"], *g["W"], *g["V"], *g["S"]]
        return tuple(torch.from_numpy(a) if a is not None else x.new_empty((0,))
                     for a in grads)

    def _backward_fake(self, *args):
        x, W, V, s0, _S, _A, _dS, _dA, _dF, needs = self._backward_args(args)
        shapes = [x.shape, *(w.shape for w in W), *(v.shape for v in V), *(s.shape for s in s0)]
        return tuple(x.new_empty(shape if n else (0,)) for shape, n in zip(shapes, needs))

    # --- autograd ----------------------------------------------------------------------------
    def _setup_context(self, ctx, inputs, output):
        x, W, V, s0 = self._forward_args(inputs)
        nS = len(self.states)
        output = (output,) if self.n_outputs == 1 else output
        ctx.save_for_backward(x, *W, *V, *s0, *output[:nS + len(self.stored)])
        ctx.mark_non_differentiable(*(output[k] for k in self.hidden),
                                    *output[nS:nS + len(self.stored)])
        ctx.set_materialize_grads(False)

    def _autograd_backward(self, ctx, *grads):
        needs = list(ctx.needs_input_grad)
        if not any(needs):
            return (None,) * self.n_inputs
        nS = len(self.states)
        dS = [g if g is None else g.contiguous() for g in grads[:nS]]
        dA = [grads[nS + self.stored.index(o)] for o in self.stored_outputs]
        dA = [g if g is None else g.contiguous() for g in dA]
        dF = [g if g is None else g.contiguous() for g in grads[nS + len(self.stored):]]
        out = self.backward(*ctx.saved_tensors, *dS, *dA, *dF, needs)
        return tuple(g if n else None for g, n in zip(out, needs))

    # --- the differentiable call -------------------------------------------------------------
    def run(self, x, W, V, state0):
        """Run the cell over x (T, B, M) from state0 ({state: (B, N)}, zeros if missing;
        a state of size P: (B, P)).

        W: the fused weights per operand, V: the vector parameters (see the module
        docstring). Returns ({output: (T, B, N)}, {state: (B, N)}) (P for those of size
        P), views of what the forward operator returned. Checks every argument first
        (ValueError naming it and the sizes).
        """
        x, W, V, s0 = self.check(x, W, V, state0)
        res = self.forward(x, *W, *V, *s0)
        res = (res,) if self.n_outputs == 1 else res
        nS, nA = len(self.states), len(self.stored)
        S, A, F = res[:nS], res[nS:nS + nA], res[nS + nA:]
        outputs = {o: S[self.states.index(o)] if o in self.states
                   else A[self.stored.index(o)] for o in self.outputs}
        finals = {s: F[self.hidden.index(i)] if i in self.hidden else S[i][-1]
                  for i, s in enumerate(self.states)}
        return outputs, finals

    def check(self, x, W, V, state0):
        """The arguments of `run`, checked, contiguous and with every initial state.

        N and P (a cell with P) come from the first weight whose rows or columns have that
        size (else from an initial state of that size); every shape is checked against them.
        """
        check_tensor("x", x, "(T, B, M)")
        if x.dtype not in DTYPES:
            raise ValueError(f"x must have dtype float32 or float64, not {x.dtype}")
        if x.dim() != 3 or min(x.shape) < 1:
            raise ValueError(f"x must have shape (T, B, M) with T, B, M >= 1, not "
                             f"{tuple(x.shape)}")
        T, B, M = x.shape
        if len(W) != len(self.operands) or len(V) != len(self.vectors):
            raise ValueError(f"{self.name} takes {len(self.operands)} fused weights "
                             f"({', '.join(self.operands)}) and {len(self.vectors)} vectors "
                             f"({', '.join(self.vectors)}), not {len(W)} and {len(V)}")
        shapes = self.kernel64.fused_shapes()   # ((k, rows), size) per operand
        for i, w in enumerate(W):
            k, rows = len(self.blocks[i]), self.rows[i]
            check_tensor(f"W{i}", w, f"(k·{rows}, size)", x.dtype)
            if w.dim() != 2 or w.shape[0] % k:
                raise ValueError(f"W{i} (operand {self.operands[i]}: "
                                 f"{', '.join(self.blocks[i])}) must be a matrix of "
                                 f"{k}·{rows} rows, not {tuple(w.shape)}")
        state0 = {} if state0 is None else state0
        unknown = [s for s in state0 if s not in self.states]
        if unknown:
            raise ValueError(f"state0 has unknown states {', '.join(map(str, unknown))} "
                             f"(the states of {self.name}: {', '.join(self.states)})")
        # the sizes: from the weights' rows and columns, then (a size no weight has) from
        # an initial state
        dims, source = {"M": M}, {"M": "x"}
        read_sizes([(f"W{i}", shape, w.shape) for i, (shape, w) in enumerate(zip(shapes, W))]
                   + [(f"initial state {s}", (self.size[s],), state0[s].shape[1:])
                      for s in self.states if isinstance(state0.get(s), torch.Tensor)
                      and state0[s].dim() == 2], dims, source)
        missing = [n for n in (("N", "P") if self.has_proj_size else ("N",))
                   if n not in dims]
        if missing:
            raise ValueError(f"{self.name}: the size {', '.join(missing)} is given by no "
                             f"weight nor initial state")
        given = sizes_text(dims, source)
        for i, (w, shape) in enumerate(zip(W, shapes)):
            want = shape_of(shape, dims)
            if tuple(w.shape) != want:
                raise ValueError(f"W{i} (operand {self.operands[i]}: "
                                 f"{', '.join(self.blocks[i])}) must have shape {want} "
                                 f"(k·{self.rows[i]}, {self.sizes[i]}) with {given}, not "
                                 f"{tuple(w.shape)}")
        for name, size, v in zip(self.vectors, self.vector_sizes, V):
            check_tensor(name, v, f"({size},)", x.dtype, (dims[size],))
        s0 = []
        for s in self.states:
            v, size = state0.get(s), self.size[s]
            if v is None:
                v = x.new_zeros((B, dims[size]))
            check_tensor(f"initial state {s}", v, f"(B, {size})", x.dtype, (B, dims[size]))
            s0.append(v)
        return (x.contiguous(), [w.contiguous() for w in W], [v.contiguous() for v in V],
                s0)


def _with_initial(S, s0):
    """The (T+1, B, n) states s0, S[0], …, S[T-1] (n: the state's size): the forward's
    buffer behind S when the row before S in its storage holds s0 (no copy), else a new
    one (a copy)."""
    T, B, N = S.shape
    if (S.is_contiguous() and S.storage_offset() >= B * N
            and S.untyped_storage().nbytes() >= (S.storage_offset() + S.numel())
            * S.element_size()):
        full = S.as_strided((T + 1, B, N), (B * N, N, 1), S.storage_offset() - B * N)
        if torch.equal(full[0], s0):
            return full
    return torch.cat([s0.unsqueeze(0), S])


def _np(t):
    """The tensor's memory as a C-contiguous array (a copy only if it is not contiguous)."""
    return t.detach().contiguous().numpy()


def check_tensor(name, t, meaning, dtype=None, shape=None, of="the dtype of x"):
    """A CPU tensor of `dtype` and `shape`, or a ValueError naming it and what was expected."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape {meaning}, not "
                         f"{type(t).__name__}")
    if t.device.type != "cpu":
        raise ValueError(f"{name} must be a CPU tensor (derive's kernels run on the CPU), "
                         f"not on {t.device}")
    if dtype is not None and t.dtype != dtype:
        raise ValueError(f"{name} must have dtype {dtype} ({of}), not {t.dtype}")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)} {meaning}, not "
                         f"{tuple(t.shape)}")
