"""Public RWKV-6 functions: input checks, then the Triton kernels on CUDA or the PyTorch path elsewhere.

The Triton modules are imported on first CUDA use only, so ``import t4dm.kernels`` stays cheap and a test
session can set ``TRITON_INTERPRET=1`` before the kernels are built.
"""

from __future__ import annotations

import torch

from ..checks import check_scale, check_shape, check_tensor, require
from ..varlen import check_cu_seqlens, one_read
from .naive import naive_chunk_rwkv6, naive_rwkv6_step

__all__ = ["check_rwkv6_inputs", "check_rwkv6_step_inputs", "rwkv6", "rwkv6_step"]

# The Triton kernels keep one [K, BV] state tile per program in registers.
MAX_TRITON_K = 256


def _check_decay_sign(name: str, w: torch.Tensor) -> None:
    # A value check reads the tensor: on CUDA that is one small reduction and a host sync.
    require(
        ~(w > 0).any(),
        lambda: (
            f"{name} is a log decay and must be <= 0 everywhere (decay factor exp({name}) <= 1); "
            f"got a maximum of {float(w.max())}"
        ),
        f"{name} is a log decay and must be <= 0 everywhere",
    )


def check_rwkv6_inputs(
    r: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    w: torch.Tensor,
    u: torch.Tensor,
    scale: float | None,
    initial_state: torch.Tensor | None,
    check_decay: bool = True,
    cu_seqlens: torch.Tensor | None = None,
) -> float:
    """Raise ``ValueError`` naming the argument for any input ``rwkv6`` cannot take; return the scale."""
    layout = "[B, T, H, K]"
    for name, x in (("r", r), ("k", k), ("w", w)):
        check_tensor(name, x, 4, layout)
    check_tensor("v", v, 4, "[B, T, H, V]")
    B, T, H, K = r.shape
    V = v.shape[-1]
    check_shape("k", k, (B, T, H, K), layout)
    check_shape("w", w, (B, T, H, K), layout)
    check_shape("v", v, (B, T, H, V), "[B, T, H, V]")
    if T < 1 or min(B, H, K, V) < 1:
        raise ValueError(f"rwkv6 needs non-empty inputs, got r {tuple(r.shape)} and v {tuple(v.shape)}")
    for name, x in (("k", k), ("v", v), ("w", w)):
        if x.dtype != r.dtype:
            raise ValueError(f"{name}.dtype must equal r.dtype ({r.dtype}), got {x.dtype}")
    check_tensor("u", u, 2, "[H, K]")
    check_shape("u", u, (H, K), "[H, K]")
    N = B if cu_seqlens is None else check_cu_seqlens(cu_seqlens, B, T, r.device)
    if initial_state is not None:
        layout = "[B, H, K, V]" if cu_seqlens is None else "[N, H, K, V] (one per sequence)"
        check_tensor("initial_state", initial_state, 4, layout)
        check_shape("initial_state", initial_state, (N, H, K, V), layout)
    for name, x in (("k", k), ("v", v), ("w", w), ("u", u), ("initial_state", initial_state)):
        if x is not None and x.device != r.device:
            raise ValueError(f"{name} is on {x.device} but r is on {r.device}")
    if check_decay:
        _check_decay_sign("w", w)
    return check_scale(scale, K)


def check_rwkv6_step_inputs(
    r: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    w: torch.Tensor,
    u: torch.Tensor,
    state: torch.Tensor,
    scale: float | None,
    check_decay: bool = True,
) -> float:
    """Raise ``ValueError`` for any input ``rwkv6_step`` cannot take; return the scale."""
    layout = "[B, H, K]"
    for name, x in (("r", r), ("k", k), ("w", w)):
        check_tensor(name, x, 3, layout)
    check_tensor("v", v, 3, "[B, H, V]")
    B, H, K = r.shape
    V = v.shape[-1]
    check_shape("k", k, (B, H, K), layout)
    check_shape("w", w, (B, H, K), layout)
    check_shape("v", v, (B, H, V), "[B, H, V]")
    for name, x in (("k", k), ("v", v), ("w", w)):
        if x.dtype != r.dtype:
            raise ValueError(f"{name}.dtype must equal r.dtype ({r.dtype}), got {x.dtype}")
    check_tensor("u", u, 2, "[H, K]")
    check_shape("u", u, (H, K), "[H, K]")
    check_tensor("state", state, 4, "[B, H, K, V]")
    check_shape("state", state, (B, H, K, V), "[B, H, K, V]")
    for name, x in (("k", k), ("v", v), ("w", w), ("u", u), ("state", state)):
        if x.device != r.device:
            raise ValueError(f"{name} is on {x.device} but r is on {r.device}")
    if check_decay:
        _check_decay_sign("w", w)
    return check_scale(scale, K)


def _use_triton(x: torch.Tensor) -> bool:
    return x.is_cuda and x.dtype != torch.float64 and x.shape[-1] <= MAX_TRITON_K


def rwkv6(
    r: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    w: torch.Tensor,
    u: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    *,
    cu_seqlens: torch.Tensor | None = None,
    check_decay: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """RWKV-6 linear attention with data-dependent per-channel decay (flash-linear-attention's
    ``chunk_rwkv6`` semantics).

    ``o_t = scale * r_t^T (S_{t-1} + diag(u) k_t v_t^T)``, ``S_t = diag(exp(w_t)) S_{t-1} + k_t v_t^T``.

    Args:
        r, k: ``[B, T, H, K]`` receptance and key.
        v: ``[B, T, H, V]`` value.
        w: ``[B, T, H, K]`` log decay, <= 0 (e.g. ``-exp(x)`` or ``logsigmoid(x)``).
        u: ``[H, K]`` bonus for the current token.
        scale: output scale, ``K ** -0.5`` by default.
        initial_state: ``[B, H, K, V]`` state before the first token (zeros when ``None``).
        output_final_state: also return the state after the last token, ``[B, H, K, V]`` float32.
        cu_seqlens: variable-length batches: ``N`` sequences packed into one row (``B = 1``), sequence ``n``
            at tokens ``cu_seqlens[n]:cu_seqlens[n + 1]`` (``[N + 1]`` int32/int64, rising strictly from 0
            to T). Each sequence starts from its own initial state and ends with its own final state
            (``[N, H, K, V]``); no state crosses a boundary.
        check_decay: check ``w <= 0`` (reads ``w``: one reduction and, on CUDA, a host sync).

    Returns:
        ``(o, final_state)``: ``o`` ``[B, T, H, V]`` in ``r.dtype``; ``final_state`` or ``None``.

    On CUDA (float16/bfloat16/float32, K <= 256) this runs the chunked Triton kernels, forward and
    backward; elsewhere the chunked PyTorch form, differentiated by autograd. Gradients flow to
    r, k, v, w, u and the initial state.
    """
    with one_read(cu_seqlens):  # the check and the kernels share one read of the bounds
        scale = check_rwkv6_inputs(r, k, v, w, u, scale, initial_state, check_decay, cu_seqlens)
        if _use_triton(r):
            from .chunk import chunk_rwkv6

            return chunk_rwkv6(
                r, k, v, w, u, scale, initial_state, output_final_state, cu_seqlens=cu_seqlens, check_inputs=False
            )  # fmt: skip
        return naive_chunk_rwkv6(
            r, k, v, w, u, scale, initial_state, output_final_state, cu_seqlens=cu_seqlens
        )


def rwkv6_step(
    r: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    w: torch.Tensor,
    u: torch.Tensor,
    state: torch.Tensor,
    scale: float | None = None,
    *,
    check_decay: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One decoding step of ``rwkv6``.

    Args:
        r, k, w: ``[B, H, K]`` for the new token; v: ``[B, H, V]``; u: ``[H, K]``.
        state: ``[B, H, K, V]``, the state after the previous token (e.g. ``rwkv6``'s final state).
        check_decay: check ``w <= 0`` (one host sync on CUDA; pass False in a decoding loop).

    Returns:
        ``(o, new_state)``: ``o`` ``[B, H, V]`` in ``r.dtype``, ``new_state`` ``[B, H, K, V]`` float32.
        ``state`` is not modified.

    On CUDA without autograd this is one fused Triton kernel; when an input requires grad (or off CUDA)
    it runs the PyTorch step, which autograd can differentiate.
    """
    scale = check_rwkv6_step_inputs(r, k, v, w, u, state, scale, check_decay)
    needs_grad = torch.is_grad_enabled() and any(x.requires_grad for x in (r, k, v, w, u, state))
    if _use_triton(r) and not needs_grad:
        from .fused_recurrent import fused_rwkv6_step

        return fused_rwkv6_step(r, k, v, w, u, state, scale)
    return naive_rwkv6_step(r, k, v, w, u, state, scale)
