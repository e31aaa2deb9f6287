"""Spike attention in plain PyTorch: the specification the Triton kernels are tested against.

Causal attention without softmax, weighted by an exponential STDP potentiation window. For one batch row
and one head with decay ``gamma = exp(log_decay[h])`` (``log_decay < 0``)::

    o_t = scale * sum_{s <= t} gamma^(t - s) (q_t . k_s) v_s

Equivalently, with a per-head state ``S`` in ``R^{D x V}`` (inclusive of the current token)::

    S_t = gamma S_{t-1} + k_t v_t^T,    o_t = scale * q_t^T S_t

so an initial state ``S_{-1}`` adds ``scale * gamma^(t + 1) q_t^T S_{-1}`` to ``o_t``.

Everything here runs in float32 (float64 stays float64) whatever the input dtype and is differentiable
by autograd.
"""

from __future__ import annotations

import torch

from ..varlen import per_sequence

__all__ = [
    "naive_chunk_spike_attention",
    "naive_recurrent_spike_attention",
    "naive_spike_attention",
    "naive_spike_attention_step",
]


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def naive_spike_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The quadratic parallel form, ``O(T^2)`` memory: the definition above, term by term.

    Args:
        q, k: ``[B, T, H, D]``; v: ``[B, T, H, V]``; log_decay: ``[H]``, < 0.
        scale: ``D ** -0.5`` by default.
        initial_state: ``[B, H, D, V]`` or ``None``.
        output_final_state: also return ``S_{T-1}`` ``[B, H, D, V]``.

    Returns:
        ``o`` ``[B, T, H, V]`` in ``q.dtype`` and the final state (float32) or ``None``.
    """
    T, D = q.shape[1], q.shape[3]
    dtype, acc = q.dtype, _compute_dtype(q.dtype)
    if scale is None:
        scale = D**-0.5
    q, k, v, ld = q.to(acc), k.to(acc), v.to(acc), log_decay.to(acc)
    t = torch.arange(T, device=q.device)
    distance = (t[:, None] - t[None, :]).to(acc)  # t - s
    causal = distance >= 0
    window = torch.where(causal, ld[:, None, None] * distance.clamp(min=0), float("-inf")).exp()  # [H, T, T]
    scores = torch.einsum("bthd,bshd->bhts", q, k) * window * scale
    o = torch.einsum("bhts,bshv->bthv", scores, v)
    if initial_state is not None:
        query_decay = (ld[None, :] * (t[:, None] + 1).to(acc)).exp()  # [T, H]
        o = o + scale * torch.einsum(
            "bthd,bhdv->bthv", q * query_decay[None, :, :, None], initial_state.to(acc)
        )
    final_state = None
    if output_final_state:
        key_decay = (ld[None, :] * (T - 1 - t)[:, None].to(acc)).exp()  # [T, H]
        final_state = torch.einsum("bthd,bthv->bhdv", k * key_decay[None, :, :, None], v)
        if initial_state is not None:
            final_state = final_state + (ld * T).exp()[None, :, None, None] * initial_state.to(acc)
    return o.to(dtype), final_state


def naive_spike_attention_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor,
    state: torch.Tensor,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One decoding step: ``q, k`` ``[B, H, D]``, ``v`` ``[B, H, V]``, ``state`` ``[B, H, D, V]``.

    Returns ``o`` ``[B, H, V]`` in ``q.dtype`` and the new state (float32, float64 for float64 input).
    """
    D = q.shape[-1]
    acc = _compute_dtype(q.dtype)
    if scale is None:
        scale = D**-0.5
    qf, kf, vf, ld = q.to(acc), k.to(acc), v.to(acc), log_decay.to(acc)
    state = state.to(acc) * ld.exp()[None, :, None, None] + kf[..., :, None] * vf[..., None, :]
    o = scale * torch.einsum("bhd,bhdv->bhv", qf, state)
    return o.to(q.dtype), state


def naive_recurrent_spike_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The recurrent form, one ``naive_spike_attention_step`` per token (``cu_seqlens``: packed sequences, each
    from its own initial state, as in :func:`naive_chunk_spike_attention`)."""
    if cu_seqlens is not None:
        return per_sequence(
            naive_recurrent_spike_attention, (q, k, v), (log_decay, scale), initial_state, output_final_state,
            cu_seqlens,
        )  # fmt: skip
    B, T, H, D = q.shape
    V = v.shape[-1]
    acc = _compute_dtype(q.dtype)
    state = q.new_zeros(B, H, D, V, dtype=acc) if initial_state is None else initial_state.to(acc)
    outputs = []
    for t in range(T):
        o_t, state = naive_spike_attention_step(q[:, t], k[:, t], v[:, t], log_decay, state, scale)
        outputs.append(o_t)
    return torch.stack(outputs, dim=1), (state if output_final_state else None)


def naive_chunk_spike_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The chunked linear form in PyTorch, ``O(T * C * D)`` (the CPU path of ``spike_attention``).

    For a chunk of ``C`` tokens (positions ``i = 0..n-1``) entering with state ``h``::

        o_i = scale * [ sum_{j <= i} gamma^(i-j) (q_i . k_j) v_j + gamma^(i+1) q_i^T h ]
        h'  = gamma^n h + sum_j gamma^(n-1-j) k_j v_j^T

    ``cu_seqlens`` ``[N + 1]``: ``N`` sequences packed into one row (``B = 1``), each from its own initial
    state (``[N, H, D, V]``) to its own final state.
    """
    if cu_seqlens is not None:
        return per_sequence(
            naive_chunk_spike_attention, (q, k, v), (log_decay, scale), initial_state, output_final_state,
            cu_seqlens, chunk_size=chunk_size,
        )  # fmt: skip
    B, T, H, D = q.shape
    V = v.shape[-1]
    acc = _compute_dtype(q.dtype)
    if scale is None:
        scale = D**-0.5
    C = chunk_size
    NT = -(-T // C)
    pad = NT * C - T

    def chunked(x: torch.Tensor) -> torch.Tensor:  # [B, T, H, D] -> [B, H, NT, C, D], zero padded
        x = torch.nn.functional.pad(x.to(acc), (0, 0, 0, 0, 0, pad))
        return x.reshape(B, NT, C, H, x.shape[-1]).permute(0, 3, 1, 2, 4)

    qc, kc, vc = chunked(q), chunked(k), chunked(v)
    ld = log_decay.to(acc)  # [H]
    i = torch.arange(C, device=q.device)
    distance = (i[:, None] - i[None, :]).to(acc)
    window = torch.where(distance >= 0, ld[:, None, None] * distance.clamp(min=0), float("-inf")).exp()
    scores = (qc @ kc.transpose(-1, -2)) * window[None, :, None] * scale  # [B, H, NT, C, C]
    o_intra = scores @ vc  # [B, H, NT, C, V]
    query_decay = (ld[:, None] * (i + 1).to(acc)).exp()[None, :, :, None]  # [1, H, C, 1]

    state = q.new_zeros(B, H, D, V, dtype=acc) if initial_state is None else initial_state.to(acc)
    o_inter = []
    for n in range(NT):
        length = min(C, T - n * C)
        key_exponent = torch.where(i < length, ld[:, None] * (length - 1 - i).to(acc), float("-inf"))
        key_decay = key_exponent.exp()[None, :, :, None]  # [1, H, C, 1]
        o_inter.append((qc[:, :, n] * query_decay) @ state)
        state_decay = (ld * length).exp()[None, :, None, None]
        state = state * state_decay + (kc[:, :, n] * key_decay).transpose(-1, -2) @ vc[:, :, n]
    o = o_intra + scale * torch.stack(o_inter, dim=2)
    o = o.permute(0, 2, 3, 1, 4).reshape(B, NT * C, H, V)[:, :T]
    return o.to(q.dtype), (state if output_final_state else None)
