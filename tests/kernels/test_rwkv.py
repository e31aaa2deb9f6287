"""RWKV-6: the PyTorch references, the Triton kernels and the public functions.

Chain of references: ``naive_recurrent_rwkv6`` (the spec, token by token, float64 here) <->
``fused_recurrent_rwkv6`` (Triton, token by token) <-> ``chunk_rwkv6`` (Triton, chunked, with the
backward). Without CUDA the Triton kernels run under ``TRITON_INTERPRET=1`` in float32 on small shapes;
``@pytest.mark.gpu`` tests repeat the comparison at model sizes in float32, float16 and bfloat16.
"""

from __future__ import annotations

import importlib
import itertools
import os
from types import ModuleType

import pytest
import torch
import torch.nn.functional as F

from t4dm.kernels.rwkv import rwkv6, rwkv6_step
from t4dm.kernels.rwkv.naive import naive_chunk_rwkv6, naive_recurrent_rwkv6, naive_rwkv6_step

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
    return import_triton_module("t4dm.kernels.rwkv.chunk")


@pytest.fixture(scope="module")
def recurrent(chunk):
    return import_triton_module("t4dm.kernels.rwkv.fused_recurrent")


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
    if ref is None:  # the reference does not depend on this input: the gradient must be zero
        assert out is None or not out.double().abs().max().item(), f"{name}: expected zero gradient"
        return
    assert out is not None, f"{name}: missing"
    assert out.shape == ref.shape, f"{name}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    bad = ~torch.isfinite(out)
    assert not bad.any(), f"{name}: {int(bad.sum())} non-finite values, first at {bad.nonzero()[0].tolist()}"
    err = relative_error(out, ref)
    assert err <= tol, f"{name}: relative error {err:.2e} > {tol:.0e}"


DECAYS = {
    # log decay per step and channel; RWKV-6 uses w = -exp(x)
    "typical": lambda x: F.logsigmoid(x),  # mean about -0.8
    "strong": lambda x: -torch.exp(x + 2.0),  # mean about -12: exp(-cumsum) would overflow float32
    "weak": lambda x: F.logsigmoid(x) / 64.0,  # long memory
}


def make_inputs(B, T, H, K, V, decay="typical", dtype=torch.float32, device=DEVICE, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    r, k, v = randn(B, T, H, K), randn(B, T, H, K), randn(B, T, H, V)
    w = DECAYS[decay](randn(B, T, H, K))
    u, h0 = randn(H, K), randn(B, H, K, V)
    return [x.to(device=device, dtype=dtype) for x in (r, k, v, w, u)] + [
        h0.to(device=device, dtype=torch.float32)
    ]


def run_with_grads(fn, inputs, do, dht):
    """Run ``fn(r, k, v, w, u, h0) -> (o, ht)`` and backpropagate ``<o, do> + <ht, dht>``."""
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
        lambda r, k, v, w, u, h0: naive_recurrent_rwkv6(r, k, v, w, u, None, h0, True), as64, do, dht
    )


GRAD_NAMES = ("dr", "dk", "dv", "dw", "du", "dh0")

# (B, T, H, K, V, decay, chunk_size): T = 1, 15, 63, 500 are the awkward lengths; K = 20 and V = 80
# are not powers of two (V = 80 also makes two value blocks of 64)
CHUNK_CASES = [
    pytest.param(2, 1, 2, 16, 16, "typical", 16, id="B2-T1-H2-K16-V16-typical-C16"),
    pytest.param(1, 15, 2, 20, 80, "typical", 16, id="B1-T15-H2-K20-V80-typical-C16"),
    pytest.param(1, 63, 2, 16, 16, "strong", 16, id="B1-T63-H2-K16-V16-strong-C16"),
    pytest.param(2, 40, 1, 16, 24, "weak", 32, id="B2-T40-H1-K16-V24-weak-C32"),
    pytest.param(1, 500, 1, 16, 16, "typical", 32, id="B1-T500-H1-K16-V16-typical-C32"),
]


# ----------------------------------------------------------------------------------------------------
# PyTorch forms


@pytest.mark.parametrize("T", [1, 15, 63, 500], ids=lambda t: f"T{t}")
def test_naive_chunk_equals_naive_recurrent(T):
    inputs = make_inputs(2, T, 2, 8, 6, "strong" if T == 63 else "typical", torch.float64, "cpu")
    do = torch.randn(2, T, 2, 6, dtype=torch.float64)
    dht = torch.randn(2, 2, 8, 6, dtype=torch.float64)
    ref_o, ref_ht, ref_grads = reference(inputs, do, dht)
    o, ht, grads = run_with_grads(
        lambda r, k, v, w, u, h0: naive_chunk_rwkv6(r, k, v, w, u, None, h0, True, chunk_size=16),
        [x.double() for x in inputs],
        do,
        dht,
    )
    assert_close("o", o, ref_o, 1e-12)
    assert_close("ht", ht, ref_ht, 1e-12)
    for name, grad, ref_grad in zip(GRAD_NAMES, grads, ref_grads, strict=True):
        assert_close(name, grad, ref_grad, 1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_public_rwkv6_on_cpu_matches_reference(dtype):
    B, T, H, K, V = 2, 37, 2, 8, 8
    inputs = make_inputs(B, T, H, K, V, dtype=dtype, device="cpu")
    # the reference sees the same (rounded) inputs
    # the output gradient as a {dtype} output receives it: rounded to the dtype (the reference sees the same)
    gen = torch.Generator().manual_seed(7)
    do = torch.randn(B, T, H, V, generator=gen).to(dtype).float()
    dht = torch.randn(B, H, K, V, generator=gen)
    ref_o, ref_ht, ref_grads = reference(inputs, do, dht)
    o, ht, grads = run_with_grads(
        lambda *x: rwkv6(*x[:5], initial_state=x[5], output_final_state=True), inputs, do, dht
    )
    assert o.dtype == dtype and ht.dtype == torch.float32
    tol = 1e-5 if dtype == torch.float32 else 5e-3  # bfloat16: outputs and gradients are rounded to 8 bits
    assert_close("o", o, ref_o, tol)
    assert_close("ht", ht, ref_ht, 1e-5)
    for name, grad, ref_grad in zip(GRAD_NAMES, grads, ref_grads, strict=True):
        assert grad.dtype == (torch.float32 if name == "dh0" else dtype)
        assert_close(name, grad, ref_grad, tol)


def test_rwkv6_step_loop_equals_rwkv6():
    """Prefill with ``rwkv6`` then decode token by token: the states and outputs continue exactly."""
    B, T, H, K, V = 2, 24, 2, 8, 8
    r, k, v, w, u, h0 = make_inputs(B, T, H, K, V, device="cpu")
    o_all, ht_all = rwkv6(r, k, v, w, u, initial_state=h0, output_final_state=True)
    o_pre, state = rwkv6(
        r[:, :10], k[:, :10], v[:, :10], w[:, :10], u, initial_state=h0, output_final_state=True
    )
    outputs = [o_pre]
    for t in range(10, T):
        o_t, state = rwkv6_step(r[:, t], k[:, t], v[:, t], w[:, t], u, state)
        outputs.append(o_t[:, None])
    assert_close("o", torch.cat(outputs, dim=1), o_all, 1e-5)
    assert_close("state", state, ht_all, 1e-5)


# ----------------------------------------------------------------------------------------------------
# Triton kernels (interpreter on CPU)


@pytest.mark.parametrize(("B", "T", "H", "K", "V", "decay", "chunk_size"), CHUNK_CASES)
def test_chunk_kernel_matches_naive(chunk, nan_empty, B, T, H, K, V, decay, chunk_size):
    inputs = make_inputs(B, T, H, K, V, decay)
    gen = torch.Generator().manual_seed(1)
    do = torch.randn(B, T, H, V, generator=gen).to(DEVICE)
    dht = torch.randn(B, H, K, V, generator=gen).to(DEVICE)
    ref_o, ref_ht, ref_grads = reference(inputs, do, dht)
    o, ht, grads = run_with_grads(
        lambda r, k, v, w, u, h0: chunk.chunk_rwkv6(r, k, v, w, u, None, h0, True, chunk_size=chunk_size),
        inputs,
        do,
        dht,
    )
    assert_close("o", o, ref_o, 1e-4)
    assert_close("ht", ht, ref_ht, 1e-4)
    for name, grad, ref_grad in zip(GRAD_NAMES, grads, ref_grads, strict=True):
        assert_close(name, grad, ref_grad, 1e-4)


def _separate_reference(inputs, do, dht, lengths):
    """The reference run on each packed sequence alone (float64, token by token): outputs concatenated,
    final states and initial-state gradients stacked, other gradients concatenated or summed (u)."""
    r, k, v, w, u, h0 = inputs
    bounds = [0, *torch.tensor(lengths).cumsum(0).tolist()]
    outs, states, grads = [], [], []
    for n, (bos, eos) in enumerate(itertools.pairwise(bounds)):
        part = [x[:, bos:eos] for x in (r, k, v, w)] + [u, h0[n : n + 1]]
        o, ht, g = reference(part, do[:, bos:eos], dht[n : n + 1])
        outs.append(o), states.append(ht), grads.append(g)
    cat = lambda i: torch.cat([g[i] for g in grads], dim=1)  # noqa: E731
    ref_grads = [cat(0), cat(1), cat(2), cat(3), sum(g[4] for g in grads), torch.cat([g[5] for g in grads])]
    return torch.cat(outs, dim=1), torch.cat(states), ref_grads


@pytest.mark.parametrize(
    ("lengths", "V", "chunk_size"),
    [
        pytest.param([1, 15, 40, 33], 24, 16, id="N4-lengths-1-15-40-33-V24-C16"),
        pytest.param([20, 1, 7], 80, 16, id="N3-lengths-20-1-7-V80-two-value-blocks-C16"),
        pytest.param([64, 50], 16, 32, id="N2-lengths-64-50-C32"),
    ],
)
def test_chunk_kernel_variable_length(chunk, nan_empty, lengths, V, chunk_size):
    """Sequences packed into one row with ``cu_seqlens`` (boundaries inside chunks) give what each gives
    alone: outputs, final states and every gradient."""
    T, H, K = sum(lengths), 2, 16
    r, k, v, w, u, _ = make_inputs(1, T, H, K, V, "typical")
    h0 = make_inputs(len(lengths), 1, H, K, V, seed=3)[5]
    inputs = [r, k, v, w, u, h0]
    gen = torch.Generator().manual_seed(2)
    do = torch.randn(1, T, H, V, generator=gen).to(DEVICE)
    dht = torch.randn(len(lengths), H, K, V, generator=gen).to(DEVICE)
    cu_seqlens = torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32, device=DEVICE)
    ref_o, ref_ht, ref_grads = _separate_reference(inputs, do, dht, lengths)
    o, ht, grads = run_with_grads(
        lambda r, k, v, w, u, h0: chunk.chunk_rwkv6(
            r, k, v, w, u, None, h0, True, cu_seqlens=cu_seqlens, chunk_size=chunk_size
        ),
        inputs,
        do,
        dht,
    )
    assert ht.shape == (len(lengths), H, K, V)
    assert_close("o", o, ref_o, 1e-4)
    assert_close("ht", ht, ref_ht, 1e-4)
    for name, grad, ref_grad in zip(GRAD_NAMES, grads, ref_grads, strict=True):
        assert_close(name, grad, ref_grad, 1e-4)


def test_public_rwkv6_variable_length_on_cpu():
    """The CPU path with ``cu_seqlens``: each sequence as alone, gradients included."""
    lengths, H, K, V = [5, 1, 12], 2, 8, 6
    T = sum(lengths)
    r, k, v, w, u, _ = make_inputs(1, T, H, K, V, device="cpu")
    h0 = make_inputs(3, 1, H, K, V, device="cpu", seed=4)[5]
    gen = torch.Generator().manual_seed(5)
    do, dht = torch.randn(1, T, H, V, generator=gen), torch.randn(3, H, K, V, generator=gen)
    inputs = [r, k, v, w, u, h0]
    ref_o, ref_ht, ref_grads = _separate_reference(inputs, do, dht, lengths)
    cu_seqlens = torch.tensor([0, 5, 6, 18])
    o, ht, grads = run_with_grads(
        lambda r, k, v, w, u, h0: rwkv6(r, k, v, w, u, None, h0, True, cu_seqlens=cu_seqlens), inputs, do, dht
    )
    assert_close("o", o, ref_o, 1e-5)
    assert_close("ht", ht, ref_ht, 1e-5)
    for name, grad, ref_grad in zip(GRAD_NAMES, grads, ref_grads, strict=True):
        assert_close(name, grad, ref_grad, 1e-5)


def test_a_packed_call_reads_cu_seqlens_from_the_device_once(monkeypatch):
    """The check, the chunk plan and the per-sequence slicing share one read of the bounds (a host sync on
    CUDA) inside a call; the next call reads them again, whatever changed them."""
    from t4dm.kernels import spike_attention
    from t4dm.kernels.varlen import host_bounds

    cu_seqlens = torch.tensor([0, 5, 6, 18])
    reads = []
    tolist = torch.Tensor.tolist
    monkeypatch.setattr(
        torch.Tensor,
        "tolist",
        lambda self: (reads.append(1) if self is cu_seqlens else None, tolist(self))[1],
    )
    r, k, v, w, u, _ = make_inputs(1, 18, 2, 8, 6, device="cpu")
    rwkv6(r, k, v, w, u, cu_seqlens=cu_seqlens)
    assert len(reads) == 1
    q = torch.randn(1, 18, 2, 8)
    spike_attention(q, q, torch.randn(1, 18, 2, 6), -torch.rand(2), cu_seqlens=cu_seqlens)
    assert len(reads) == 2  # one read per call: nothing is kept between calls
    cu_seqlens.data[1] = 4  # a change no version counter sees
    assert host_bounds(cu_seqlens) == [0, 4, 6, 18] and len(reads) == 3


@pytest.mark.parametrize(
    ("cu_seqlens", "B", "h0_rows", "message"),
    [
        pytest.param(torch.tensor([0, 3, 6]), 2, 2, "B must be 1", id="two-rows"),
        pytest.param(torch.tensor([1, 3, 6]), 1, 2, "rise strictly from 0", id="not-from-0"),
        pytest.param(torch.tensor([0, 3, 5]), 1, 2, "rise strictly from 0 to T=6", id="not-to-T"),
        pytest.param(torch.tensor([0, 3, 3, 6]), 1, 3, "at least one token", id="empty-sequence"),
        pytest.param(torch.tensor([0.0, 6.0]), 1, 1, "int32/int64", id="float"),
        pytest.param(torch.tensor([[0, 6]]), 1, 1, "1-D", id="2-D"),
        pytest.param([0, 6], 1, 1, "torch.Tensor", id="list"),
        pytest.param(
            torch.tensor([0, 3, 6]), 1, 3, r"initial_state must have shape \[N, H, K, V\]", id="h0-rows"
        ),
    ],
)
def test_rwkv6_rejects_bad_cu_seqlens(cu_seqlens, B, h0_rows, message):
    r, k, v, w, u, _ = make_inputs(B, 6, 2, 4, 3, device="cpu")
    h0 = torch.zeros(h0_rows, 2, 4, 3)
    with pytest.raises(ValueError, match=message):
        rwkv6(r, k, v, w, u, initial_state=h0, cu_seqlens=cu_seqlens)


def test_chunk_kernel_without_states(chunk, nan_empty):
    """No initial state, final state not requested: gradients come from ``o`` alone."""
    B, T, H, K, V = 1, 33, 2, 16, 16
    r, k, v, w, u, _ = make_inputs(B, T, H, K, V)
    do = torch.randn(B, T, H, V).to(DEVICE)
    ref_o, _, ref_grads = run_with_grads(
        lambda r, k, v, w, u: naive_recurrent_rwkv6(r, k, v, w, u, None, None, True),
        [x.double() for x in (r, k, v, w, u)],
        do,
        None,
    )
    leaves = [x.clone().requires_grad_() for x in (r, k, v, w, u)]
    o, ht = chunk.chunk_rwkv6(*leaves, chunk_size=16)
    assert ht is None
    (o * do).sum().backward()
    assert_close("o", o.detach(), ref_o, 1e-4)
    for name, leaf, ref_grad in zip(GRAD_NAMES[: len(leaves)], leaves, ref_grads, strict=True):
        assert_close(name, leaf.grad, ref_grad, 1e-4)


def test_chunk_kernel_forward_only_saves_no_states(chunk, monkeypatch):
    """Without autograd the forward stores no chunk states (inference costs no extra memory)."""
    seen = {}
    real_fwd = chunk.rwkv6_fwd

    def spy(*args, **kwargs):
        out = real_fwd(*args, **kwargs)
        seen["hc"] = out[3]
        return out

    monkeypatch.setattr(chunk, "rwkv6_fwd", spy)
    r, k, v, w, u, h0 = make_inputs(1, 20, 1, 16, 16)
    with torch.no_grad():
        chunk.chunk_rwkv6(r, k, v, w, u, initial_state=h0, chunk_size=16)
    assert seen["hc"] is None


@pytest.mark.parametrize(
    ("B", "T", "H", "K", "V", "decay"),
    [
        pytest.param(2, 1, 2, 16, 16, "typical", id="B2-T1-H2-K16-V16-typical"),
        pytest.param(1, 63, 2, 20, 40, "strong", id="B1-T63-H2-K20-V40-strong"),
        pytest.param(1, 500, 1, 16, 16, "weak", id="B1-T500-H1-K16-V16-weak"),
    ],
)
def test_recurrent_kernel_matches_naive_and_chunk(chunk, recurrent, nan_empty, B, T, H, K, V, decay):
    """The chain: naive <-> fused recurrent <-> chunked, forward and final state."""
    r, k, v, w, u, h0 = make_inputs(B, T, H, K, V, decay)
    ref_o, ref_ht = naive_recurrent_rwkv6(*(x.double() for x in (r, k, v, w, u)), None, h0.double(), True)
    rec_o, rec_ht = recurrent.fused_recurrent_rwkv6(r, k, v, w, u, initial_state=h0, output_final_state=True)
    assert_close("recurrent o", rec_o, ref_o, 1e-4)
    assert_close("recurrent ht", rec_ht, ref_ht, 1e-4)
    with torch.no_grad():
        chunk_o, chunk_ht = chunk.chunk_rwkv6(r, k, v, w, u, initial_state=h0, output_final_state=True)
    assert_close("chunk o vs recurrent", chunk_o, rec_o, 1e-4)
    assert_close("chunk ht vs recurrent", chunk_ht, rec_ht, 1e-4)


def test_recurrent_kernel_variable_length(recurrent, nan_empty):
    """Sequences packed into one row (``cu_seqlens``) give what each gives alone: outputs and final states."""
    lengths, H, K, V = [1, 15, 40, 33], 2, 16, 24
    T = sum(lengths)
    r, k, v, w, u, _ = make_inputs(1, T, H, K, V, "typical")
    h0 = make_inputs(len(lengths), 1, H, K, V, seed=3)[5]
    cu_seqlens = torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int64, device=DEVICE)
    o, ht = recurrent.fused_recurrent_rwkv6(
        r, k, v, w, u, initial_state=h0, output_final_state=True, cu_seqlens=cu_seqlens
    )
    assert o.shape == (1, T, H, V) and ht.shape == (len(lengths), H, K, V)
    for n, (bos, eos) in enumerate(itertools.pairwise(cu_seqlens.tolist())):
        part = [x[:, bos:eos].double() for x in (r, k, v, w)]
        ref_o, ref_ht = naive_recurrent_rwkv6(*part, u.double(), None, h0[n : n + 1].double(), True)
        assert_close(f"o of sequence {n}", o[:, bos:eos], ref_o, 1e-4)
        assert_close(f"ht of sequence {n}", ht[n : n + 1], ref_ht, 1e-4)
    with pytest.raises(ValueError, match="cu_seqlens"):
        recurrent.fused_recurrent_rwkv6(r, k, v, w, u, cu_seqlens=torch.tensor([0, 5, 3], device=DEVICE))


def test_fused_step_matches_naive_step(recurrent, nan_empty):
    B, H, K, V = 3, 2, 20, 40
    r, k, v, w, u, state = make_inputs(B, 1, H, K, V)
    r, k, v, w = r[:, 0], k[:, 0], v[:, 0], w[:, 0]
    before = state.clone()
    o, new_state = recurrent.fused_rwkv6_step(r, k, v, w, u, state, K**-0.5)
    ref_o, ref_state = naive_rwkv6_step(
        r.double(), k.double(), v.double(), w.double(), u.double(), state.double()
    )
    assert torch.equal(state, before), "the step must not modify its input state"
    assert_close("o", o, ref_o, 1e-5)
    assert_close("state", new_state, ref_state, 1e-5)


@pytest.mark.parametrize("lengths", [None, [7, 20, 3]], ids=["fixed", "packed"])
def test_operators_pass_opcheck(chunk, lengths):
    """Schema, fake shapes, the registered autograd and AOT dispatch of torch.ops.t4dm.rwkv6_fwd / _bwd."""
    from t4dm.kernels.varlen import Chunks

    B, T = (2, 21) if lengths is None else (1, sum(lengths))
    H, K, V, C = 2, 16, 24, 16
    r, k, v, w, u, _ = make_inputs(B, T, H, K, V)
    n_seq = B if lengths is None else len(lengths)
    h0 = make_inputs(n_seq, 1, H, K, V, seed=5)[5]
    cu = None if lengths is None else torch.tensor([0, *itertools.accumulate(lengths)], device=DEVICE)
    parts = Chunks(B, T, C, cu).parts()
    leaves = [x.clone().requires_grad_() for x in (r, k, v, w, u, h0)]
    args = (*leaves[:5], K**-0.5, leaves[5], True, True, C, None, *parts)
    torch.library.opcheck(chunk._rwkv6_fwd_op, args)
    o, ht, A, hc = (x.detach() for x in chunk._rwkv6_fwd_op(*args))
    do, dht = torch.randn_like(o), torch.randn_like(ht)
    bwd_args = (r, k, v, w, u, K**-0.5, A, hc, ht, do, dht, True, C, None, *parts)
    torch.library.opcheck(chunk._rwkv6_bwd_op, bwd_args)


@pytest.mark.parametrize("final", [True, False], ids=["final-state", "no-final-state"])
def test_recurrent_operator_passes_opcheck_and_compiles(recurrent, final):
    """torch.ops.t4dm.rwkv6_recurrent (forward only): opcheck, and a compiled decoding step in one graph."""
    r, k, v, w, u, h0 = make_inputs(2, 5, 2, 16, 24)
    torch.library.opcheck(recurrent._rwkv6_recurrent_op, (r, k, v, w, u, 0.25, h0, final, None))
    torch.library.opcheck(recurrent._rwkv6_recurrent_op, (r, k, v, w, u, 0.25, None, final, None))
    packed = torch.tensor([0, 3, 4, 10], dtype=torch.int32, device=DEVICE)  # three sequences in one row of 10
    r1, k1, v1, w1, _, _ = make_inputs(1, 10, 2, 16, 24, seed=2)
    h3 = make_inputs(3, 1, 2, 16, 24, seed=3)[5]
    torch.library.opcheck(recurrent._rwkv6_recurrent_op, (r1, k1, v1, w1, u, 0.25, h3, final, packed))
    torch._dynamo.reset()
    step = torch.compile(recurrent.fused_rwkv6_step, fullgraph=True, backend="aot_eager")
    o, state = step(r[:, 0], k[:, 0], v[:, 0], w[:, 0], u, h0, 0.25)
    ref_o, ref_state = naive_rwkv6_step(
        *(x.double() for x in (r[:, 0], k[:, 0], v[:, 0], w[:, 0], u, h0)), 0.25
    )
    assert_close("o", o, ref_o, 1e-5)
    assert_close("state", state, ref_state, 1e-5)


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_compiles_in_one_graph_and_matches_the_reference(chunk, dynamic):
    """torch.compile(fullgraph=True) through the chunked kernels, forward and backward (fixed-length
    batches: a packed batch reads cu_seqlens on the host first, which breaks the graph)."""
    torch._dynamo.reset()

    def run(r, k, v, w, u, h0):
        return chunk.chunk_rwkv6(r, k, v, w, u, None, h0, True, chunk_size=16)

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
    with pytest.raises(RuntimeError, match="log decay and must be <= 0"):
        compiled(*inputs)


# ----------------------------------------------------------------------------------------------------
# Input checks


def _good(B=2, T=5, H=2, K=4, V=3):
    r, k, v, w, u, h0 = make_inputs(B, T, H, K, V, device="cpu")
    return {"r": r, "k": k, "v": v, "w": w, "u": u, "initial_state": h0}


BAD_INPUTS = [
    pytest.param({"r": torch.randn(2, 5, 8)}, "r must be 4-D", id="r-rank3"),
    pytest.param({"k": torch.randn(2, 5, 2, 5)}, "k must have shape", id="k-shape"),
    pytest.param({"w": torch.randn(2, 6, 2, 4).abs().neg()}, "w must have shape", id="w-length"),
    pytest.param({"v": torch.randn(2, 5, 3, 3)}, "v must have shape", id="v-heads"),
    pytest.param({"u": torch.randn(4)}, "u must be 2-D", id="u-rank1"),
    pytest.param({"u": torch.randn(3, 4)}, "u must have shape", id="u-heads"),
    pytest.param(
        {"initial_state": torch.randn(2, 2, 3, 4)}, "initial_state must have shape", id="h0-transposed"
    ),
    pytest.param({"w": torch.full((2, 5, 2, 4), 0.1)}, "w is a log decay", id="w-positive"),
    pytest.param(
        {"r": torch.ones(2, 5, 2, 4, dtype=torch.int64)}, "r must be a floating tensor", id="r-int64"
    ),
    pytest.param(
        {"v": torch.ones(2, 5, 2, 3, dtype=torch.int32)}, "v must be a floating tensor", id="v-int32"
    ),
    pytest.param(
        {"k": torch.randn(2, 5, 2, 4, dtype=torch.float64)}, "k.dtype must equal r.dtype", id="k-dtype"
    ),
    pytest.param({"scale": float("nan")}, "scale must be a finite float", id="scale-nan"),
    pytest.param({"r": [[1.0]]}, "r must be a torch.Tensor", id="r-list"),
    pytest.param(
        {
            "r": torch.randn(2, 0, 2, 4),
            "k": torch.randn(2, 0, 2, 4),
            "v": torch.randn(2, 0, 2, 3),
            "w": -torch.rand(2, 0, 2, 4),
        },
        "non-empty",
        id="empty-T",
    ),
]


@pytest.mark.parametrize(("override", "message"), BAD_INPUTS)
def test_rwkv6_rejects_bad_input(override, message):
    args = _good()
    args.update(override)
    with pytest.raises(ValueError, match=message):
        rwkv6(**args)


def test_rwkv6_step_rejects_bad_input():
    r, k, v, w, u, state = make_inputs(2, 1, 2, 4, 3, device="cpu")
    r, k, v, w = r[:, 0], k[:, 0], v[:, 0], w[:, 0]
    with pytest.raises(ValueError, match="state must have shape"):
        rwkv6_step(r, k, v, w, u, state[:, :, :, :2])
    with pytest.raises(ValueError, match="r must be 3-D"):
        rwkv6_step(r[:, None], k, v, w, u, state)
    with pytest.raises(ValueError, match="w is a log decay"):
        rwkv6_step(r, k, v, w.abs(), u, state)
    with pytest.raises(ValueError, match="floating"):
        rwkv6_step(r, k, v, w, u, state.long())


# ----------------------------------------------------------------------------------------------------
# GPU: the same comparisons at model sizes and in 16-bit (scripts/gpu_attention.sh runs these)

GPU_CASES = [
    pytest.param(2, 63, 4, 64, 64, id="B2-T63-H4-K64-V64"),
    pytest.param(2, 500, 4, 64, 64, id="B2-T500-H4-K64-V64"),
    pytest.param(1, 2048, 2, 64, 128, id="B1-T2048-H2-K64-V128"),
    pytest.param(2, 1000, 2, 100, 64, id="B2-T1000-H2-K100-V64"),
]
GPU_DTYPES = [
    pytest.param(torch.float32, 1e-4, id="float32"),
    pytest.param(torch.float16, 5e-3, id="float16"),
    pytest.param(torch.bfloat16, 5e-3, id="bfloat16"),
]


def test_kernels_compile_for_sm90() -> None:
    """Every kernel compiles to Hopper machine code for 16-bit and float32 inputs at the benchmark's sizes, and for
    packed sequences (ptxas ships with triton; no GPU needed): the interpreter lets through what the compiler
    rejects."""
    pytest.importorskip("triton.backends.compiler")
    result = run_compile_check("rwkv")
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.count("compiled") == 18  # 6 kernels x (bf16, float32, packed bf16)


@pytest.mark.gpu
@pytest.mark.parametrize(("dtype", "tol"), GPU_DTYPES)
@pytest.mark.parametrize(("B", "T", "H", "K", "V"), GPU_CASES)
def test_gpu_chunk_matches_naive(chunk, nan_empty, B, T, H, K, V, dtype, tol):
    inputs = make_inputs(B, T, H, K, V, "typical", dtype=dtype, device="cuda")
    do = torch.randn(B, T, H, V, device="cuda").to(dtype)
    dht = torch.randn(B, H, K, V, device="cuda")
    ref_o, ref_ht, ref_grads = reference(inputs, do, dht)
    o, ht, grads = run_with_grads(
        lambda r, k, v, w, u, h0: rwkv6(r, k, v, w, u, None, h0, True), inputs, do, dht
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
    lengths, H, K, V = [700, 1, 333, 1000], 4, 64, 64
    T = sum(lengths)
    r, k, v, w, u, _ = make_inputs(1, T, H, K, V, "typical", dtype=dtype, device="cuda")
    h0 = make_inputs(len(lengths), 1, H, K, V, device="cuda", seed=3)[5]
    inputs = [r, k, v, w, u, h0]
    do = torch.randn(1, T, H, V, device="cuda").to(dtype)
    dht = torch.randn(len(lengths), H, K, V, device="cuda")
    ref_o, ref_ht, ref_grads = _separate_reference(inputs, do, dht, lengths)
    cu_seqlens = torch.tensor([0, *itertools.accumulate(lengths)], device="cuda")
    o, ht, grads = run_with_grads(
        lambda r, k, v, w, u, h0: rwkv6(r, k, v, w, u, None, h0, True, cu_seqlens=cu_seqlens), inputs, do, dht
    )
    assert_close("o", o, ref_o, tol)
    assert_close("ht", ht, ref_ht, tol)
    for name, grad, ref_grad in zip(GRAD_NAMES, grads, ref_grads, strict=True):
        assert_close(name, grad, ref_grad, tol)


@pytest.mark.gpu
@pytest.mark.parametrize("decay", ["strong", "weak"])
def test_gpu_chunk_extreme_decays(chunk, decay):
    inputs = make_inputs(2, 777, 2, 64, 64, decay, device="cuda")
    do = torch.randn(2, 777, 2, 64, device="cuda")
    dht = torch.randn(2, 2, 64, 64, device="cuda")
    ref_o, ref_ht, ref_grads = reference(inputs, do, dht)
    o, ht, grads = run_with_grads(lambda *x: chunk.chunk_rwkv6(*x[:5], None, x[5], True), inputs, do, dht)
    assert_close("o", o, ref_o, 1e-4)
    assert_close("ht", ht, ref_ht, 1e-4)
    for name, grad, ref_grad in zip(GRAD_NAMES, grads, ref_grads, strict=True):
        assert_close(name, grad, ref_grad, 1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize(("dtype", "tol"), GPU_DTYPES)
def test_gpu_step_and_recurrent(recurrent, nan_empty, dtype, tol):
    B, T, H, K, V = 4, 300, 8, 64, 64
    r, k, v, w, u, h0 = make_inputs(B, T, H, K, V, dtype=dtype, device="cuda")
    ref_o, ref_ht = naive_recurrent_rwkv6(*(x.double() for x in (r, k, v, w, u)), None, h0.double(), True)
    o, ht = recurrent.fused_recurrent_rwkv6(r, k, v, w, u, initial_state=h0, output_final_state=True)
    assert_close("recurrent o", o, ref_o, tol)
    assert_close("recurrent ht", ht, ref_ht, tol)
    state, outputs = h0, []
    for t in range(T):
        o_t, state = rwkv6_step(r[:, t], k[:, t], v[:, t], w[:, t], u, state, check_decay=False)
        outputs.append(o_t)
    assert_close("step o", torch.stack(outputs, 1), ref_o, tol)
    assert_close("step state", state, ref_ht, tol)
