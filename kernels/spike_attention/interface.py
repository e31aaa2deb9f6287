"""Public spike-attention functions: input checks, then the Triton kernels on CUDA or PyTorch elsewhere.

The Triton modules are imported on first CUDA use only, so ``import t4dm.kernels`` stays cheap and a test
session can set ``TRITON_INTERPRET=1`` before the kernels are built.
"""

from __future__ import annotations

import torch

from ..checks import check_scale, check_shape, check_tensor, require
from ..varlen import check_cu_seqlens, one_read
from .naive import naive_chunk_spike_attention, naive_spike_attention_step

__all__ = [
    "check_spike_attention_inputs",
    "check_spike_attention_step_inputs",
    "spike_attention",
    "spike_attention_step",
]

# The Triton kernels keep one [D, BV] state tile per program in registers.
MAX_TRITON_D = 256


def _check_log_decay(log_decay: torch.Tensor, H: int, device: torch.device, check_decay: bool) -> None:
    check_tensor("log_decay", log_decay, 1, "[H]")
    check_shape("log_decay", log_decay, (H,), "[H]")
    if log_decay.device != device:
        raise ValueError(f"log_decay is on {log_decay.device} but q is on {device}")
    # reads the H values: on CUDA one tiny kernel and a host sync
    if check_decay:
        require(
            (log_decay < 0).all(),
            lambda: (
                "log_decay must be < 0 for every head (decay factor exp(log_decay) < 1), "
                f"got {log_decay.detach().cpu().tolist()}"
            ),
            "log_decay must be < 0 for every head",
        )


def check_spike_attention_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor,
    scale: float | None,
    initial_state: torch.Tensor | None,
    check_decay: bool = True,
    cu_seqlens: torch.Tensor | None = None,
) -> float:
    """Raise ``ValueError`` naming the argument for any input ``spike_attention`` cannot take; return
    the scale."""
    layout = "[B, T, H, D]"
    check_tensor("q", q, 4, layout)
    check_tensor("k", k, 4, layout)
    check_tensor("v", v, 4, "[B, T, H, V]")
    B, T, H, D = q.shape
    V = v.shape[-1]
    check_shape("k", k, (B, T, H, D), layout)
    check_shape("v", v, (B, T, H, V), "[B, T, H, V]")
    if T < 1 or min(B, H, D, V) < 1:
        raise ValueError(
            f"spike_attention needs non-empty inputs, got q {tuple(q.shape)} and v {tuple(v.shape)}"
        )
    for name, x in (("k", k), ("v", v)):
        if x.dtype != q.dtype:
            raise ValueError(f"{name}.dtype must equal q.dtype ({q.dtype}), got {x.dtype}")
        if x.device != q.device:
            raise ValueError(f"{name} is on {x.device} but q is on {q.device}")
    N = B if cu_seqlens is None else check_cu_seqlens(cu_seqlens, B, T, q.device)
    if initial_state is not None:
        layout = "[B, H, D, V]" if cu_seqlens is None else "[N, H, D, V] (one per sequence)"
        check_tensor("initial_state", initial_state, 4, layout)
        check_shape("initial_state", initial_state, (N, H, D, V), layout)
        if initial_state.device != q.device:
            raise ValueError(f"initial_state is on {initial_state.device} but q is on {q.device}")
    _check_log_decay(log_decay, H, q.device, check_decay)
    return check_scale(scale, D)


def check_spike_attention_step_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor,
    state: torch.Tensor,
    scale: float | None,
    check_decay: bool = True,
) -> float:
    """Raise ``ValueError`` for any input ``spike_attention_step`` cannot take; return the scale."""
    check_tensor("q", q, 3, "[B, H, D]")
    check_tensor("k", k, 3, "[B, H, D]")
    check_tensor("v", v, 3, "[B, H, V]")
    B, H, D = q.shape
    V = v.shape[-1]
    check_shape("k", k, (B, H, D), "[B, H, D]")
    check_shape("v", v, (B, H, V), "[B, H, V]")
    for name, x in (("k", k), ("v", v)):
        if x.dtype != q.dtype:
            raise ValueError(f"{name}.dtype must equal q.dtype ({q.dtype}), got {x.dtype}")
    check_tensor("state", state, 4, "[B, H, D, V]")
    check_shape("state", state, (B, H, D, V), "[B, H, D, V]")
    for name, x in (("k", k), ("v", v), ("state", state)):
        if x.device != q.device:
            raise ValueError(f"{name} is on {x.device} but q is on {q.device}")
    _check_log_decay(log_decay, H, q.device, check_decay)
    return check_scale(scale, D)


def _use_triton(x: torch.Tensor) -> bool:
    return x.is_cuda and x.dtype != torch.float64 and x.shape[-1] <= MAX_TRITON_D


def spike_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor,
    scale: float | None = None,
    *,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    check_decay: bool = True,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Causal spike attention with an exponential STDP window, no softmax::

        o[t] = scale * sum_{s <= t} exp(log_decay[h] * (t - s)) * (q[t] . k[s]) * v[s]

    computed in chunked linear form, ``O(T * C * D)`` time and no ``T x T`` matrix.

    Args:
        q, k: ``[B, T, H, D]`` (binary spikes or any float); v: ``[B, T, H, V]`` (usually ``V = D``).
        log_decay: ``[H]``, < 0: the per-head log of the window's decay per step.
        scale: ``D ** -0.5`` by default.
        initial_state: ``[B, H, D, V]`` state of earlier tokens (``S_{-1}`` below), zeros when ``None``.
        output_final_state: also return the state after the last token, for ``spike_attention_step``.
        cu_seqlens: variable-length batches: ``N`` sequences packed into one row (``B = 1``), sequence
            ``n`` at tokens ``cu_seqlens[n]:cu_seqlens[n + 1]`` (``[N + 1]`` int32/int64, rising strictly
            from 0 to T), each with its own initial and final state (``[N, H, D, V]``); no token attends
            across a boundary.
        check_decay: check ``log_decay < 0`` (on CUDA a host sync).

    Returns:
        ``o`` ``[B, T, H, V]`` in ``q.dtype``; with ``output_final_state=True`` the pair
        ``(o, final_state)``, ``final_state`` ``[B, H, D, V]`` float32, where
        ``S_t = exp(log_decay) S_{t-1} + k_t v_t^T``.

    On CUDA (float16/bfloat16/float32, D <= 256) this runs the chunked Triton kernels, forward and
    backward; elsewhere the chunked PyTorch form under autograd. Gradients flow to q, k, v,
    log_decay and the initial state.
    """
    with one_read(cu_seqlens):  # the check and the kernels share one read of the bounds
        scale = check_spike_attention_inputs(
            q, k, v, log_decay, scale, initial_state, check_decay, cu_seqlens
        )
        if _use_triton(q):
            from .chunk import chunk_spike_attention

            o, final_state = chunk_spike_attention(
                q, k, v, log_decay, scale, initial_state, output_final_state, cu_seqlens=cu_seqlens,
                check_inputs=False,
            )  # fmt: skip
        else:
            o, final_state = naive_chunk_spike_attention(
                q, k, v, log_decay, scale, initial_state, output_final_state, cu_seqlens=cu_seqlens
            )
        return (o, final_state) if output_final_state else o


def spike_attention_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor,
    state: torch.Tensor,
    scale: float | None = None,
    *,
    check_decay: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The recurrent form, one token: ``S = exp(log_decay) S + k v^T``, ``o = scale * q^T S``.

    Args:
        q, k: ``[B, H, D]``; v: ``[B, H, V]``; log_decay: ``[H]``;
        state: ``[B, H, D, V]``, e.g. ``spike_attention(..., output_final_state=True)[1]`` or zeros.

    Returns:
        ``(o, new_state)``: ``o`` ``[B, H, V]`` in ``q.dtype``, ``new_state`` float32. Running it over a
        sequence from a zero state reproduces ``spike_attention`` token by token.
    """
    scale = check_spike_attention_step_inputs(q, k, v, log_decay, state, scale, check_decay)
    needs_grad = torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v, log_decay, state))
    if _use_triton(q) and not needs_grad:
        from .fused_recurrent import fused_spike_attention_step

        return fused_spike_attention_step(q, k, v, log_decay, state, scale)
    return naive_spike_attention_step(q, k, v, log_decay, state, scale)
