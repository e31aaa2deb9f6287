"""Spike attention: the PyTorch references, the Triton kernels and the public functions.

Chain of references: ``naive_spike_attention`` (the quadratic definition, float64 here) <->
``naive_recurrent_spike_attention`` / ``fused_recurrent_spike_attention`` (token by token) <->
``chunk_spike_attention`` (Triton, chunked, with the backward). Without CUDA the Triton kernels run under
``TRITON_INTERPRET=1`` in float32 on small shapes; ``@pytest.mark.gpu`` tests repeat the comparison at
model sizes in float32, float16 and bfloat16.
"""

from __future__ import annotations

import importlib
import itertools
import os
from types import ModuleType

import pytest
import torch

from t4dm.kernels.spike_attention import spike_attention, spike_attention_step
from t4dm.kernels.spike_attention.naive import (
    naive_chunk_spike_attention,
    naive_recurrent_spike_attention,
    naive_spike_attention,
    naive_spike_attention_step,
)

from .sm90 import run_compile_check

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
if not CUDA:
    # the interpreter is chosen when a kernel is decorated and consulted again when it runs
    os.environ["TRITON_INTERPRET"] = "1"


def import_triton_module(name: str) -> ModuleType:
    """Import a module of Triton kernels, rebuilding it for the interpreter if it was imported without."""
    module = importlib.import_module(name)
    if not CUDA and not module.INTERPRET:
        importlib.reload(importlib.import_module("t4dm.kernels.spans"))  # the helpers the kernels call
        module = importlib.reload(module)
    return module


@pytest.fixture(scope="module")
def chunk():
    return import_triton_module("t4dm.kernels.spike_attention.chunk")


@pytest.fixture(scope="module")
def recurrent(chunk):
    return import_triton_module("t4dm.kernels.spike_attention.fused_recurrent")


@pytest.fixture
def nan_empty(monkeypatch):
    """Buffers the launchers allocate start as NaN, so an element a kernel never writes fails loudly."""
    real_empty, real_empty_like, real_new_empty = torch.empty, torch.empty_like, torch.Tensor.new_empty

    def filled(x: torch.Tensor) -> torch.Tensor:
        return x.fill_(float("nan")) if x.is_floating_point() else x

    monkeypatch.setattr(torch, "empty", lambda *a, **kw: filled(real_empty(*a, **kw)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **kw: filled(real_empty_like(*a, **kw)))
    monkeypatch.setattr(
        torch.Tensor, "new_empty", lambda self, *a, **kw: filled(real_new_empty(self, *a, **kw))
    )


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double(), ref.double()
    denominator = ref.norm().item()
    return (out - ref).norm().item() / (denominator if denominator > 0 else 1.0)


def assert_close(name: str, out: torch.Tensor | None, ref: torch.Tensor | None, tol: float) -> None:
    if ref is None:
        assert out is None or not out.double().abs().max().item(), f"{name}: expected zero gradient"
        return
    assert out is not None, f"{name}: missing"
    assert out.shape == ref.shape, f"{name}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    bad = ~torch.isfinite(out)
    assert not bad.any(), f"{name}: {int(bad.sum())} non-finite values, first at {bad.nonzero()[0].tolist()}"
    err = relative_error(out, ref)
    assert err <= tol, f"{name}: relative error {err:.2e} > {tol:.0e}"


def make_inputs(B, T, H, D, V, kind="spikes", dtype=torch.float32, device=DEVICE, seed=0):
    """q, k: binary spike trains (rate 0.25) or Gaussian; v Gaussian; log decays spread over heads from
    a window of ~1.5 steps to ~1000 steps."""
    gen = torch.Generator().manual_seed(seed)
    if kind == "spikes":
        q = (torch.rand(B, T, H, D, generator=gen) < 0.25).double()
        k = (torch.rand(B, T, H, D, generator=gen) < 0.25).double()
    else:
        q = torch.randn(B, T, H, D, generator=gen, dtype=torch.float64)
        k = torch.randn(B, T, H, D, generator=gen, dtype=torch.float64)
    v = torch.randn(B, T, H, V, generator=gen, dtype=torch.float64)
    log_decay = (
        -torch.logspace(-3, 0, H, dtype=torch.float64)
        if H > 1
        else torch.tensor([-0.05], dtype=torch.float64)
    )
    h0 = torch.randn(B, H, D, V, generator=gen, dtype=torch.float64)
    return [x.to(device=device, dtype=dtype) for x in (q, k, v)] + [
        log_decay.to(device=device, dtype=torch.float32),
        h0.to(device=device, dtype=torch.float32),
    ]


def run_with_grads(fn, inputs, do, dht):
    """Run ``fn(q, k, v, log_decay, h0) -> (o, ht)`` and backpropagate ``<o, do> + <ht, dht>``."""
    leaves = [x.detach().clone().requires_grad_() for x in inputs]
    o, ht = fn(*leaves)
    loss = (o.double() * do.double()).sum()
    if dht is not None:
        loss = loss + (ht.double() * dht.double()).sum()
    loss.backward()
    return o.detach(), ht.detach(), [x.grad for x in leaves]


def reference(inputs, do, dht):
    as64 = [x.detach().double() for x in inputs]
    return run_with_grads(
        lambda q, k, v, ld, h0: naive_spike_attention(q, k, v, ld, None, h0, True), as64, do, dht
    )


GRAD_NAMES = ("dq", "dk", "dv", "dlog_decay", "dh0")

# (B, T, H, D, V, kind, chunk_size): T = 1, 15, 63, 500 are the awkward lengths; D = 20 and V = 80 are
# not powers of two (V = 80 also makes two value blocks of 64)
CHUNK_CASES = [
    pytest.param(2, 1, 2, 16, 16, "spikes", 16, id="B2-T1-H2-D16-V16-spikes-C16"),
    pytest.param(1, 15, 2, 20, 80, "gaussian", 16, id="B1-T15-H2-D20-V80-gaussian-C16"),
    pytest.param(2, 63, 3, 16, 16, "spikes", 16, id="B2-T63-H3-D16-V16-spikes-C16"),
    pytest.param(1, 63, 2, 32, 32, "gaussian", 64, id="B1-T63-H2-D32-V32-gaussian-C64"),
    pytest.param(2, 500, 2, 16, 16, "spikes", 64, id="B2-T500-H2-D16-V16-spikes-C64"),
    pytest.param(1, 500, 1, 16, 24, "gaussian", 32, id="B1-T500-H1-D16-V24-gaussian-C32"),
]


# ----------------------------------------------------------------------------------------------------
# PyTorch forms


@pytest.mark.parametrize("T", [1, 15, 63, 500], ids=lambda t: f"T{t}")
def test_reference_forms_agree(T):
    """Quadratic definition <-> recurrence <-> chunked PyTorch form, forward, state and gradients."""
    inputs = [x.double() for x in make_inputs(2, T, 3, 8, 6, "gaussian", torch.float64, "cpu")]
    do = torch.randn(2, T, 3, 6, dtype=torch.float64)
    dht = torch.randn(2, 3, 8, 6, dtype=torch.float64)
    ref_o, ref_ht, ref_grads = reference(inputs, do, dht)
    for form in (
        lambda q, k, v, ld, h0: naive_recurrent_spike_attention(q, k, v, ld, None, h0, True),
        lambda q, k, v, ld, h0: naive_chunk_spike_attention(q, k, v, ld, None, h0, True, chunk_size=16),
    ):
        o, ht, grads = run_with_grads(form, inputs, do, dht)
        assert_close("o", o, ref_o, 1e-12)
        assert_close("ht", ht, ref_ht, 1e-12)
        for name, grad, ref_grad in zip(GRAD_NAMES, grads, ref_grads, strict=True):
            assert_close(name, grad, ref_grad, 1e-10)


def test_definition_by_hand():
    """One head, three tokens, scale 1: the formula written out."""
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]).reshape(1, 3, 1, 2)
    k = torch.tensor([[1.0, 1.0], [0.0, 1.0], [1.0, 0.0]]).reshape(1, 3, 1, 2)
    v = torch.tensor([[1.0], [10.0], [100.0]]).reshape(1, 3, 1, 1)
    g = 0.5
    log_decay = torch.tensor([torch.log(torch.tensor(g)).item()])
    o = spike_attention(q, k, v, log_decay, scale=1.0)
    expected = [
        1 * 1,  # t=0: q0.k0 = 1
        g * 1 * 1 + 1 * 10,  # t=1: q1.k0 = 1, q1.k1 = 1
        g**2 * 2 * 1 + g * 1 * 10 + 1 * 1 * 100,  # t=2: q2.k0 = 2, q2.k1 = 1, q2.k2 = 1
    ]
    assert torch.allclose(o.flatten(), torch.tensor(expected), rtol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_public_spike_attention_on_cpu_matches_reference(dtype):
    B, T, H, D, V = 2, 100, 3, 8, 8
    inputs = make_inputs(B, T, H, D, V, "gaussian", dtype=dtype, device="cpu")
    # the output gradient as a {dtype} output receives it: rounded to the dtype (the reference sees the same)
    gen = torch.Generator().manual_seed(7)
    do = torch.randn(B, T, H, V, generator=gen).to(dtype).float()
    dht = torch.randn(B, H, D, V, generator=gen)
    ref_o, ref_ht, ref_grads = reference(inputs, do, dht)
    o, ht, grads = run_with_grads(
        lambda q, k, v, ld, h0: spike_attention(q, k, v, ld, initial_state=h0, output_final_state=True),
        inputs,
        do,
        dht,
    )
    assert o.dtype == dtype and ht.dtype == torch.float32
    tol = 1e-5 if dtype == torch.float32 else 5e-3  # bfloat16: outputs and gradients are rounded to 8 bits
    assert_close("o", o, ref_o, tol)
    assert_close("ht", ht, ref_ht, 1e-5)
    for name, grad, ref_grad in zip(GRAD_NAMES, grads, ref_grads, strict=True):
        assert_close(name, grad, ref_grad, tol)


def test_spike_attention_returns_tensor_by_default():
    q, k, v, ld, _ = make_inputs(1, 5, 2, 4, 4, device="cpu")
    o = spike_attention(q, k, v, ld)
    assert isinstance(o, torch.Tensor) and o.shape == (1, 5, 2, 4)


def test_step_loop_equals_parallel_form():
    """Prefill with the chunked form, then decode token by token with the recurrent step."""
    B, T, H, D, V = 2, 40, 3, 8, 8
    q, k, v, ld, _ = make_inputs(B, T, H, D, V, device="cpu")
    o_all = spike_attention(q, k, v, ld)
    o_pre, state = spike_attention(q[:, :17], k[:, :17], v[:, :17], ld, output_final_state=True)
    outputs = [o_pre]
    for t in range(17, T):
        o_t, state = spike_attention_step(q[:, t], k[:, t], v[:, t], ld, state)
        outputs.append(o_t[:, None])
    assert_close("o", torch.cat(outputs, dim=1), o_all, 1e-5)
    ref_state = naive_spike_attention(q, k, v, ld, output_final_state=True)[1]
    assert_close("state", state, ref_state, 1e-5)


# ----------------------------------------------------------------------------------------------------
# Triton kernels (interpreter on CPU)


def _separate_reference(inputs, do, dht, lengths):
    """The quadratic reference on each packed sequence alone (float64): outputs concatenated, final states and
    initial-state gradients stacked, dq/dk/dv concatenated, d log_decay summed."""
    q, k, v, ld, h0 = inputs
    bounds = [0, *itertools.accumulate(lengths)]
    outs, states, grads = [], [], []
    for n, (bos, eos) in enumerate(itertools.pairwise(bounds)):
        part = [x[:, bos:eos] for x in (q, k, v)] + [ld, h0[n : n + 1]]
        o, ht, g = reference(part, do[:, bos:eos], dht[n : n + 1])
        outs.append(o), states.append(ht), grads.append(g)
    cat = lambda i: torch.cat([g[i] for g in grads], dim=1)  # noqa: E731
    ref_grads = [cat(0), cat(1), cat(2), sum(g[3] for g in grads), torch.cat([g[4] for g in grads])]
    return torch.cat(outs, dim=1), torch.cat(states), ref_grads


@pytest.mark.parametrize(
    ("lengths", "kind", "V", "chunk_size"),
    [
        pytest.param([1, 15, 40, 33], "spikes", 16, 16, id="N4-lengths-1-15-40-33-spikes-C16"),
        pytest.param([20, 1, 7], "gaussian", 80, 16, id="N3-lengths-20-1-7-gaussian-V80-C16"),
        pytest.param([64, 50], "spikes", 24, 32, id="N2-lengths-64-50-V24-C32"),
    ],
)
def test_chunk_kernel_variable_length(chunk, nan_empty, lengths, kind, V, chunk_size):
    """Sequences packed into one row with ``cu_seqlens`` (boundaries inside chunks) give what each gives
    alone: outputs, final states and every gradient (d log_decay summed over the sequences)."""
    T, H, D = sum(lengths), 2, 16
    q, k, v, ld, _ = make_inputs(1, T, H, D, V, kind)
    h0 = make_inputs(len(lengths), 1, H, D, V, seed=3)[4]
    inputs = [q, k, v, ld, h0]
    gen = torch.Generator().manual_seed(2)
    do = torch.randn(1, T, H, V, generator=gen).to(DEVICE)
    dht = torch.randn(len(lengths), H, D, V, generator=gen).to(DEVICE)
    cu_seqlens = torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32, device=DEVICE)
    ref_o, ref_ht, ref_grads = _separate_reference(inputs, do, dht, lengths)
    o, ht, grads = run_with_grads(
        lambda q, k, v, ld, h0: chunk.chunk_spike_attention(
            q, k, v, ld, None, h0, True, cu_seqlens=cu_seqlens, chunk_size=chunk_size
        ),
        inputs,
        do,
        dht,
    )
    assert ht.shape == (len(lengths), H, D, V)
    assert_close("o", o, ref_o, 1e-4)
    assert_close("ht", ht, ref_ht, 1e-4)
    for name, grad, ref_grad in zip(GRAD_NAMES, grads, ref_grads, strict=True):
        assert_close(name, grad, ref_grad, 1e-4)


def test_public_spike_attention_variable_length_on_cpu():
    lengths, H, D, V = [5, 1, 12], 2, 8, 6
    T = sum(lengths)
    q, k, v, ld, _ = make_inputs(1, T, H, D, V, "gaussian", device="cpu")
    h0 = make_inputs(3, 1, H, D, V, device="cpu", seed=4)[4]
    gen = torch.Generator().manual_seed(5)
    do, dht = torch.randn(1, T, H, V, generator=gen), torch.randn(3, H, D, V, generator=gen)
    inputs = [q, k, v, ld, h0]
    ref_o, ref_ht, ref_grads = _separate_reference(inputs, do, dht, lengths)
    cu_seqlens = torch.tensor([0, 5, 6, 18])
    o, ht, grads = run_with_grads(
        lambda q, k, v, ld, h0: spike_attention(
            q, k, v, ld, initial_state=h0, output_final_state=True, cu_seqlens=cu_seqlens
        ),
        inputs,
        do,
        dht,
    )
    assert_close("o", o, ref_o, 1e-5)
    assert_close("ht", ht, ref_ht, 1e-5)
    for name, grad, ref_grad in zip(GRAD_NAMES, grads, ref_grads, strict=True):
        assert_close(name, grad, ref_grad, 1e-5)
    with pytest.raises(ValueError, match="B must be 1"):
        spike_attention(*(torch.cat([x, x]) for x in (q, k, v)), ld, cu_seqlens=cu_seqlens)
    with pytest.raises(ValueError, match=r"initial_state must have shape \[N, H, D, V\]"):
        spike_attention(q, k, v, ld, initial_state=h0[:2], cu_seqlens=cu_seqlens)
    with pytest.raises(ValueError, match="rise strictly"):
        spike_attention(q, k, v, ld, cu_seqlens=torch.tensor([0, 6, 6, 18]))


@pytest.mark.parametrize(("B", "T", "H", "D", "V", "kind", "chunk_size"), CHUNK_CASES)
def test_chunk_kernel_matches_naive(chunk, nan_empty, B, T, H, D, V, kind, chunk_size):
    inputs = make_inputs(B, T, H, D, V, kind)
    gen = torch.Generator().manual_seed(1)
    do = torch.randn(B, T, H, V, generator=gen).to(DEVICE)
    dht = torch.randn(B, H, D, V, generator=gen).to(DEVICE)
    ref_o, ref_ht, ref_grads = reference(inputs, do, dht)
    o, ht, grads = run_with_grads(
        lambda q, k, v, ld, h0: chunk.chunk_spike_attention(
            q, k, v, ld, None, h0, True, chunk_size=chunk_size
        ),
        inputs,
        do,
        dht,
    )
    assert_close("o", o, ref_o, 1e-4)
    assert_close("ht", ht, ref_ht, 1e-4)
    for name, grad, ref_grad in zip(GRAD_NAMES, grads, ref_grads, strict=True):
        assert_close(name, grad, ref_grad, 1e-4)


def test_chunk_kernel_without_states(chunk, nan_empty):
    """No initial state, final state not requested: gradients come from ``o`` alone."""
    B, T, H, D, V = 1, 70, 2, 16, 16
    q, k, v, ld, _ = make_inputs(B, T, H, D, V, "gaussian")
    do = torch.randn(B, T, H, V).to(DEVICE)
    ref_o, _, ref_grads = run_with_grads(
        lambda q, k, v, ld: naive_spike_attention(q, k, v, ld, None, None, True),
        [x.double() for x in (q, k, v, ld)],
        do,
        None,
    )
    leaves = [x.clone().requires_grad_() for x in (q, k, v, ld)]
    o, ht = chunk.chunk_spike_attention(*leaves, chunk_size=32)
    assert ht is None
    (o * do).sum().backward()
    assert_close("o", o.detach(), ref_o, 1e-4)
    for name, leaf, ref_grad in zip(GRAD_NAMES[: len(leaves)], leaves, ref_grads, strict=True):
        assert_close(name, leaf.grad, ref_grad, 1e-4)


@pytest.mark.parametrize(
    ("B", "T", "H", "D", "V", "kind"),
    [
        pytest.param(2, 1, 2, 16, 16, "spikes", id="B2-T1-H2-D16-V16-spikes"),
        pytest.param(1, 63, 2, 20, 40, "gaussian", id="B1-T63-H2-D20-V40-gaussian"),
        pytest.param(1, 500, 2, 16, 16, "spikes", id="B1-T500-H2-D16-V16-spikes"),
    ],
)
def test_recurrent_kernel_matches_naive_and_chunk(chunk, recurrent, nan_empty, B, T, H, D, V, kind):
    """The chain: quadratic definition <-> fused recurrent <-> chunked, forward and final state."""
    q, k, v, ld, h0 = make_inputs(B, T, H, D, V, kind)
    ref_o, ref_ht = naive_spike_attention(*(x.double() for x in (q, k, v, ld)), None, h0.double(), True)
    rec_o, rec_ht = recurrent.fused_recurrent_spike_attention(
        q, k, v, ld, initial_state=h0, output_final_state=True
    )
    assert_close("recurrent o", rec_o, ref_o, 1e-4)
    assert_close("recurrent ht", rec_ht, ref_ht, 1e-4)
    with torch.no_grad():
        chunk_o, chunk_ht = chunk.chunk_spike_attention(
            q, k, v, ld, initial_state=h0, output_final_state=True
        )
    assert_close("chunk o vs recurrent", chunk_o, rec_o, 1e-4)
    assert_close("chunk ht vs recurrent", chunk_ht, rec_ht, 1e-4)


def test_recurrent_kernel_variable_length(recurrent, nan_empty):
    """Sequences packed into one row (``cu_seqlens``) give what each gives alone: outputs and final states."""
    lengths, H, D, V = [1, 15, 40, 33], 2, 16, 24
    T = sum(lengths)
    q, k, v, ld, _ = make_inputs(1, T, H, D, V, "spikes")
    h0 = make_inputs(len(lengths), 1, H, D, V, seed=3)[4]
    cu_seqlens = torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int64, device=DEVICE)
    o, ht = recurrent.fused_recurrent_spike_attention(
        q, k, v, ld, initial_state=h0, output_final_state=True, cu_seqlens=cu_seqlens
    )
    assert o.shape == (1, T, H, V) and ht.shape == (len(lengths), H, D, V)
    for n, (bos, eos) in enumerate(itertools.pairwise(cu_seqlens.tolist())):
        part = [x[:, bos:eos].double() for x in (q, k, v)]
        ref_o, ref_ht = naive_spike_attention(*part, ld.double(), None, h0[n : n + 1].double(), True)
        assert_close(f"o of sequence {n}", o[:, bos:eos], ref_o, 1e-4)
        assert_close(f"ht of sequence {n}", ht[n : n + 1], ref_ht, 1e-4)
    with pytest.raises(ValueError, match="cu_seqlens"):
        recurrent.fused_recurrent_spike_attention(
            q, k, v, ld, cu_seqlens=torch.tensor([0, 5, 3], device=DEVICE)
        )


def test_fused_step_matches_naive_step(recurrent, nan_empty):
    B, H, D, V = 3, 2, 20, 40
    q, k, v, ld, state = make_inputs(B, 1, H, D, V, "gaussian")
    q, k, v = q[:, 0], k[:, 0], v[:, 0]
    before = state.clone()
    o, new_state = recurrent.fused_spike_attention_step(q, k, v, ld, state, D**-0.5)
    ref_o, ref_state = naive_spike_attention_step(
        q.double(), k.double(), v.double(), ld.double(), state.double()
    )
    assert torch.equal(state, before), "the step must not modify its input state"
    assert_close("o", o, ref_o, 1e-5)
    assert_close("state", new_state, ref_state, 1e-5)


@pytest.mark.parametrize("lengths", [None, [7, 20, 3]], ids=["fixed", "packed"])
def test_operators_pass_opcheck(chunk, lengths):
    """Schema, fake shapes, the registered autograd and AOT dispatch of torch.ops.t4dm.spike_attention_*."""
    from t4dm.kernels.varlen import Chunks

    B, T = (2, 21) if lengths is None else (1, sum(lengths))
    H, D, V, C = 2, 16, 24, 16
    q, k, v, ld, _ = make_inputs(B, T, H, D, V, "gaussian")
    n_seq = B if lengths is None else len(lengths)
    h0 = make_inputs(n_seq, 1, H, D, V, seed=5)[4]
    cu = None if lengths is None else torch.tensor([0, *itertools.accumulate(lengths)], device=DEVICE)
    parts = Chunks(B, T, C, cu).parts()
    leaves = [x.clone().requires_grad_() for x in (q, k, v, ld, h0)]
    args = (*leaves[:4], D**-0.5, leaves[4], True, True, C, None, *parts)
    torch.library.opcheck(chunk._spike_attention_fwd_op, args)
    o, ht, hc = (x.detach() for x in chunk._spike_attention_fwd_op(*args))
    do, dht = torch.randn_like(o), torch.randn_like(ht)
    bwd_args = (q, k, v, ld, D**-0.5, hc, do, dht, True, C, None, *parts)
    torch.library.opcheck(chunk._spike_attention_bwd_op, bwd_args)


@pytest.mark.parametrize("final", [True, False], ids=["final-state", "no-final-state"])
def test_recurrent_operator_passes_opcheck_and_compiles(recurrent, final):
    """torch.ops.t4dm.spike_attention_recurrent (forward only): opcheck, and a compiled decoding step."""
    q, k, v, ld, h0 = make_inputs(2, 5, 2, 16, 24, "gaussian")
    torch.library.opcheck(recurrent._spike_attention_recurrent_op, (q, k, v, ld, 0.25, h0, final, None))
    torch.library.opcheck(recurrent._spike_attention_recurrent_op, (q, k, v, ld, 0.25, None, final, None))
    packed = torch.tensor([0, 3, 4, 10], dtype=torch.int32, device=DEVICE)  # three sequences in one row of 10
    q1, k1, v1, _, _ = make_inputs(1, 10, 2, 16, 24, "gaussian", seed=2)
    h3 = make_inputs(3, 1, 2, 16, 24, seed=3)[4]
    torch.library.opcheck(recurrent._spike_attention_recurrent_op, (q1, k1, v1, ld, 0.25, h3, final, packed))
    torch._dynamo.reset()
    step = torch.compile(recurrent.fused_spike_attention_step, fullgraph=True, backend="aot_eager")
    o, state = step(q[:, 0], k[:, 0], v[:, 0], ld, h0, 0.25)
    ref_o, ref_state = naive_spike_attention_step(
        *(x.double() for x in (q[:, 0], k[:, 0], v[:, 0], ld, h0)), 0.25
    )
    assert_close("o", o, ref_o, 1e-5)
    assert_close("state", state, ref_state, 1e-5)


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_compiles_in_one_graph_and_matches_the_reference(chunk, dynamic):
    """torch.compile(fullgraph=True) through the chunked kernels, forward and backward (fixed-length
    batches: a packed batch reads cu_seqlens on the host first, which breaks the graph)."""
    torch._dynamo.reset()

    def run(q, k, v, ld, h0):
        return chunk.chunk_spike_attention(q, k, v, ld, None, h0, True, chunk_size=16)

    compiled = torch.compile(run, fullgraph=True, dynamic=dynamic, backend="aot_eager")
    for T in (21, 40):  # a second length: one graph with dynamic shapes, a recompile without
        inputs = make_inputs(1, T, 2, 16, 16, seed=T)
        do, dht = torch.randn(1, T, 2, 16).to(DEVICE), torch.randn(1, 2, 16, 16).to(DEVICE)
        ref_o, ref_ht, ref_grads = reference(inputs, do, dht)
        o, ht, grads = run_with_grads(compiled, inputs, do, dht)
        assert_close("o", o, ref_o, 1e-4)
        assert_close("ht", ht, ref_ht, 1e-4)
        for name, grad, ref_grad in zip(GRAD_NAMES, grads, ref_grads, strict=True):
            assert_close(name, grad, ref_grad, 1e-4)
    inputs[3] = inputs[3].abs() + 0.1  # a positive log decay: the check is an assertion in the graph
    with pytest.raises(RuntimeError, match="log_decay must be < 0"):
        compiled(*inputs)


# ----------------------------------------------------------------------------------------------------
# Input checks


def _good(B=2, T=5, H=2, D=4, V=3):
    q, k, v, ld, h0 = make_inputs(B, T, H, D, V, device="cpu")
    return {"q": q, "k": k, "v": v, "log_decay": ld, "initial_state": h0}


BAD_INPUTS = [
    pytest.param({"q": torch.randn(2, 5, 8)}, "q must be 4-D", id="q-rank3"),
    pytest.param({"k": torch.randn(2, 5, 2, 5)}, "k must have shape", id="k-shape"),
    pytest.param({"v": torch.randn(2, 4, 2, 3)}, "v must have shape", id="v-length"),
    pytest.param({"log_decay": torch.tensor([-0.1, 0.2])}, "log_decay must be < 0", id="decay-positive"),
    pytest.param({"log_decay": torch.tensor([-0.1, 0.0])}, "log_decay must be < 0", id="decay-zero"),
    pytest.param({"log_decay": torch.tensor([-0.1, float("nan")])}, "log_decay must be < 0", id="decay-nan"),
    pytest.param(
        {"log_decay": torch.tensor([-0.1, -0.2, -0.3])}, "log_decay must have shape", id="decay-heads"
    ),
    pytest.param({"log_decay": torch.full((2, 1), -0.1)}, "log_decay must be 1-D", id="decay-rank2"),
    pytest.param({"log_decay": torch.tensor([-1, -2])}, "log_decay must be a floating", id="decay-int"),
    pytest.param(
        {"q": torch.ones(2, 5, 2, 4, dtype=torch.uint8)}, "q must be a floating tensor", id="q-uint8"
    ),
    pytest.param({"k": torch.ones(2, 5, 2, 4, dtype=torch.bool)}, "k must be a floating tensor", id="k-bool"),
    pytest.param(
        {"v": torch.randn(2, 5, 2, 3, dtype=torch.float16)}, "v.dtype must equal q.dtype", id="v-dtype"
    ),
    pytest.param(
        {"initial_state": torch.randn(2, 2, 3, 4)}, "initial_state must have shape", id="h0-transposed"
    ),
    pytest.param({"scale": "0.5"}, "scale must be a finite float", id="scale-str"),
]


@pytest.mark.parametrize(("override", "message"), BAD_INPUTS)
def test_spike_attention_rejects_bad_input(override, message):
    args = _good()
    args.update(override)
    with pytest.raises(ValueError, match=message):
        spike_attention(**args)


def test_spike_attention_step_rejects_bad_input():
    q, k, v, ld, state = make_inputs(2, 1, 2, 4, 3, device="cpu")
    q, k, v = q[:, 0], k[:, 0], v[:, 0]
    with pytest.raises(ValueError, match="state must have shape"):
        spike_attention_step(q, k, v, ld, state[:, :1])
    with pytest.raises(ValueError, match="q must be 3-D"):
        spike_attention_step(q[:, None], k, v, ld, state)
    with pytest.raises(ValueError, match="log_decay must be < 0"):
        spike_attention_step(q, k, v, -ld, state)
    with pytest.raises(ValueError, match="floating"):
        spike_attention_step(q.int(), k, v, ld, state)


# ----------------------------------------------------------------------------------------------------
# GPU: the same comparisons at model sizes and in 16-bit (scripts/gpu_attention.sh runs these)

GPU_CASES = [
    pytest.param(2, 63, 4, 64, 64, "spikes", id="B2-T63-H4-D64-V64-spikes"),
    pytest.param(2, 500, 4, 64, 64, "gaussian", id="B2-T500-H4-D64-V64-gaussian"),
    pytest.param(1, 2048, 4, 64, 128, "spikes", id="B1-T2048-H4-D64-V128-spikes"),
    pytest.param(2, 1000, 2, 100, 64, "gaussian", id="B2-T1000-H2-D100-V64-gaussian"),
]
GPU_DTYPES = [
    pytest.param(torch.float32, 1e-4, id="float32"),
    pytest.param(torch.float16, 5e-3, id="float16"),
    pytest.param(torch.bfloat16, 5e-3, id="bfloat16"),
]


def test_kernels_compile_for_sm90() -> None:
    """Every kernel compiles to Hopper machine code for 16-bit and float32 inputs at the benchmark's sizes (ptxas
    ships with triton; no GPU needed): the interpreter lets through what the compiler rejects."""
    pytest.importorskip("triton.backends.compiler")
    result = run_compile_check("spike_attention")
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.count("compiled") == 9  # 3 kernels x (bf16, float32, packed bf16)


@pytest.mark.gpu
@pytest.mark.parametrize(("dtype", "tol"), GPU_DTYPES)
@pytest.mark.parametrize(("B", "T", "H", "D", "V", "kind"), GPU_CASES)
def test_gpu_chunk_matches_naive(chunk, nan_empty, B, T, H, D, V, kind, dtype, tol):
    inputs = make_inputs(B, T, H, D, V, kind, dtype=dtype, device="cuda")
    do = torch.randn(B, T, H, V, device="cuda").to(dtype)
    dht = torch.randn(B, H, D, V, device="cuda")
    ref_o, ref_ht, ref_grads = reference(inputs, do, dht)
    o, ht, grads = run_with_grads(
        lambda q, k, v, ld, h0: spike_attention(q, k, v, ld, initial_state=h0, output_final_state=True),
        inputs,
        do,
        dht,
    )
    assert o.dtype == dtype
    assert_close("o", o, ref_o, tol)
    assert_close("ht", ht, ref_ht, tol)
    for name, grad, ref_grad in zip(GRAD_NAMES, grads, ref_grads, strict=True):
        assert_close(name, grad, ref_grad, tol)


@pytest.mark.gpu
@pytest.mark.parametrize(("dtype", "tol"), GPU_DTYPES)
def test_gpu_chunk_variable_length(chunk, nan_empty, dtype, tol):
    """Packed sequences of 700, 1, 333 and 1000 tokens (``cu_seqlens``) at the model's head size."""
    lengths, H, D = [700, 1, 333, 1000], 4, 64
    T = sum(lengths)
    q, k, v, ld, _ = make_inputs(1, T, H, D, D, "spikes", dtype=dtype, device="cuda")
    h0 = make_inputs(len(lengths), 1, H, D, D, device="cuda", seed=3)[4]
    inputs = [q, k, v, ld, h0]
    do = torch.randn(1, T, H, D, device="cuda").to(dtype)
    dht = torch.randn(len(lengths), H, D, D, device="cuda")
    ref_o, ref_ht, ref_grads = _separate_reference(inputs, do, dht, lengths)
    cu_seqlens = torch.tensor([0, *itertools.accumulate(lengths)], device="cuda")
    o, ht, grads = run_with_grads(
        lambda q, k, v, ld, h0: spike_attention(
            q, k, v, ld, initial_state=h0, output_final_state=True, cu_seqlens=cu_seqlens
        ),
        inputs,
        do,
        dht,
    )
    assert_close("o", o, ref_o, tol)
    assert_close("ht", ht, ref_ht, tol)
    for name, grad, ref_grad in zip(GRAD_NAMES, grads, ref_grads, strict=True):
        assert_close(name, grad, ref_grad, tol)


@pytest.mark.gpu
def test_gpu_long_sequence_log_decay_gradient(chunk):
    """T = 16384: the log-decay gradient sums T^2/2 pair terms; it must stay accurate in float32."""
    B, T, H, D = 1, 16384, 4, 64
    q, k, v, ld, _ = make_inputs(B, T, H, D, D, "spikes", device="cuda")
    do = torch.randn(B, T, H, D, device="cuda")
    ld_ref = ld.double().requires_grad_()
    o_ref = naive_chunk_spike_attention(q.double(), k.double(), v.double(), ld_ref, chunk_size=256)[0]
    (o_ref * do.double()).sum().backward()
    ld_tri = ld.clone().requires_grad_()
    o, _ = chunk.chunk_spike_attention(q, k, v, ld_tri)
    (o * do).sum().backward()
    assert_close("o", o.detach(), o_ref.detach(), 1e-4)
    assert_close("dlog_decay", ld_tri.grad, ld_ref.grad, 1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize(("dtype", "tol"), GPU_DTYPES)
def test_gpu_step_and_recurrent(recurrent, nan_empty, dtype, tol):
    B, T, H, D, V = 4, 300, 8, 64, 64
    q, k, v, ld, h0 = make_inputs(B, T, H, D, V, "spikes", dtype=dtype, device="cuda")
    ref_o, ref_ht = naive_spike_attention(*(x.double() for x in (q, k, v, ld)), None, h0.double(), True)
    o, ht = recurrent.fused_recurrent_spike_attention(q, k, v, ld, initial_state=h0, output_final_state=True)
    assert_close("recurrent o", o, ref_o, tol)
    assert_close("recurrent ht", ht, ref_ht, tol)
    state, outputs = h0, []
    for t in range(T):
        o_t, state = spike_attention_step(q[:, t], k[:, t], v[:, t], ld, state, check_decay=False)
        outputs.append(o_t)
    assert_close("step o", torch.stack(outputs, 1), ref_o, tol)
    assert_close("step state", state, ref_ht, tol)
