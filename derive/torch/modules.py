"""Recurrent modules on the cells' operators: drop-ins for nn.LSTM, nn.GRU, nn.RNN, and any cell.

    LSTM(input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
         bidirectional=False, proj_size=0, device=None, dtype=None)    # cell lstm_np
    GRU(...same...)                                                    # cell gru
    RNN(input_size, hidden_size, num_layers=1, nonlinearity="tanh", ...)   # cell rnn
    Recurrent(cell, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
              dropout=0.0, bidirectional=False, proj_size=None)        # any cell

The drop-ins have PyTorch's parameters (weight_ih_l0, weight_hh_l0, bias_ih_l0,
bias_hh_l0, …_reverse; gate order i,f,g,o for LSTM and r,z,n for GRU), so a state_dict
moves between them and nn.LSTM/GRU/RNN unchanged, and PyTorch's returns: `output, (h_n,
c_n)` for LSTM, `output, h_n` otherwise. The map to the cells (the same math, checked to
1e-10 against PyTorch in the tests):

    LSTM  i,f,g,o  ->  lstm_np  W_i, W_f, W_z, W_o (and R_★); b_★ = b_ih + b_hh
    GRU   r,z,n    ->  gru      W_r, W_u, W_h (and R_★); b_r = b_ir + b_hr,
                                b_u = b_iz + b_hz, b_h = b_in, b_hr = b_hn (inside r·(…))
    RNN            ->  rnn      W = weight_ih, R = weight_hh, b = b_ih + b_hh
    LSTM, proj_size=P -> lstmp  as LSTM, and W_rm = weight_hr; h_0, h_n and the output
                                have size P

Inputs: (T, B, M), or (B, T, M) with batch_first, or unbatched (T, M); a PackedSequence
of unequal lengths, each row run for its own length (padded steps give zeros and send no
gradient): the rows sorted by length, one operator call per segment of the time axis
between consecutive distinct lengths on the rows still active, each from the final
states of the one before (the work is the sum of the lengths). Dropout between layers
as PyTorch applies it (on every layer's output but the last, in training mode).

Recurrent has the cell's own parameter names with PyTorch's suffixes (W_z_l0, R_i_l1,
p_f_l0_reverse, …), initialised like `Kernel.init_params` (uniform in ±1/√N), takes an
initial state as a dict {state: (num_layers·num_directions, B, N)} and returns
`output, final_states`: the cell's (first) output over the sequence, (T, B, D·N), and a
dict {state: (num_layers·num_directions, B, N)} of the final states. A cell with a second
node size P (lstmp: nn.LSTM's proj_size) needs proj_size=P (refused for any other cell):
its parameters, states and output have their own sizes (lstmp: R_z_l0 (N, P), W_rm_l0
(P, N), the state and output y of size P, c of size N; layer 2's input D·P). A cell that
uses its input element-wise (a highway term (1 - r) ⊙ x) needs every layer's input of
its node's size: input_size = hidden_size (and one direction if it has several layers).
Cells with several inputs are refused (ValueError): run them with derive.load_kernel.
"""

from __future__ import annotations

import math
import numbers
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from derive.torch.ops import DTYPES, check_tensor, operators


class _Stack(nn.Module):
    """Layers × directions of one cell over a sequence: what every module here shares.

    A subclass names its parameters and says, per layer and direction, which tensor is
    each of the cell's parameters (`_cell_params`); `_states_in`/`_states_out` convert
    PyTorch's initial/final state conventions.
    """

    def __init__(self, cell, input_size, hidden_size, num_layers=1, bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False):
        super().__init__()
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size),
                            ("num_layers", num_layers)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        if (isinstance(dropout, bool) or not isinstance(dropout, numbers.Number)
                or not 0 <= dropout <= 1):
            raise ValueError(f"dropout must be a number in [0, 1], not {dropout!r}")
        if dropout > 0 and num_layers == 1:
            warnings.warn(f"dropout option adds dropout after all but last recurrent layer, "
                          f"so non-zero dropout expects num_layers greater than 1, but got "
                          f"dropout={dropout} and num_layers={num_layers}", stacklevel=3)
        self.input_size, self.hidden_size = int(input_size), int(hidden_size)
        self.num_layers, self.bias = int(num_layers), bool(bias)
        self.batch_first, self.dropout = bool(batch_first), float(dropout)
        self.bidirectional = bool(bidirectional)
        self.ops = operators(cell)

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    def _suffixes(self):
        """(layer, direction, suffix) in PyTorch's order: _l0, _l0_reverse, _l1, …"""
        for layer in range(self.num_layers):
            for d in range(self.num_directions):
                yield layer, d, f"_l{layer}" + ("_reverse" if d else "")

    def _layer_input(self, layer) -> int:
        return (self.input_size if layer == 0
                else self._state_size(self.ops.outputs[0]) * self.num_directions)

    def _state_size(self, state) -> int:
        """The size of a state or output: N here."""
        return self.hidden_size

    def extra_repr(self):
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        for name, default in (("bias", True), ("batch_first", False), ("dropout", 0.0),
                              ("bidirectional", False)):
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)}"
        if getattr(self, "proj_size", None):   # LSTM's and Recurrent's P
            s += f", proj_size={self.proj_size}"
        return s + f", cell={self.ops.name}"

    def reset_parameters(self):
        """Every parameter uniform in ±1/√N: Kernel.init_params's and nn.RNNBase's."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def flatten_parameters(self):
        """nn.RNNBase's cuDNN hook: nothing to do here."""

    # --- the cell's parameters, fused as its kernel takes them --------------------------------
    def _cell_params(self, suffix: str, dtype) -> dict:
        raise NotImplementedError

    def _weights(self, suffix, dtype):
        """The fused weights and the vectors of one layer and direction (`ops.run`'s W, V)."""
        p = self._cell_params(suffix, dtype)
        W = [p[b[0]] if len(b) == 1 else torch.cat([p[m] for m in b]) for b in self.ops.blocks]
        return W, [p[v] for v in self.ops.vectors]

    # --- forward -----------------------------------------------------------------------------
    def _dtype(self):
        return next(self.parameters()).dtype

    def _check_input(self, x):
        check_tensor("input", x, "(T, B, input_size) or a PackedSequence", self._dtype(),
                of="the parameters' dtype")
        if x.shape[-1] != self.input_size:
            raise ValueError(f"input must have input_size={self.input_size} features in its "
                             f"last dimension, not {x.shape[-1]} (shape {tuple(x.shape)})")

    def _run(self, input, hx):
        """(output, {state: (L·D, B, N)}, batched) for a tensor or a PackedSequence."""
        if isinstance(input, PackedSequence):
            self._check_input(input.data)
            x, lengths = pad_packed_sequence(input)
            lengths = lengths.tolist()
            state0 = self._initial(hx, x.shape[1], True, x)
            y, finals = self._layers(x, state0, lengths)
            if input.sorted_indices is not None:
                y = y.index_select(1, input.sorted_indices)
                lengths = [lengths[i] for i in input.sorted_indices.tolist()]
            data = pack_padded_sequence(y, lengths).data
            out = PackedSequence(data, input.batch_sizes, input.sorted_indices,
                                 input.unsorted_indices)
            return out, finals, True
        if isinstance(input, torch.Tensor) and input.dim() not in (2, 3):
            raise ValueError(f"input must have 3 dimensions ({'B, T' if self.batch_first else 'T, B'}"
                             f", input_size) or 2 (T, input_size) unbatched, not "
                             f"{input.dim()} (shape {tuple(input.shape)})")
        self._check_input(input)
        batched = input.dim() == 3
        x = input if not batched or not self.batch_first else input.transpose(0, 1)
        x = x if batched else x.unsqueeze(1)
        if min(x.shape) < 1:
            raise ValueError(f"input must not be empty (shape {tuple(input.shape)})")
        state0 = self._initial(hx, x.shape[1], batched, x)
        y, finals = self._layers(x, state0, None)
        if not batched:
            return y.squeeze(1), {s: f.squeeze(1) for s, f in finals.items()}, False
        return (y.transpose(0, 1) if self.batch_first else y), finals, True

    def _initial(self, hx, B, batched, x):
        """{state: (L·D, B, N)} from the module's hx (None: zeros)."""
        states = self._states_in(hx)
        out = {}
        for s, (label, t) in states.items():
            if t is None:
                continue
            want = (self.num_layers * self.num_directions, B, self._state_size(s))
            shape = want if batched else (want[0], want[2])
            check_tensor(label, t, f"(num_layers*num_directions{', batch' if batched else ''}, "
                              f"hidden_size)", x.dtype, shape, of="the input's")
            out[s] = t if batched else t.unsqueeze(1)
        return out

    def _layers(self, x, state0, lengths):
        """Run every layer and direction; x (T, B, M). Returns (T, B, D·N), finals."""
        finals = {s: [] for s in self.ops.states}
        first = self.ops.outputs[0]
        for layer in range(self.num_layers):
            outs = []
            for d in range(self.num_directions):
                suffix = f"_l{layer}" + ("_reverse" if d else "")
                weights = self._weights(suffix, x.dtype)
                i = layer * self.num_directions + d
                s0 = {s: v[i] for s, v in state0.items()}
                y, fin = self._direction(x, weights, s0, lengths, bool(d))
                outs.append(y[first])
                for s in self.ops.states:
                    finals[s].append(fin[s])
            x = outs[0] if len(outs) == 1 else torch.cat(outs, 2)
            if self.dropout and self.training and layer < self.num_layers - 1:
                x = F.dropout(x, self.dropout, True)
        return x, {s: torch.stack(v) for s, v in finals.items()}

    def _direction(self, x, weights, s0, lengths, reverse):
        """One direction of one layer: one operator call, or one per time segment.

        With unequal lengths (a PackedSequence), the rows are sorted by length and the time
        axis cut at each distinct length: each segment runs on the rows still active, from
        the final states of the segment before (so the work is Σ lengths, not B·T). The
        reverse direction runs each row's own steps backwards (a per-row reversal of x).
        """
        T, B, _ = x.shape
        if lengths is None or all(n == T for n in lengths):
            y, fin = self.ops.run(x.flip(0) if reverse else x, *weights, s0)
            return ({o: v.flip(0) for o, v in y.items()} if reverse else y), fin
        L = torch.tensor(lengths)
        if reverse:   # step t of row b reads x[L_b - 1 - t] (padded steps stay in place)
            t = torch.arange(T).unsqueeze(1)
            steps = torch.where(t < L, L - 1 - t, t)
            x = x.gather(0, steps.unsqueeze(2).expand(x.shape))
        order = torch.argsort(L, descending=True, stable=True)
        ys, fin = self._segments(x.index_select(1, order), weights,
                                 {s: v.index_select(0, order) for s, v in s0.items()},
                                 L[order].tolist())
        back = torch.argsort(order)
        ys = {o: v.index_select(1, back) for o, v in ys.items()}
        if reverse:
            ys = {o: v.gather(0, steps.unsqueeze(2).expand(v.shape)) for o, v in ys.items()}
        return ys, {s: v.index_select(0, back) for s, v in fin.items()}

    def _segments(self, x, weights, s0, lengths):
        """x (T, B, M) with rows sorted by length (descending): one call per segment of
        the time axis between consecutive distinct lengths, on its active rows (a prefix).
        Returns the outputs (T, B, ·), zero past each row's length, and each row's final
        states (B, N)."""
        B = x.shape[1]
        ys = {o: [] for o in self.ops.outputs}
        finals = {s: [] for s in self.ops.states}      # blocks of rows, last rows first
        state, start = s0, 0
        for end in sorted(set(lengths)):
            n = sum(1 for m in lengths if m >= end)      # the rows active in [start, end)
            y, fin = self.ops.run(x[start:end, :n], *weights,
                                   {s: v[:n] for s, v in state.items()})
            for o, v in y.items():
                ys[o].append(F.pad(v, (0, 0, 0, B - n)))
            done = sum(1 for m in lengths if m > end)   # rows [done, n) end here
            for s, v in fin.items():
                finals[s].append(v[done:n])
            state, start = fin, end
        return ({o: torch.cat(v) for o, v in ys.items()},
                {s: torch.cat(v[::-1]) for s, v in finals.items()})

    def _states_in(self, hx) -> dict:
        """{state: (label, tensor or None)} from the module's hx argument."""
        raise NotImplementedError


class Recurrent(_Stack):
    """Any cell (a shipped name or a cell file) as a recurrent module: see the module doc.

    forward(input, hx=None) -> (output, final_states): input (T, B, M) ((B, T, M) with
    batch_first; (T, M) unbatched; or a PackedSequence); hx None or a dict
    {state: (num_layers·num_directions, B, N)}; output (T, B, D·N) (the cell's first
    output); final_states {state: (num_layers·num_directions, B, N)}. proj_size: P, for
    a cell with a second node size (its states, outputs and parameters of size P have
    it); required for such a cell, refused for the others (ValueError).
    """

    def __init__(self, cell, input_size, hidden_size, num_layers=1, bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, proj_size=None):
        super().__init__(cell, input_size, hidden_size, num_layers, bias, batch_first,
                         dropout, bidirectional)
        self.dims = {"N": self.hidden_size}
        self.proj_size = None
        if self.ops.has_proj_size:
            if (isinstance(proj_size, bool) or not isinstance(proj_size, numbers.Integral)
                    or proj_size < 1):
                raise ValueError(f"{self.ops.name} has a second node size P: proj_size must "
                                 f"be a positive integer, not {proj_size!r}")
            self.proj_size = self.dims["P"] = int(proj_size)
        elif proj_size is not None:
            raise ValueError(f"proj_size is not a size of {self.ops.name} (it has one node "
                             f"size N, hidden_size): leave it out, not {proj_size!r}")
        size = self.ops.input_size     # an input used element-wise: its node's size
        for layer in range(self.num_layers) if size in self.dims else ():
            if self._layer_input(layer) != self.dims[size]:
                raise ValueError(f"{self.ops.name} uses its input element-wise, so every "
                                 f"layer's input has its size {size}={self.dims[size]}; "
                                 f"layer {layer} gets {self._layer_input(layer)}")
        kernel = self.ops.kernel(torch.float64)
        self.shapes = dict(kernel.parameters)
        # bias=False drops the biases (b, b_★), not the other vectors (peepholes p_★)
        self.biases = {v for v in self.ops.vectors
                       if v == "b" or v.startswith("b_")} if not bias else set()
        sizes = dict(self.dims)
        for layer, _d, suffix in self._suffixes():
            sizes["M"] = self._layer_input(layer)
            for name, shape in self.shapes.items():
                if name in self.biases:
                    continue
                self.register_parameter(name + suffix, nn.Parameter(
                    torch.empty(tuple(sizes[s] for s in shape))))
        self.reset_parameters()

    def _state_size(self, state):
        return self.dims[self.ops.size[state]]

    def _cell_params(self, suffix, dtype):
        return {name: getattr(self, name + suffix) if name not in self.biases
                else torch.zeros(self.hidden_size, dtype=dtype) for name in self.shapes}

    def _states_in(self, hx):
        if hx is None:
            return {}
        if not isinstance(hx, dict):
            raise ValueError(f"hx must be None or a dict of state name -> tensor "
                             f"({', '.join(self.ops.states)}), not {type(hx).__name__}")
        unknown = [s for s in hx if s not in self.ops.states]
        if unknown:
            raise ValueError(f"hx has unknown states {', '.join(map(str, unknown))} (the "
                             f"states of {self.ops.name}: {', '.join(self.ops.states)})")
        return {s: (f"hx[{s!r}]", v) for s, v in hx.items()}

    def forward(self, input, hx=None):
        out, finals, _ = self._run(input, hx)
        return out, finals


class _TorchStack(_Stack):
    """nn.RNNBase's parameters (weight_ih_l0, …, gates stacked) mapped onto a cell."""

    cell: str
    gates: int

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, proj_size=0, device=None, dtype=None):
        if proj_size and not isinstance(self, LSTM):
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        if device is not None and torch.device(device).type != "cpu":
            raise ValueError(f"device must be the CPU (derive's kernels run on the CPU), "
                             f"not {device}")
        if dtype is not None and dtype not in DTYPES:
            raise ValueError(f"dtype must be torch.float32 or torch.float64, not {dtype}")
        if isinstance(proj_size, bool) or not isinstance(proj_size, numbers.Integral):
            raise ValueError(f"proj_size must be an integer (0: no projection), not "
                             f"{proj_size!r}")
        if proj_size < 0:
            raise ValueError(f"proj_size should be a positive integer or zero to disable "
                             f"projections, not {proj_size}")
        super().__init__(self.projected_cell if proj_size else self.cell, input_size,
                         hidden_size, num_layers, bias, batch_first, dropout, bidirectional)
        if proj_size >= self.hidden_size:
            raise ValueError(f"proj_size has to be smaller than hidden_size (proj_size="
                             f"{proj_size}, hidden_size={self.hidden_size})")
        self.proj_size = int(proj_size)
        G, N = self.gates * self.hidden_size, self.hidden_size
        for layer, _d, suffix in self._suffixes():
            shapes = [("weight_ih", (G, self._layer_input(layer))),
                      ("weight_hh", (G, self._state_size("y")))]
            if self.bias:
                shapes += [("bias_ih", (G,)), ("bias_hh", (G,))]
            if self.proj_size:
                shapes += [("weight_hr", (self.proj_size, N))]
            for name, shape in shapes:
                self.register_parameter(name + suffix, nn.Parameter(
                    torch.empty(shape, dtype=dtype or torch.get_default_dtype())))
        self.reset_parameters()

    def _torch_params(self, suffix, dtype):
        """(weight_ih chunks, weight_hh chunks, bias_ih chunks, bias_hh chunks) per gate."""
        w_ih = getattr(self, "weight_ih" + suffix).chunk(self.gates)
        w_hh = getattr(self, "weight_hh" + suffix).chunk(self.gates)
        if self.bias:
            b_ih = getattr(self, "bias_ih" + suffix).chunk(self.gates)
            b_hh = getattr(self, "bias_hh" + suffix).chunk(self.gates)
        else:
            b_ih = b_hh = (torch.zeros(self.hidden_size, dtype=dtype),) * self.gates
        return w_ih, w_hh, b_ih, b_hh

    def _states_in(self, hx):
        return {"y": ("hx", hx)}

    def forward(self, input, hx=None):
        out, finals, _ = self._run(input, hx)
        return out, finals["y"]


class LSTM(_TorchStack):
    """Drop-in for torch.nn.LSTM on the cell lstm_np (see the module docstring).

    With proj_size=P (0 < P < N; Sak et al. 2014, nn.LSTM's math) it runs on the cell
    lstmp: the output and the recurrent state are h_t = W_hr m_t (size P), m_t = o_t ⊙
    tanh(c_t), and the gates read R h_{t-1} (weight_hh (4N, P), weight_hr (P, N) = W_rm).
    """

    cell, projected_cell, gates = "lstm_np", "lstmp", 4

    def _state_size(self, state):
        return self.proj_size if state == "y" and self.proj_size else self.hidden_size

    def _cell_params(self, suffix, dtype):
        (Wi, Wf, Wz, Wo), (Ri, Rf, Rz, Ro), b_ih, b_hh = self._torch_params(suffix, dtype)
        bi, bf, bz, bo = (a + b for a, b in zip(b_ih, b_hh))
        p = dict(W_z=Wz, W_i=Wi, W_f=Wf, W_o=Wo, R_z=Rz, R_i=Ri, R_f=Rf, R_o=Ro,
                 b_z=bz, b_i=bi, b_f=bf, b_o=bo)
        if self.proj_size:
            p["W_rm"] = getattr(self, "weight_hr" + suffix)
        return p

    def _states_in(self, hx):
        if hx is None:
            return {}
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            got = (f"a {type(hx).__name__} of {len(hx)}" if isinstance(hx, (tuple, list))
                   else type(hx).__name__)
            raise ValueError(f"hx must be None or a tuple (h_0, c_0) for LSTM, not {got}")
        return {"y": ("hx[0] (h_0)", hx[0]), "c": ("hx[1] (c_0)", hx[1])}

    def forward(self, input, hx=None):
        out, finals, _ = self._run(input, hx)
        return out, (finals["y"], finals["c"])


class GRU(_TorchStack):
    """Drop-in for torch.nn.GRU on the cell gru (see the module docstring)."""

    cell, gates = "gru", 3

    def _cell_params(self, suffix, dtype):
        (Wr, Wu, Wh), (Rr, Ru, Rh), (bir, biu, bih), (bhr, bhu, bhh) = \
            self._torch_params(suffix, dtype)
        return dict(W_r=Wr, W_u=Wu, W_h=Wh, R_r=Rr, R_u=Ru, R_h=Rh,
                    b_r=bir + bhr, b_u=biu + bhu, b_h=bih, b_hr=bhh)


class RNN(_TorchStack):
    """Drop-in for torch.nn.RNN on the cell rnn (tanh; relu has no shipped cell yet)."""

    cell, gates = "rnn", 1

    def __init__(self, *args, **kwargs):
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        if len(args) > 3:
            nonlinearity, args = args[3], args[:3] + args[4:]
        else:
            nonlinearity = kwargs.pop("nonlinearity", "tanh")
        if nonlinearity == "relu":
            raise NotImplementedError("derive.torch.RNN: nonlinearity='relu' needs a relu "
                                      "cell, which is not shipped yet; use 'tanh' or "
                                      "torch.nn.RNN")
        if nonlinearity != "tanh":
            raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or "
                             f"'relu'.")
        super().__init__(*args, **kwargs)
        self.nonlinearity = nonlinearity

    def _cell_params(self, suffix, dtype):
        (W,), (R,), (b_ih,), (b_hh,) = self._torch_params(suffix, dtype)
        return dict(W=W, R=R, b=b_ih + b_hh)
