"""An exponentially decaying running sum over time, the trace behind novelty and the plasticity rules."""

from __future__ import annotations

import torch

__all__ = ["decayed_scan"]

#: Tokens per chunk of the chunked scan: one [C, C] decay matrix inside chunks, one [K, K] across the K chunks.
SCAN_CHUNK = 64


def decayed_scan(x: torch.Tensor, decay: float, initial: torch.Tensor | None = None) -> torch.Tensor:
    """The inclusive trace ``y_t = decay · y_{t−1} + x_t`` along axis 1, in float32.

    Args:
        x: ``[B, T, N]`` (any float dtype; computed in float32).
        decay: the factor per step, in [0, 1).
        initial: ``[B, N]``, ``y_{−1}`` (zeros when None).

    Returns:
        ``[B, T, N]`` float32; ``y[:, -1]`` is the state to pass as ``initial`` for the next chunk.

    Chunked with no loop over time: ``T`` is cut into ``K`` chunks of ``C`` (zeros pad the last, which
    changes nothing before them); inside a chunk ``y = L x`` with ``L[i, j] = decay^(i−j)`` (``j ≤ i``), the
    chunks' end values carried across chunks the same way with ``decay^C`` (a ``[K, K]`` matrix), then each
    chunk adds ``decay^(i+1)`` times the value carried into it. ``O(T·C·N + K²·N)`` work in a fixed number of
    operations, whatever ``T``: ``torch.compile`` with dynamic shapes traces one graph for every length.
    Equal to the step-by-step loop up to float32 rounding.
    """
    B, T, N = x.shape
    xf = x.float()
    y_prev = xf.new_zeros(B, N) if initial is None else initial.float()
    if T == 1:
        # one step (decoding): the recurrence itself, same float32 values, without the chunk matrices and
        # their host-to-device constant (a CUDA graph capture refuses such copies)
        return xf + float(decay) * y_prev[:, None]
    C = SCAN_CHUNK
    K = (T + C - 1) // C
    chunks = torch.nn.functional.pad(xf, (0, 0, 0, K * C - T)).view(B, K, C, N)
    base = torch.tensor(decay, dtype=torch.float32, device=x.device)
    i = torch.arange(C, device=x.device, dtype=torch.float32)
    local = torch.matmul(_powers(base, i), chunks)  # each chunk from a zero start (batched [C, C] @ [C, N])
    k = torch.arange(K, device=x.device, dtype=torch.float32)
    across = torch.pow(base, C)
    # the value at the end of chunk k: Σ_{j ≤ k} decay^(C(k−j)) · (chunk j's own end) + decay^(C(k+1)) · y_prev
    ends = torch.matmul(_powers(across, k), local[:, :, -1])
    ends = ends + torch.pow(across, k + 1)[None, :, None] * y_prev[:, None, :]
    carried = torch.cat([y_prev[:, None], ends[:, :-1]], dim=1)  # into each chunk: the end of the one before
    into = (torch.pow(base, i + 1)[None, None, :, None], carried[:, :, None, :])
    # in place when no gradient is recorded (novelty and the plasticity traces run without): one pass less
    y = local.addcmul_(*into) if not torch.is_grad_enabled() else torch.addcmul(local, *into)
    return y.view(B, K * C, N)[:, :T]


def _powers(base: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
    """``P[a, b] = base^(i[a] − i[b])`` for ``b ≤ a``, else 0 (pow keeps base 0 exact: 0^0 = 1)."""
    distance = i[:, None] - i[None, :]
    return torch.where(distance >= 0, torch.pow(base, distance.clamp(min=0)), torch.zeros_like(distance))
