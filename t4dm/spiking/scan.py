"""An exponentially decaying running sum over time, the trace behind novelty and the plasticity rules."""

from __future__ import annotations

import torch

__all__ = ["decayed_scan"]

#: Tokens per chunk of the chunked scan: one [C, C] decay matrix, ⌈T / C⌉ sequential steps.
SCAN_CHUNK = 64


def decayed_scan(x: torch.Tensor, decay: float, initial: torch.Tensor | None = None) -> torch.Tensor:
    """The inclusive trace ``y_t = decay · y_{t−1} + x_t`` along axis 1, in float32.

    Args:
        x: ``[B, T, N]`` (any float dtype; computed in float32).
        decay: the factor per step, in [0, 1).
        initial: ``[B, N]``, ``y_{−1}`` (zeros when None).

    Returns:
        ``[B, T, N]`` float32; ``y[:, -1]`` is the state to pass as ``initial`` for the next chunk.

    Chunked: inside a chunk of ``C`` steps ``y = L x + decay^(i+1) y_prev`` with ``L[i, j] = decay^(i−j)``
    (``j ≤ i``), then the chunks in order, so the work is ``O(T·C·N)`` with ``⌈T/C⌉`` sequential steps.
    Equal to the step-by-step loop up to float32 rounding.
    """
    B, T, N = x.shape
    xf = x.float()
    y_prev = xf.new_zeros(B, N) if initial is None else initial.float()
    if T == 1:  # one step (decoding): the recurrence itself, no chunk matrices and no host-to-device constant
        return (
            xf + float(decay) * y_prev[:, None]
        )  # (a CUDA graph capture refuses such copies); same float32 values
    C = min(SCAN_CHUNK, T)
    i = torch.arange(C, device=x.device, dtype=torch.float32)
    distance = i[:, None] - i[None, :]
    base = torch.tensor(decay, dtype=torch.float32, device=x.device)
    # decay^(i-j) for j <= i, else 0 (pow keeps decay = 0 exact: 0^0 = 1)
    lower = torch.where(distance >= 0, torch.pow(base, distance.clamp(min=0)), torch.zeros_like(distance))
    carry = torch.pow(base, i + 1)  # [C]: decay^(i+1)
    outputs = []
    for start in range(0, T, C):
        chunk = xf[:, start : start + C]
        n = chunk.shape[1]
        y = torch.einsum("ij,bjn->bin", lower[:n, :n], chunk) + carry[:n, None] * y_prev[:, None, :]
        outputs.append(y)
        y_prev = y[:, -1]
    return torch.cat(outputs, dim=1) if len(outputs) > 1 else outputs[0]
