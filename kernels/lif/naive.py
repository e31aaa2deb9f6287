"""The multi-step LIF neuron as a plain PyTorch loop: the specification the Triton kernels are checked against.

Semantics are SpikingJelly's multi-step LIF (``spikingjelly.activation_based.functional.neuron.lif_multi_step``)
with the arithmetic in float32, one operation at a time, in the order written below::

    r   = v_reset if v_reset is not None else 0.0
    h_t = v_{t-1} + (x_t - (v_{t-1} - r)) / tau           decay_input=True
    h_t = v_{t-1} - (v_{t-1} - r) / tau + x_t             decay_input=False
    s_t = H(h_t - v_threshold)                            H(u) = 1 if u >= 0 else 0
    v_t = h_t * (1 - s_t) + v_reset * s_t                 hard reset (v_reset is a number)
    v_t = h_t - s_t * v_threshold                         soft reset (v_reset is None)

The backward pass is autograd through this loop with ``H'`` replaced by the surrogate derivative ``g'(u)``
(:data:`SURROGATES`); ``detach_reset=True`` detaches ``s_t`` inside the reset expression only, so the
gradient still reaches the spikes themselves but not the membrane through the reset.

The division by ``tau`` is a true float32 division by a 0-dim tensor on the input's device. A Python float
would do on the CPU, but on CUDA PyTorch turns division by a CPU scalar into a multiplication by its
reciprocal, which can differ in the last bit and flip a spike that sits exactly on the threshold.
"""

from __future__ import annotations

import math

import torch

__all__ = ["SURROGATES", "lif_multistep_forward", "lif_multistep_naive", "surrogate_grad"]

#: Surrogate names and their ids in the Triton kernels. ``superspike`` is another name for ``fast_sigmoid``.
SURROGATES: dict[str, int] = {
    "sigmoid": 0,
    "atan": 1,
    "fast_sigmoid": 2,
    "superspike": 2,
    "piecewise_quadratic": 3,
    "erf": 4,
}


def surrogate_grad(u: torch.Tensor, alpha: float, surrogate: str) -> torch.Tensor:
    """The surrogate derivative ``g'(u)`` at ``u = h - v_threshold``, in float32.

    - ``sigmoid``: ``g'(u) = α·σ(αu)·(1 − σ(αu))`` (SpikingJelly ``Sigmoid``, α = 4 there).
    - ``atan``: ``g'(u) = (α/2) / (1 + (π/2·α·u)²)`` (SpikingJelly ``ATan``, α = 2 there).
    - ``fast_sigmoid`` / ``superspike``: ``g'(u) = 1 / (1 + α·|u|)²`` (Zenke & Ganguli's SuperSpike, snnTorch's
      ``fast_sigmoid``; peak 1 at u = 0). SpikingJelly's ``SuperSpike(α)`` is ``α / (1 + |u|)²`` and its
      ``SoftSign(α)`` is ``α / (2·(1 + α|u|)²)``: other parametrisations of the same shape.
    - ``piecewise_quadratic``: ``g'(u) = max(0, α − α²·|u|)`` (SpikingJelly ``PiecewiseQuadratic``, α = 1 there).
    - ``erf``: ``g'(u) = α/√π · exp(−α²u²)`` (SpikingJelly ``Erf``, α = 2 there).
    """
    if surrogate == "sigmoid":
        sig = torch.sigmoid(alpha * u)
        return alpha * sig * (1.0 - sig)
    if surrogate == "atan":
        z = (math.pi / 2 * alpha) * u
        return (alpha / 2) / (1.0 + z * z)
    if surrogate in ("fast_sigmoid", "superspike"):
        z = 1.0 + alpha * u.abs()
        return 1.0 / (z * z)
    if surrogate == "piecewise_quadratic":
        return (alpha - alpha * alpha * u.abs()).clamp_min(0.0)
    if surrogate == "erf":
        z = alpha * u
        return (alpha / math.sqrt(math.pi)) * torch.exp(-z * z)
    raise ValueError(f"surrogate must be one of {sorted(SURROGATES)}, got {surrogate!r}")


class _SpikeFunction(torch.autograd.Function):
    """``H(u)`` forward, ``grad · g'(u)`` backward."""

    @staticmethod
    def forward(ctx, u: torch.Tensor, alpha: float, surrogate: str) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(u)
        ctx.alpha = alpha
        ctx.surrogate = surrogate
        return (u >= 0).to(u.dtype)

    @staticmethod
    def backward(ctx, grad_spikes: torch.Tensor):  # type: ignore[override]
        (u,) = ctx.saved_tensors
        return grad_spikes * surrogate_grad(u, ctx.alpha, ctx.surrogate), None, None


def lif_multistep_naive(
    x: torch.Tensor,
    tau: float = 2.0,
    v_threshold: float = 1.0,
    v_reset: float | None = 0.0,
    decay_input: bool = True,
    surrogate: str = "sigmoid",
    alpha: float = 4.0,
    detach_reset: bool = False,
    v0: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the LIF neuron over the time axis 0 of ``x``, one step at a time.

    Args:
        x: input current ``[T, *neurons]``, float32, bfloat16 or float16 (computed in float32).
        v0: initial membrane ``[*neurons]`` (any float dtype, used as float32); zeros when None.

    Returns:
        ``(spikes, v_final)``: spikes ``[T, *neurons]`` in ``x.dtype`` (exactly 0 or 1) and the membrane after
        the last step ``[*neurons]`` in float32. Both are differentiable (surrogate gradient).

    No input checks: :func:`t4dm.kernels.lif.lif_multistep` validates and then calls this on the CPU.
    """
    xf = x.float()
    v = torch.zeros_like(xf[0]) if v0 is None else v0.float()
    tau_t = torch.tensor(tau, dtype=torch.float32, device=x.device)
    reset_value = 0.0 if v_reset is None else float(v_reset)
    spikes = []
    for x_t in xf.unbind(0):  # unbind, not xf[t]: indexing's backward would build a [T, ...] tensor per step
        if decay_input:
            h = v + (x_t - (v - reset_value)) / tau_t
        else:
            h = v - (v - reset_value) / tau_t + x_t
        s = _SpikeFunction.apply(h - v_threshold, alpha, surrogate)
        s_reset = s.detach() if detach_reset else s
        if v_reset is None:
            v = h - s_reset * v_threshold
        else:
            v = h * (1.0 - s_reset) + reset_value * s_reset
        spikes.append(s)
    return torch.stack(spikes).to(x.dtype), v


def lif_multistep_forward(
    x: torch.Tensor,
    tau: float = 2.0,
    v_threshold: float = 1.0,
    v_reset: float | None = 0.0,
    decay_input: bool = True,
    v0: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`lif_multistep_naive` without autograd: the same float32 operations in the same order, written
    into buffers allocated once instead of new tensors per step — the CPU path when nothing needs a gradient.
    Spikes and the final membrane are bit for bit the reference's (tested)."""
    xf = x.float()
    v = torch.zeros_like(xf[0]) if v0 is None else v0.float().clone()
    tau_t = torch.tensor(tau, dtype=torch.float32, device=x.device)
    reset_value = 0.0 if v_reset is None else float(v_reset)
    spikes = torch.empty_like(xf)
    h, a = torch.empty_like(v), torch.empty_like(v)
    fired = torch.empty_like(v, dtype=torch.bool)
    one = torch.ones((), dtype=torch.float32, device=x.device)
    for t in range(xf.shape[0]):
        x_t, s = xf[t], spikes[t]
        torch.sub(v, reset_value, out=a)  # v - r
        if decay_input:
            torch.sub(x_t, a, out=a)  # x - (v - r)
            torch.div(a, tau_t, out=a)
            torch.add(v, a, out=h)  # v + (x - (v - r)) / tau
        else:
            torch.div(a, tau_t, out=a)
            torch.sub(v, a, out=h)
            h.add_(x_t)  # v - (v - r) / tau + x
        torch.sub(h, v_threshold, out=a)
        torch.ge(a, 0, out=fired)
        s.copy_(fired)
        if v_reset is None:
            torch.mul(s, v_threshold, out=a)
            torch.sub(h, a, out=v)  # h - s * v_threshold
        else:
            torch.sub(one, s, out=a)  # 1 - s
            torch.mul(h, a, out=v)
            torch.mul(s, reset_value, out=a)
            v.add_(a)  # h * (1 - s) + r * s
    return spikes.to(x.dtype), v
