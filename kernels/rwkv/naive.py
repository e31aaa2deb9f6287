"""RWKV-6 ("Finch") recurrence in plain PyTorch: the specification the Triton kernels are tested against.

Layout and semantics follow flash-linear-attention's ``chunk_rwkv6``. For one batch row and one head,
with ``r_t, k_t, w_t, u`` in ``R^K``, ``v_t`` in ``R^V`` and a state ``S`` in ``R^{K x V}``::

    o_t = scale * r_t^T (S_{t-1} + diag(u) k_t v_t^T)          # the current token gets the bonus u
    S_t = diag(exp(w_t)) S_{t-1} + k_t v_t^T                   # w_t is the log decay (<= 0)

``S_{-1}`` is the initial state (zeros by default) and ``S_{T-1}`` the final state.

Everything here runs in float32 (float64 stays float64) whatever the input dtype, is differentiable by
autograd, and works on any device; it is slow and meant for tests and the CPU path.
"""

from __future__ import annotations

import torch

from ..varlen import per_sequence

__all__ = ["naive_chunk_rwkv6", "naive_recurrent_rwkv6", "naive_rwkv6_step"]


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def naive_recurrent_rwkv6(
    r: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    w: torch.Tensor,
    u: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The recurrence token by token.

    Args:
        r, k, w: ``[B, T, H, K]`` receptance, key and log decay.
        v: ``[B, T, H, V]`` value.
        u: ``[H, K]`` bonus for the current token.
        scale: multiplies the output; ``K ** -0.5`` by default.
        initial_state: ``[B, H, K, V]`` state before the first token, zeros when ``None``.
        output_final_state: also return the state after the last token.
        cu_seqlens: ``[N + 1]`` starts and end of ``N`` sequences packed into one row (``B = 1``); each
            runs from its own initial state (``[N, H, K, V]``) and has its own final state.

    Returns:
        ``o`` ``[B, T, H, V]`` in ``r.dtype`` and the final state ``[B, H, K, V]`` (float32) or ``None``.
    """
    if cu_seqlens is not None:
        return per_sequence(
            naive_recurrent_rwkv6, (r, k, v, w), (u, scale), initial_state, output_final_state, cu_seqlens
        )
    B, T, H, K = r.shape
    V = v.shape[-1]
    dtype, acc = r.dtype, _compute_dtype(r.dtype)
    if scale is None:
        scale = K**-0.5
    r, k, v, w = (x.to(acc) for x in (r, k, v, w))
    u = u.to(acc)
    state = r.new_zeros(B, H, K, V) if initial_state is None else initial_state.to(acc)
    outputs = []
    for t in range(T):
        kv = k[:, t, :, :, None] * v[:, t, :, None, :]  # [B, H, K, V]
        outputs.append(scale * torch.einsum("bhk,bhkv->bhv", r[:, t], state + u[None, :, :, None] * kv))
        state = state * w[:, t, :, :, None].exp() + kv
    o = torch.stack(outputs, dim=1) if T > 0 else v.new_zeros(B, 0, H, V)
    return o.to(dtype), (state if output_final_state else None)


def naive_rwkv6_step(
    r: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    w: torch.Tensor,
    u: torch.Tensor,
    state: torch.Tensor,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One decoding step: ``r, k, w`` ``[B, H, K]``, ``v`` ``[B, H, V]``, ``state`` ``[B, H, K, V]``.

    Returns ``o`` ``[B, H, V]`` in ``r.dtype`` and the new state (float32, or float64 for float64 input).
    """
    K = r.shape[-1]
    acc = _compute_dtype(r.dtype)
    if scale is None:
        scale = K**-0.5
    rf, kf, vf, wf, uf = (x.to(acc) for x in (r, k, v, w, u))
    state = state.to(acc)
    kv = kf[..., :, None] * vf[..., None, :]
    o = scale * torch.einsum("bhk,bhkv->bhv", rf, state + uf[None, :, :, None] * kv)
    return o.to(r.dtype), state * wf[..., None].exp() + kv


def naive_chunk_rwkv6(
    r: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    w: torch.Tensor,
    u: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = 16,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The same function in chunked form, vectorised in PyTorch (the CPU path of ``rwkv6``).

    Inside a chunk of ``C`` tokens starting with state ``h``, with ``gi`` the inclusive and ``ge`` the
    exclusive cumulative sum of ``w`` from the chunk start::

        o_t = scale * [ (r_t * exp(ge_t))^T h
                        + sum_{s<t} (sum_k r_tk k_sk exp(ge_tk - gi_sk)) v_s
                        + (r_t . (u * k_t)) v_t ]
        h'  = exp(gi_last) * h + sum_s (k_s * exp(gi_last - gi_s)) v_s^T

    Every exponent is a sum of log decays over a run of steps, so it is <= 0: nothing overflows however
    strong the decay. The pairwise factor is formed for the pairs ``s < t`` only, ``O(T * C * K / 2)`` memory. ``cu_seqlens`` as in
    :func:`naive_recurrent_rwkv6`.
    """
    if cu_seqlens is not None:
        return per_sequence(
            naive_chunk_rwkv6, (r, k, v, w), (u, scale), initial_state, output_final_state, cu_seqlens,
            chunk_size=chunk_size,
        )  # fmt: skip
    B, T, H, K = r.shape
    V = v.shape[-1]
    acc = _compute_dtype(r.dtype)
    if scale is None:
        scale = K**-0.5
    C = chunk_size
    NT = -(-T // C)
    pad = NT * C - T

    def chunked(x: torch.Tensor) -> torch.Tensor:  # [B, T, H, D] -> [B, H, NT, C, D], zero padded
        x = torch.nn.functional.pad(x.to(acc), (0, 0, 0, 0, 0, pad))
        return x.reshape(B, NT, C, H, x.shape[-1]).permute(0, 3, 1, 2, 4)

    rc, kc, vc, wc = chunked(r), chunked(k), chunked(v), chunked(w)  # padded w = 0 keeps the state
    uf = u.to(acc)
    gi = wc.cumsum(dim=3)
    ge = gi - wc
    gl = gi[:, :, :, -1]  # [B, H, NT, K]

    # the pairs s < t only (C(C-1)/2 of the C² the full [C, C, K] factor would exponentiate: 2-3x faster here)
    ti, si = torch.tril_indices(C, C, -1, device=r.device)
    pairs = ((rc[..., ti, :] * kc[..., si, :]) * (ge[..., ti, :] - gi[..., si, :]).exp()).sum(-1)
    scores = rc.new_zeros(B, H, NT, C, C)
    scores[..., ti, si] = pairs  # [B, H, NT, C(t), C(s)]
    bonus = (rc * uf[None, :, None, None, :] * kc).sum(-1)  # [B, H, NT, C]
    scores = scores + torch.diag_embed(bonus)
    o_intra = scores @ vc  # [B, H, NT, C, V]

    state = r.new_zeros(B, H, K, V, dtype=acc) if initial_state is None else initial_state.to(acc)
    o_inter = []
    for n in range(NT):
        o_inter.append((rc[:, :, n] * ge[:, :, n].exp()) @ state)
        k_decayed = kc[:, :, n] * (gl[:, :, n, None, :] - gi[:, :, n]).exp()
        state = state * gl[:, :, n, :, None].exp() + k_decayed.transpose(-1, -2) @ vc[:, :, n]
    o = scale * (o_intra + torch.stack(o_inter, dim=2))  # [B, H, NT, C, V]
    o = o.permute(0, 2, 3, 1, 4).reshape(B, NT * C, H, V)[:, :T]
    return o.to(r.dtype), (state if output_final_state else None)
