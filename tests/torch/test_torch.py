"""derive.torch: the cells' custom operators and the modules built on them, against PyTorch.

Oracles: torch.autograd.gradcheck (float64 central differences) for the operators and
modules, torch.library.opcheck for the registrations, and nn.LSTM / nn.GRU / nn.RNN
with the same state_dict for the drop-ins (outputs and every gradient within 1e-10).
"""

import importlib.util
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import SHIPPED  # noqa: E402
from lstmp_torch import torch_lstmp  # noqa: E402
from torch.nn.utils.rnn import pack_padded_sequence  # noqa: E402

import derive  # noqa: E402
import derive.torch as dt  # noqa: E402

F64 = torch.float64
T, B, M, N = 4, 3, 5, 2          # T >= 3, B >= 2, M != N
SIZES = {"M": M, "N": N, "P": 3}  # the operators' sizes: a cell with P (lstmp) gets P = 3


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _operator_args(ops, g, dtype=F64):
    """Random x, fused weights, vectors and non-zero initial states of a cell, each at
    its sizes (SIZES; lstmp: R_★ (4·N, P), W_rm (P, N), y0 (B, P), c0 (B, N))."""
    x = torch.randn(T, B, M, dtype=dtype, generator=g)
    W = [0.5 * torch.randn(len(b) * SIZES[r], SIZES[s], dtype=dtype, generator=g)
         for b, r, s in zip(ops.blocks, ops.rows, ops.sizes)]
    V = [0.5 * torch.randn(SIZES[s], dtype=dtype, generator=g) for s in ops.vector_sizes]
    s0 = [0.5 * torch.randn(B, SIZES[ops.size[s]], dtype=dtype, generator=g)
          for s in ops.states]
    return x, W, V, s0


def _operator_fn(ops, final_states):
    """The operator as a function of its inputs: outputs and the chosen final states."""
    nW, nV = len(ops.blocks), len(ops.vectors)

    def fn(x, *rest):
        W, V, s0 = rest[:nW], rest[nW:nW + nV], rest[nW + nV:]
        outputs, finals = ops.run(x, W, V, dict(zip(ops.states, s0)))
        return (*outputs.values(), *(finals[s] for s in final_states))
    return fn


@pytest.mark.parametrize("cell", SHIPPED)
def test_operator_passes_gradcheck(cell):
    """Every shipped cell; the final states that are also outputs are used, the others
    (lstm's c_n) left unused: an undefined gradient counts as zero."""
    ops = dt.operators(cell)
    args = [a.requires_grad_() for a in _flatten(_operator_args(ops, _gen(1)))]
    used = [s for s in ops.states if s in ops.outputs]
    assert torch.autograd.gradcheck(_operator_fn(ops, used), args, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("final_states", [[], ["y"], ["c"], ["y", "c"]])
def test_final_states_used_or_not(final_states):
    """lstm_np's h_n (y) and c_n: c_n's gradient is where the kernel's carries start."""
    ops = dt.operators("lstm_np")
    args = [a.requires_grad_() for a in _flatten(_operator_args(ops, _gen(2)))]
    assert torch.autograd.gradcheck(_operator_fn(ops, final_states), args, atol=1e-8,
                                    rtol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("cell", SHIPPED)
def test_operator_passes_gradcheck_with_every_final_state(cell):
    ops = dt.operators(cell)
    args = [a.requires_grad_() for a in _flatten(_operator_args(ops, _gen(3)))]
    assert torch.autograd.gradcheck(_operator_fn(ops, ops.states), args, atol=1e-8,
                                    rtol=1e-6)


@pytest.mark.parametrize("cell", ["lstm_np", "gru", "rnn", "lstm", "lstmp"])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_opcheck(cell, dtype):
    ops = dt.operators(cell)
    args = [a.requires_grad_() for a in _flatten(_operator_args(ops, _gen(4), dtype))]
    torch.library.opcheck(ops.forward, tuple(args))


def test_operator_float32_agrees_with_float64():
    ops = dt.operators("lstm_np")
    args64 = _flatten(_operator_args(ops, _gen(5)))
    fn = _operator_fn(ops, ops.states)
    out64 = fn(*args64)
    out32 = fn(*(a.float() for a in args64))
    for a, b in zip(out32, out64):
        assert a.dtype == torch.float32
        assert (a.double() - b).abs().max() < 1e-5


def test_operator_uses_contiguous_inputs_without_copies():
    ops = dt.operators("gru")
    x, W, V, s0 = _operator_args(ops, _gen(6))
    cx, cW, cV, _ = ops.check(x, W, V, dict(zip(ops.states, s0)))
    assert cx is x and all(a is b for a, b in zip(cW, W)) and all(a is b for a, b in zip(cV, V))
    xt = x.transpose(0, 1).contiguous().transpose(0, 1)       # a strided view: copied once
    assert ops.check(xt, W, V, None)[0].is_contiguous()


def test_operator_called_directly_takes_strided_tensors():
    ops = dt.operators("gru")
    x, W, V, s0 = _operator_args(ops, _gen(21))
    strided = x.transpose(0, 1).contiguous().transpose(0, 1)
    a, b = ops.forward(x, *W, *V, *s0), ops.forward(strided, *W, *V, *s0)
    assert all(torch.equal(p, q) for p, q in zip(a, b))


@pytest.mark.parametrize("needs", [
    [False, True, True, True, True, True, True, True, True],      # the first layer: no δx
    [False, False, True, True, True, True, True, False, True],     # frozen W_x, no dy0
    [True, True, False, False, False, True, True, True, True],     # frozen R and two vectors
    [False, False, False, False, False, False, False, True, True]])  # initial states only
def test_backward_operator_returns_only_what_is_needed(needs):
    """needs: no δx for an input without grad, no gradient for a frozen parameter; what
    is computed equals the full backward bit for bit (final-state gradient given)."""
    ops = dt.operators("lstm_np")
    x, W, V, s0 = _operator_args(ops, _gen(7))
    nS, nA = len(ops.states), len(ops.stored)
    res = ops.forward(x, *W, *V, *s0)
    S, A, F = res[:nS], res[nS:nS + nA], res[nS + nA:]
    dS = [torch.randn(s.shape, dtype=F64, generator=_gen(8)) if k not in ops.hidden
          else None for k, s in enumerate(S)]
    dF = [torch.randn(f.shape, dtype=F64, generator=_gen(9)) for f in F]
    assert len(needs) == ops.n_inputs and len(F) == 1        # c's final value
    full = ops.backward(x, *W, *V, *s0, *S, *A, *dS, *dF, [True] * ops.n_inputs)
    grads = ops.backward(x, *W, *V, *s0, *S, *A, *dS, *dF, needs)
    for g, n, a, f in zip(grads, needs, [x, *W, *V, *s0], full):
        assert g.shape == (a.shape if n else (0,))
        assert not n or torch.equal(g, f)


def test_outputs_are_tensors_of_their_own_and_the_backward_reuses_the_buffer():
    """The outputs are the operator's own results for autograd, not views of a (T+1, B, N)
    result (whose gradient autograd would build from zeros and a copy), yet the backward
    finds that buffer behind them, no copy; a sequence whose storage does not hold s0 just
    before it (a clone) is rebuilt by a copy, to the same values."""
    from derive.torch.ops import _with_initial
    ops = dt.operators("lstm_np")
    x, W, V, s0 = _operator_args(ops, _gen(10))
    x.requires_grad_()
    outputs, _ = ops.run(x, W, V, dict(zip(ops.states, s0)))
    y = outputs["y"]
    assert y.shape == (T, B, N) and "_forward" in y.grad_fn.name()    # not SliceBackward
    S = ops.forward(x.detach(), *W, *V, *s0)[0]
    full = _with_initial(S, s0[0])
    assert full.data_ptr() + B * N * full.element_size() == S.data_ptr()
    copy = _with_initial(S.clone(), s0[0])
    assert copy.data_ptr() != S.data_ptr() and torch.equal(copy, full)
    assert torch.equal(full[0], s0[0]) and torch.equal(full[1:], S)
    other = s0[0] + 1                     # the row before S is not this initial state
    assert torch.equal(_with_initial(S, other)[0], other)


def test_frozen_parameters_and_input_get_no_gradient():
    torch.manual_seed(0)
    ref, mine = _pair("LSTM", num_layers=2)
    for m in (ref, mine):
        m.weight_ih_l0.requires_grad_(False)
    x = torch.randn(T, B, M, dtype=F64)
    for m in (ref, mine):
        out, _ = m(x)
        out.sum().backward()
    assert mine.weight_ih_l0.grad is None
    for (name, p), q in zip(ref.named_parameters(), mine.parameters()):
        if p.requires_grad:
            assert (p.grad - q.grad).abs().max() <= 1e-10, name


# --- drop-in modules against PyTorch ---------------------------------------------------------

def _pair(kind, hidden=N, **kw):
    """nn.<kind> and derive.torch.<kind> with the same state_dict, in float64."""
    ref = getattr(torch.nn, kind)(M, hidden, **kw).double()
    mine = getattr(dt, kind)(M, hidden, **kw).double()
    mine.load_state_dict(ref.state_dict())
    assert ([(n, p.shape) for n, p in mine.named_parameters()]
            == [(n, p.shape) for n, p in ref.named_parameters()])
    return ref, mine


def _run_both(ref, mine, x, hx, packed_lengths=None):
    """Outputs and every gradient of both modules under a random projection of every output."""
    results = []
    for m in (ref, mine):
        m.zero_grad()
        xs = x.detach().clone().requires_grad_(True)
        h = None if hx is None else tuple(t.detach().clone().requires_grad_(True) for t in hx)
        inp = xs if packed_lengths is None else pack_padded_sequence(
            xs, packed_lengths, batch_first=m.batch_first, enforce_sorted=False)
        arg = None if h is None else (h if isinstance(m, (torch.nn.LSTM, dt.LSTM)) else h[0])
        out, fin = m(inp, arg)
        out = out.data if packed_lengths is not None else out
        fins = fin if isinstance(fin, tuple) else (fin,)
        g = _gen(11)
        loss = sum((t * torch.randn(t.shape, dtype=F64, generator=g)).sum()
                   for t in (out, *fins))
        loss.backward()
        results.append(dict(out=out.detach(), fins=[f.detach() for f in fins],
                            dx=xs.grad, dh=[t.grad for t in h] if h else [],
                            dp={n: p.grad for n, p in m.named_parameters()}))
    return results


def _assert_same(r, d, tol=1e-10):
    assert (r["out"] - d["out"]).abs().max() <= tol
    for a, b in zip(r["fins"], d["fins"]):
        assert (a - b).abs().max() <= tol
    assert (r["dx"] - d["dx"]).abs().max() <= tol
    for a, b in zip(r["dh"], d["dh"]):
        assert (a - b).abs().max() <= tol
    for name, g in r["dp"].items():
        assert (g - d["dp"][name]).abs().max() <= tol, name


def _hx(kind, layers_dirs, batch, g, sizes=(N, N)):
    """Random initial states: (h_0, c_0) of sizes `sizes` for LSTM, (h_0,) otherwise."""
    n = 2 if kind == "LSTM" else 1
    return tuple(torch.randn(layers_dirs, batch, size, dtype=F64, generator=g)
                 for size in sizes[:n])


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_module_matches_torch(kind):
    """num_layers=2, bidirectional, batch_first, initial state given (float64, 1e-10)."""
    torch.manual_seed(1)
    ref, mine = _pair(kind, num_layers=2, bidirectional=True, batch_first=True)
    g = _gen(12)
    x = torch.randn(B, T, M, dtype=F64, generator=g)
    _assert_same(*_run_both(ref, mine, x, _hx(kind, 4, B, g)))


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_module_matches_torch_on_a_packed_sequence(kind):
    """Unequal lengths, unsorted: padded steps give zeros and receive no gradient."""
    torch.manual_seed(2)
    ref, mine = _pair(kind, num_layers=2, bidirectional=True)
    g = _gen(13)
    x = torch.randn(6, 4, M, dtype=F64, generator=g)
    lengths = [3, 6, 1, 3]
    r, d = _run_both(ref, mine, x, _hx(kind, 4, 4, g), packed_lengths=lengths)
    _assert_same(r, d)
    assert d["dx"][3:, 0].abs().max() == 0 and d["dx"][1:, 2].abs().max() == 0


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_packed_sequence_of_many_lengths_runs_by_segments(kind, monkeypatch):
    """Eight distinct lengths (and ties), batch_first: parity with PyTorch, and each
    direction runs one call per segment between consecutive distinct lengths, on the rows
    still active, so the steps run are the sum of the lengths."""
    torch.manual_seed(4)
    ref, mine = _pair(kind, num_layers=2, bidirectional=True, batch_first=True)
    g = _gen(14)
    lengths = [12, 1, 7, 3, 12, 5, 9, 2, 7, 11]
    x = torch.randn(len(lengths), 12, M, dtype=F64, generator=g)
    calls = []
    run = type(mine.ops).run
    monkeypatch.setattr(type(mine.ops), "run", lambda self, x, *a: calls.append(
        tuple(x.shape[:2])) or run(self, x, *a))
    r, d = _run_both(ref, mine, x, _hx(kind, 4, len(lengths), g), packed_lengths=lengths)
    _assert_same(r, d)
    ends = sorted(set(lengths))
    segments = [(end - start, sum(m >= end for m in lengths))
                for start, end in zip([0, *ends[:-1]], ends)]
    assert calls == segments * 2 * 2                                # layers × directions
    assert sum(t * b for t, b in segments) == sum(lengths)


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_module_matches_torch_unbatched_and_without_state(kind):
    torch.manual_seed(3)
    ref, mine = _pair(kind, bias=False)
    x = torch.randn(T, M, dtype=F64, generator=_gen(14))
    _assert_same(*_run_both(ref, mine, x, None))


def test_dropout_between_layers_as_torch():
    torch.manual_seed(4)
    ref, mine = _pair("GRU", num_layers=3, dropout=0.5)
    x = torch.randn(T, B, M, dtype=F64, generator=_gen(15))
    torch.manual_seed(99)
    a, _ = ref(x)
    torch.manual_seed(99)
    b, _ = mine(x)
    assert (a - b).abs().max() <= 1e-10          # the same masks from the same RNG state
    mine.eval()
    torch.manual_seed(99)
    c, _ = mine(x)
    assert (b - c).abs().max() > 1e-3            # eval: no dropout


# --- LSTM with a projection (proj_size) -------------------------------------------------------

NP, P = 4, 3                     # hidden size and projection: M = 5, N = 4, P = 3 all differ


@pytest.mark.parametrize("batch_first", [True, False])
def test_lstm_with_projection_matches_torch(batch_first):
    """num_layers=2 (the second layer's input is 2P), bidirectional, initial (h_0, c_0) of
    sizes P and N: outputs (size P), h_n (4, B, P), c_n (4, B, N) and every gradient,
    weight_hr_l0… included, within 1e-10 of nn.LSTM(proj_size=P) (float64)."""
    torch.manual_seed(6)
    ref, mine = _pair("LSTM", NP, num_layers=2, bidirectional=True, batch_first=batch_first,
                      proj_size=P)
    assert mine.weight_hr_l1_reverse.shape == (P, NP) and mine.weight_ih_l1.shape == (4 * NP, 2 * P)
    g = _gen(17)
    x = torch.randn(B, T, M, dtype=F64, generator=g)
    x = x if batch_first else x.transpose(0, 1).contiguous()
    r, d = _run_both(ref, mine, x, _hx("LSTM", 4, B, g, (P, NP)))
    assert d["out"].shape[-1] == 2 * P and [f.shape for f in d["fins"]] == [(4, B, P), (4, B, NP)]
    _assert_same(r, d)


def test_lstm_with_projection_state_dict_moves_both_ways():
    """derive's parameters into a fresh nn.LSTM(proj_size): the same outputs (unbatched,
    no initial state: zeros of sizes P and N)."""
    torch.manual_seed(7)
    mine = dt.LSTM(M, NP, num_layers=2, proj_size=P).double()
    ref = torch.nn.LSTM(M, NP, num_layers=2, proj_size=P).double()
    ref.load_state_dict(mine.state_dict())
    x = torch.randn(T, M, dtype=F64, generator=_gen(18))
    (a, (ha, ca)), (b, (hb, cb)) = ref(x), mine(x)
    assert a.shape == (T, P) and hb.shape == (2, P) and cb.shape == (2, NP)
    for u, v in ((a, b), (ha, hb), (ca, cb)):
        assert (u - v).abs().max() <= 1e-10


def test_lstm_with_projection_on_a_packed_sequence():
    """Unequal lengths (one of length 1: a segment of a single step), unsorted, 2 layers,
    bidirectional: parity with nn.LSTM(proj_size), padded steps receive no gradient."""
    torch.manual_seed(8)
    ref, mine = _pair("LSTM", NP, num_layers=2, bidirectional=True, proj_size=P)
    g = _gen(19)
    lengths = [3, 6, 1, 4, 6]
    x = torch.randn(6, len(lengths), M, dtype=F64, generator=g)
    r, d = _run_both(ref, mine, x, _hx("LSTM", 4, len(lengths), g, (P, NP)),
                     packed_lengths=lengths)
    _assert_same(r, d)
    assert d["dx"][3:, 0].abs().max() == 0 and d["dx"][1:, 2].abs().max() == 0


@pytest.mark.parametrize("lengths,finals", [(None, ("h", "c")), ([3, 1, 4], ("c",))])
def test_lstm_with_projection_passes_gradcheck(lengths, finals):
    torch.manual_seed(9)
    m = dt.LSTM(M, NP, num_layers=2, bidirectional=True, proj_size=P).double()
    g = _gen(20)
    x = torch.randn(T, B, M, dtype=F64, generator=g, requires_grad=True)
    h0, c0 = (torch.randn(4, B, n, dtype=F64, generator=g, requires_grad=True) for n in (P, NP))
    params = [p.detach().clone().requires_grad_() for p in m.parameters()]
    assert torch.autograd.gradcheck(_module_fn(m, "LSTM", lengths, finals),
                                    (x, h0, c0, *params), atol=1e-8, rtol=1e-6,
                                    fast_mode=True)


@pytest.mark.parametrize("make,error,message", [
    (lambda: dt.LSTM(M, NP, proj_size=NP), ValueError, "proj_size has to be smaller than hidden_size"),
    (lambda: dt.LSTM(M, NP, proj_size=-1), ValueError, "proj_size should be a positive integer"),
    (lambda: dt.LSTM(M, NP, proj_size=1.5), ValueError, "proj_size must be an integer"),
    (lambda: dt.GRU(M, NP, proj_size=1), ValueError, "only supported for LSTM"),
])
def test_bad_projection_is_torchs_kind_of_error(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_lstm_with_projection_checks_the_state_sizes():
    m = dt.LSTM(M, NP, proj_size=P).double()
    x = torch.randn(T, B, M, dtype=F64)
    with pytest.raises(ValueError, match=r"hx\[0\] \(h_0\) must have shape \(1, 3, 3\)"):
        m(x, (torch.zeros(1, B, NP, dtype=F64), torch.zeros(1, B, NP, dtype=F64)))
    with pytest.raises(ValueError, match=r"hx\[1\] \(c_0\) must have shape \(1, 3, 4\)"):
        m(x, (torch.zeros(1, B, P, dtype=F64), torch.zeros(1, B, P, dtype=F64)))


def _module_fn(module, kind, lengths=None, finals=("h",)):
    """The module as a function: its output and the final states named in `finals`."""
    names = [n for n, _ in module.named_parameters()]

    def fn(x, h0, c0, *params):
        inp = x if lengths is None else pack_padded_sequence(x, lengths, enforce_sorted=False)
        hx = (h0, c0) if kind == "LSTM" else h0
        out, fin = torch.func.functional_call(module, dict(zip(names, params)), (inp, hx))
        out = out if lengths is None else out.data
        fin = dict(zip("hc", fin)) if kind == "LSTM" else {"h": fin}
        return (out, *(fin[s] for s in finals))
    return fn


@pytest.mark.parametrize("kind,lengths,finals", [
    ("LSTM", None, ("h",)), ("LSTM", None, ("c",)), ("LSTM", None, ()),
    ("LSTM", [3, 1, 4], ("h", "c")), ("LSTM", [3, 1, 4], ("h",)), ("GRU", [2, 4, 4], ("h",))])
def test_module_passes_gradcheck(kind, lengths, finals):
    """2 layers, bidirectional, initial state given; a PackedSequence; h_n and c_n used
    or not. fast_mode: the Jacobian under random projections of inputs and outputs."""
    torch.manual_seed(5)
    m = getattr(dt, kind)(M, N, num_layers=2, bidirectional=True).double()
    g = _gen(16)
    x = torch.randn(T, B, M, dtype=F64, generator=g, requires_grad=True)
    h0, c0 = (torch.randn(4, B, N, dtype=F64, generator=g, requires_grad=True)
              for _ in range(2))
    params = [p.detach().clone().requires_grad_() for p in m.parameters()]
    assert torch.autograd.gradcheck(_module_fn(m, kind, lengths, finals), (x, h0, c0, *params),
                                    atol=1e-8, rtol=1e-6, fast_mode=True)


def test_recurrent_any_cell():
    """A peephole LSTM (cell "lstm") and a cell file, with the cells' own parameter names."""
    rnn = dt.Recurrent(str(Path(derive.__file__).parent / "cells" / "rnn.toml"), M, N,
                       num_layers=2).double()
    assert [n for n, _ in rnn.named_parameters()] == ["W_l0", "R_l0", "b_l0",
                                                      "W_l1", "R_l1", "b_l1"]
    nobias = dt.Recurrent("lstm", M, N, bias=False)
    assert sorted(n for n, _ in nobias.named_parameters() if "_l0" in n and n[0] in "bp") \
        == ["p_f_l0", "p_i_l0", "p_o_l0"]
    m = dt.Recurrent("lstm", M, N, bidirectional=True, batch_first=True).double()
    names = dict(m.named_parameters())
    assert names["p_f_l0_reverse"].shape == (N,) and names["W_z_l0"].shape == (N, M)
    bound = 1 / np.sqrt(N)
    assert all(p.abs().max() <= bound for p in m.parameters())
    g = _gen(17)
    x = torch.randn(B, T, M, dtype=F64, generator=g, requires_grad=True)
    hx = {"c": torch.randn(2, B, N, dtype=F64, generator=g, requires_grad=True)}
    out, finals = m(x, hx)
    assert out.shape == (B, T, 2 * N) and set(finals) == {"y", "c"}
    assert finals["c"].shape == (2, B, N)
    # the forward direction equals the kernel on the same parameters
    k = derive.load_kernel("lstm", "float64")
    params = {n[:-3]: p.detach().numpy() for n, p in names.items() if n.endswith("_l0")}
    tr = k.forward(np.ascontiguousarray(x.detach().transpose(0, 1).numpy()), params,
                   {"c": hx["c"][0].detach().numpy()})
    assert np.abs(tr.outputs - out[:, :, :N].detach().transpose(0, 1).numpy()).max() <= 1e-12
    params_t = [p.detach().clone().requires_grad_() for p in m.parameters()]
    fn = lambda x, c0, *ps: torch.func.functional_call(  # noqa: E731
        m, dict(zip(names, ps)), (x, {"c": c0}))[0]
    assert torch.autograd.gradcheck(fn, (x, hx["c"], *params_t), atol=1e-8, rtol=1e-6)


def test_recurrent_lstmp_matches_torch_lstm_with_projection():
    """Recurrent("lstmp", M, N, proj_size=P): the output (size P) and every gradient (x,
    y0, c0, each parameter) within 1e-10 of nn.LSTM(M, N, proj_size=P) with the mapped
    weights (tests/lstmp_torch.py), float64, non-zero initial states, random dy."""
    torch.manual_seed(8)
    m = dt.Recurrent("lstmp", M, NP, proj_size=P).double()
    names = dict(m.named_parameters())
    assert names["R_z_l0"].shape == (NP, P) and names["W_rm_l0"].shape == (P, NP)
    g = _gen(22)
    x = torch.randn(T, B, M, dtype=F64, generator=g, requires_grad=True)
    y0 = torch.randn(1, B, P, dtype=F64, generator=g, requires_grad=True)
    c0 = torch.randn(1, B, NP, dtype=F64, generator=g, requires_grad=True)
    dy = torch.randn(T, B, P, dtype=F64, generator=g)
    out, finals = m(x, {"y": y0, "c": c0})
    (out * dy).sum().backward()
    assert out.shape == (T, B, P) and finals["c"].shape == (1, B, NP)
    assert torch.equal(finals["y"][0], out[-1])
    params = {n[:-3]: p.detach().numpy() for n, p in names.items()}
    ref_out, ref = torch_lstmp(torch, params, x.detach().numpy(), y0[0].detach().numpy(),
                               c0[0].detach().numpy(), dy.numpy())
    assert np.abs(out.detach().numpy() - ref_out).max() <= 1e-10
    mine = {"x": x.grad, "y0": y0.grad[0], "c0": c0.grad[0],
            **{n[:-3]: p.grad for n, p in names.items()}}
    assert set(mine) == set(ref)
    for name, r in ref.items():
        assert np.abs(mine[name].numpy() - r).max() <= 1e-10, name


def test_recurrent_lstmp_stacked_passes_gradcheck():
    """2 layers, bidirectional: layer 2 reads 2·P features; states y (4, B, P), c (4, B, N)."""
    torch.manual_seed(9)
    m = dt.Recurrent("lstmp", M, NP, num_layers=2, bidirectional=True, proj_size=P).double()
    names = dict(m.named_parameters())
    assert names["W_z_l1_reverse"].shape == (NP, 2 * P) and "proj_size=3" in repr(m)
    g = _gen(23)
    x = torch.randn(T, B, M, dtype=F64, generator=g, requires_grad=True)
    y0 = torch.randn(4, B, P, dtype=F64, generator=g, requires_grad=True)
    c0 = torch.randn(4, B, NP, dtype=F64, generator=g, requires_grad=True)
    out, finals = m(x, {"y": y0, "c": c0})
    assert out.shape == (T, B, 2 * P) and finals["y"].shape == (4, B, P)
    params = [p.detach().clone().requires_grad_() for p in m.parameters()]

    def fn(x, y0, c0, *ps):
        out, finals = torch.func.functional_call(m, dict(zip(names, ps)),
                                                 (x, {"y": y0, "c": c0}))
        return out, finals["y"], finals["c"]
    assert torch.autograd.gradcheck(fn, (x, y0, c0, *params), atol=1e-8, rtol=1e-6,
                                    fast_mode=True)


@pytest.mark.parametrize("cell,proj_size,message", [
    ("lstmp", None, "lstmp has a second node size P: proj_size must be a positive integer, "
                    "not None"),
    ("lstmp", 0, "proj_size must be a positive integer, not 0"),
    ("lstmp", 2.5, "proj_size must be a positive integer, not 2.5"),
    ("lstm_np", 3, r"proj_size is not a size of lstm_np \(it has one node size N"),
])
def test_recurrent_proj_size_only_for_a_cell_with_p(cell, proj_size, message):
    with pytest.raises(ValueError, match=message):
        dt.Recurrent(cell, M, NP, proj_size=proj_size)

# --- torch.compile ------------------------------------------------------------------------------

class _Model(torch.nn.Module):
    def __init__(self, proj_size=0):
        super().__init__()
        hidden = NP if proj_size else N
        self.rnn = dt.LSTM(M, hidden, num_layers=2, bidirectional=True, batch_first=True,
                           proj_size=proj_size)
        self.head = torch.nn.Linear(2 * (proj_size or hidden), 1)

    def forward(self, x):
        out, (h, c) = self.rnn(x)
        return self.head(out[:, -1]).squeeze(-1) + c.sum()


@pytest.mark.parametrize("backend,proj_size", [
    ("aot_eager", 0), ("aot_eager", P), pytest.param("inductor", 0, marks=pytest.mark.slow)])
def test_compile_fullgraph_matches_eager(backend, proj_size):
    torch.manual_seed(6)
    model = _Model(proj_size).double()
    x = torch.randn(B, T, M, dtype=F64, generator=_gen(18))
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend=backend)   # a graph break raises
    results = []
    for m in (model, compiled):
        model.zero_grad()
        y = m(x)
        y.sum().backward()
        results.append((y.detach(), [p.grad.clone() for p in model.parameters()]))
    (y1, g1), (y2, g2) = results
    assert (y1 - y2).abs().max() <= 1e-12
    assert all((a - b).abs().max() <= 1e-12 for a, b in zip(g1, g2))


def test_export_sees_one_operator_per_sequence():
    model = _Model().double().eval()
    x = torch.randn(B, T, M, dtype=F64, generator=_gen(19))
    ep = torch.export.export(model, (x,))
    calls = [n for n in ep.graph.nodes if "derive" in str(n.target)]
    assert len(calls) == 4                      # 2 layers x 2 directions, whatever T is
    assert (ep.module()(x) - model(x)).abs().max() <= 1e-12


# --- bad input ------------------------------------------------------------------------------

@pytest.mark.parametrize("make,message", [
    (lambda m: (torch.randn(T, B, M + 1, dtype=F64),), "input_size=5"),
    (lambda m: (torch.randn(T, B, M),), "dtype torch.float64"),
    (lambda m: (torch.randn(T, B, M, dtype=F64, device="meta"),), "CPU tensor"),
    (lambda m: (torch.randn(T, B, M, 1, dtype=F64),), "3 dimensions"),
    (lambda m: (torch.randn(T, B, M, dtype=F64), (torch.zeros(1, B, N, dtype=F64),)),
     r"tuple \(h_0, c_0\) for LSTM, not a tuple of 1"),
    (lambda m: (torch.randn(T, B, M, dtype=F64),
                (torch.zeros(1, B + 1, N, dtype=F64), torch.zeros(1, B, N, dtype=F64))),
     r"hx\[0\] \(h_0\) must have shape \(1, 3, 2\) \(num_layers\*num_directions, batch"),
    (lambda m: (torch.randn(T, B, M, dtype=F64),
                (torch.zeros(1, B, N, dtype=F64), torch.zeros(1, B, N))),
     r"hx\[1\] \(c_0\) must have dtype torch.float64"),
    (lambda m: ("not a tensor",), "input must be a torch.Tensor of shape .* or a PackedSequence"),
])
def test_bad_input_names_the_argument(make, message):
    m = dt.LSTM(M, N).double()
    with pytest.raises(ValueError, match=message):
        m(*make(m))


def test_bad_operator_arguments_name_the_argument():
    ops = dt.operators("lstm_np")
    x, W, V, s0 = _operator_args(ops, _gen(20))
    with pytest.raises(ValueError, match=r"W1 \(operand y: R_z, R_i, R_f, R_o\) must have shape"):
        ops.run(x, [W[0], W[1][:, :1]], V, None)
    with pytest.raises(ValueError, match="b_f must have dtype torch.float64"):
        ops.run(x, W, [V[0], V[1], V[2].float(), V[3]], None)
    with pytest.raises(ValueError, match=r"initial state c must have shape \(3, 2\)"):
        ops.run(x, W, V, {"c": s0[1][:1]})
    with pytest.raises(ValueError, match="unknown states h"):
        ops.run(x, W, V, {"h": s0[0]})
    with pytest.raises(ValueError, match="dtype float32 or float64"):
        ops.run(x.to(torch.int64), W, V, None)


def test_bad_operator_arguments_of_a_cell_with_p_name_the_sizes():
    """lstmp: N and P read from the weights (W_x's rows, R_★'s columns), every other
    weight and the initial states checked against them."""
    ops = dt.operators("lstmp")
    x, W, V, s0 = _operator_args(ops, _gen(21))
    assert ops.operands == ("x", "y", "m") and ops.rows == ("N", "N", "P")
    with pytest.raises(ValueError, match=r"^W2 \(operand m: W_rm\) must have shape \(3, 2\) "
                                         r"\(k·P, N\) with M=5 \(from x\) and N=2 \(from W0\) "
                                         r"and P=3 \(from W1\), not \(2, 2\)$"):
        ops.run(x, [W[0], W[1], W[2][:2]], V, None)
    with pytest.raises(ValueError, match=r"initial state y must have shape \(3, 3\) \(B, P\)"):
        ops.run(x, W, V, {"y": s0[1]})
    outputs, finals = ops.run(x, W, V, None)
    assert outputs["y"].shape == (T, B, 3) and finals["c"].shape == (B, N)


def test_unsupported_options_are_clear_errors():
    with pytest.raises(NotImplementedError, match="relu"):
        dt.RNN(M, N, 1, "relu")
    with pytest.raises(ValueError, match="device must be the CPU"):
        dt.GRU(M, N, device="meta")
    with pytest.raises(ValueError, match="hidden_size must be a positive integer"):
        dt.GRU(M, 0)


# --- distributed data parallel ---------------------------------------------------------------

def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_match_one_process(tmp_path):
    """2 gloo processes on 127.0.0.1, each half the batch, against one on the whole batch."""
    worker = Path(__file__).with_name("torch_ddp_worker.py")
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, str(worker), str(rank), "2", str(port),
                               str(tmp_path / f"rank{rank}.pt")]) for rank in range(2)]
    spec = importlib.util.spec_from_file_location("torch_ddp_worker", worker)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(0, 1, 0, str(tmp_path / "single.pt"))       # meanwhile, in this process
    for p in procs:
        assert p.wait(timeout=300) == 0
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    one = torch.load(tmp_path / "single.pt")
    start = ranks[0]["start"]
    for name, p in one["end"].items():
        assert (p - start[name]).abs().max() > 1e-6, name          # it trained
        for r in ranks:
            assert (r["end"][name] - p).abs().max() <= 1e-10, name


def _flatten(args):
    x, W, V, s0 = args
    return [x, *W, *V, *s0]


# --- the example and the benchmark, shortened ----------------------------------------------------

def _load(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ROOT = Path(__file__).resolve().parents[2]


def test_adding_problem_example_short_run(tmp_path):
    pytest.importorskip("tqdm")
    pytest.importorskip("matplotlib")
    example = _load(ROOT / "examples" / "adding_problem.py")
    png = tmp_path / "adding.png"
    results = example.main(["lstm", "rnn", "gru", "--steps", "6", "--length", "12",
                            "--hidden", "8", "--batch", "8", "--quiet", "--out", str(png)])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [r["cell"] for r in results] == ["lstm", "rnn", "gru"]
    for r in results:
        assert len(r["loss"]) == len(r["grad_norm"]) == 6
        assert all(np.isfinite(r["loss"])) and all(n > 0 for n in r["grad_norm"])
        assert 0 <= r["accuracy"] <= 1
    x, target = example.adding_batch(5, 12, torch.Generator().manual_seed(0))
    assert (x[:, :, 1].sum(0) == 2).all()
    assert torch.allclose((x[:, :, 0] * x[:, :, 1]).sum(0), target)


def test_training_step_benchmark_runs():
    bench = _load(ROOT / "benchmarks" / "torch_bench.py")
    d, t = bench.training_step("GRU", (5, 3, 4, 6), torch.float64, 1)
    kern, op = bench.op_overhead("lstm_np", (5, 3, 4, 6), torch.float32, 1)
    assert min(d, t, kern, op) > 0
    cpu = bench.op_overhead_cpu("gru", (5, 3, 4, 6), torch.float64, 2)
    assert set(cpu) == {"kernel", "op"} and all(0 <= a <= b for a, b in cpu.values())
    skipped = bench.skipped_products("lstm_np", (5, 3, 4, 6), "float64", 1)
    assert set(skipped) == {"all", "no dx", "states only"} and min(skipped.values()) > 0
    assert "cpu" in bench.machine()


def test_training_step_benchmark_runs_lstmp_against_nn_lstm_with_proj_size():
    """Kind LSTMP: derive.torch.LSTM(proj_size=N // 2) against nn.LSTM(proj_size=N // 2)
    holding the same state_dict (their outputs agree), the operator and the kernel of
    lstmp with P = N // 2."""
    bench = _load(ROOT / "benchmarks" / "torch_bench.py")
    shape = (5, 3, 4, 6)
    mine, ref = bench._modules("LSTMP", shape, torch.float64)
    assert ref.proj_size == mine.proj_size == 3 and mine.ops.name == "lstmp"
    x = torch.randn(5, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(mine(x)[0], ref(x)[0], rtol=1e-12, atol=1e-12)
    d, t = bench.training_step("LSTMP", shape, torch.float64, 1)
    kern, op = bench.op_overhead("lstmp", shape, torch.float32, 1)
    skipped = bench.skipped_products("lstmp", shape, "float64", 1)
    assert min(d, t, kern, op, *skipped.values()) > 0
