"""The stages of a cortical block, each an ``nn.Module`` on ``[B, T, D]`` tensors.

① :class:`ThalamicGate` (with :class:`NoveltyDetector`) → ② :class:`LIFNeurons` → ③ :class:`SpikeAttention`
→ ④ :class:`ApicalModulation` → ⑤ :class:`RWKVRecurrence` → ⑥ output projection, residual and gain (in
:class:`~t4dm.spiking.block.CorticalBlock`). Every stateful stage takes its state and returns the new one,
so a stream cut into chunks gives the output of the whole sequence. States are float32.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import CorticalConfig, check_number
from .ops import KERNEL_OPS, SpikingOps
from .scan import decayed_scan

__all__ = [
    "ApicalModulation",
    "LIFNeurons",
    "NoveltyDetector",
    "RWKVRecurrence",
    "SpikeAttention",
    "ThalamicGate",
    "forward_forward_loss",
    "head_norm",
]


def head_norm(
    x: torch.Tensor, n_heads: int, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> torch.Tensor:
    """Group norm of ``[B, T, D]`` with one group per head, per token (no statistics across time)."""
    B, T, D = x.shape
    return F.group_norm(x.reshape(B * T, D), n_heads, weight, bias, eps).reshape(B, T, D)


def _inverse_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


class NoveltyDetector(nn.Module):
    """Novelty of each token against a running average of the tokens before it (no parameters).

    ``m_t = γ m_{t−1} + (1 − γ) x_t`` with ``γ = exp(−1 / familiarity_tau)``, and
    ``novelty_t = 1 − max(0, cos(x_t, m_{t−1}))`` in [0, 1]: 1 for a token unlike the recent past (and for
    the first token, ``m = 0``), 0 for one that repeats it. Computed without gradient, in float32.
    State: ``m`` ``[B, D]``.
    """

    def __init__(self, familiarity_tau: float) -> None:
        super().__init__()
        self.familiarity_tau = check_number("familiarity_tau", familiarity_tau, low=0.0, low_open=True)
        self.decay = math.exp(-1.0 / self.familiarity_tau)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, trace: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` ``[B, T, D]``, ``trace`` ``[B, D]`` or None → (novelty ``[B, T]`` float32, new trace ``[B, D]``)."""
        B, _, D = x.shape
        xf = x.detach().float()
        m0 = xf.new_zeros(B, D) if trace is None else trace.float()
        m = decayed_scan((1.0 - self.decay) * xf, self.decay, m0)  # inclusive: m_t
        before = torch.cat([m0[:, None], m[:, :-1]], dim=1)  # m_{t-1}
        cos = F.cosine_similarity(xf, before, dim=-1, eps=1e-8)
        return 1.0 - cos.clamp(min=0.0), m[:, -1]

    def extra_repr(self) -> str:
        return f"familiarity_tau={self.familiarity_tau:g}"


class ThalamicGate(nn.Module):
    """Stage ①: a multiplicative gate in (0, 1) per token and channel on the drive into the LIF neurons::

        gate = σ(U₂ tanh(U₁ x̂) + b + softplus(β_ACh) · ACh · novelty + softplus(β_NE) · (NE − 0.5))

    ``x̂`` ``[B, T, D]`` the normalised block input, ``novelty`` ``[B, T]`` in [0, 1]. The softplus keeps the
    signs biological however training moves ``β``: acetylcholine only ever opens the gate, and more for novel
    input than for familiar; arousal (NE) opens it too. Parameters: ``U₁`` D×rank, ``U₂`` rank×D, b, β_ACh,
    β_NE ``[D]``.
    """

    def __init__(self, config: CorticalConfig) -> None:
        super().__init__()
        D, R = config.d_model, config.gate_rank
        self.down = nn.Linear(D, R, bias=False)
        self.up = nn.Linear(R, D, bias=True)
        self.ach_gain = nn.Parameter(torch.full((D,), _inverse_softplus(2.0)))
        self.ne_gain = nn.Parameter(torch.full((D,), _inverse_softplus(1.0)))
        nn.init.normal_(self.up.weight, std=R**-0.5)
        nn.init.zeros_(self.up.bias)

    def forward(
        self, x_hat: torch.Tensor, novelty: torch.Tensor, ach: torch.Tensor, ne: torch.Tensor
    ) -> torch.Tensor:
        """``x_hat`` ``[B, T, D]``, ``novelty`` ``[B, T]``, ``ach``/``ne`` 0-dim → gate ``[B, T, D]``."""
        logits = self.up(torch.tanh(self.down(x_hat)))
        drive = F.softplus(self.ach_gain) * (ach * novelty.to(logits.dtype)[..., None])
        drive = drive + F.softplus(self.ne_gain) * (ne - 0.5)
        return torch.sigmoid(logits + drive.to(logits.dtype))


class LIFNeurons(nn.Module):
    """Stage ②: the fused multi-step LIF kernel on ``[B, T, N]`` currents, state the membrane ``[B, N]``.

    The oscillator bias ``b`` (``[T]``, or ``[B, T]`` with a clock per row) enters as the current ``−b`` (see
    :class:`~t4dm.spiking.oscillator.OscillatorBias`). No parameters: the kernel's constants come from the
    config (``tau_m``, ``v_threshold``, ``v_reset``, surrogate).
    """

    def __init__(self, config: CorticalConfig, ops: SpikingOps = KERNEL_OPS) -> None:
        super().__init__()
        self.tau = config.tau_m
        self.v_threshold = config.v_threshold
        self.v_reset = config.v_reset
        self.surrogate = config.surrogate
        self.alpha = config.surrogate_alpha
        self.detach_reset = config.detach_reset
        self.ops = ops

    def forward(
        self, current: torch.Tensor, membrane: torch.Tensor | None = None, bias: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns ``(spikes [B, T, N] in current's dtype, exactly 0/1; final membrane [B, N] float32;
        the current the neurons received [B, T, N])``."""
        if bias is not None:
            bias = bias.to(current.dtype)
            current = current - (bias[None, :, None] if bias.dim() == 1 else bias[:, :, None])
        spikes, v_final = self.ops.lif(
            current,
            tau=self.tau,
            v_threshold=self.v_threshold,
            v_reset=self.v_reset,
            decay_input=True,
            surrogate=self.surrogate,
            alpha=self.alpha,
            detach_reset=self.detach_reset,
            time_dim=1,
            v0=membrane,
            return_membrane=True,
        )
        return spikes, v_final, current

    def extra_repr(self) -> str:
        return f"tau={self.tau:g}, v_threshold={self.v_threshold:g}, v_reset={self.v_reset}, surrogate={self.surrogate}"


class SpikeAttention(nn.Module):
    """Stage ③: causal spike attention with a learnable STDP window per head.

    From the stage-② spikes ``s`` ``[B, T, D]``: ``[q | k] = LIF(LN(W_qk s))`` (binary, ``[B, T, 2D]``),
    ``v = W_v s``; per head ``o_t = scale Σ_{s≤t} γ_h^(t−s) (q_t·k_s) v_s`` (the kernel), with
    ``log γ_h = −exp(ρ_h − κ_5HT·(5HT − 0.5))``: the window's time constant ``exp(ρ_h)`` tokens (initialised
    log-spaced over ``attention_window``) stretched by serotonin. Output ``a = W_o GN(o)`` ``[B, T, D]``.
    State: the q/k membranes ``[B, 2D]`` and the attention state ``[B, H, K, K]``.
    """

    def __init__(self, config: CorticalConfig, ops: SpikingOps = KERNEL_OPS) -> None:
        super().__init__()
        D, H = config.d_model, config.n_heads
        self.n_heads, self.head_dim, self.eps = H, config.head_dim, config.norm_eps
        self.kappa_5ht = config.kappa_5ht
        self.ops = ops
        self.qk_proj = nn.Linear(D, 2 * D, bias=False)
        self.qk_norm = nn.LayerNorm(2 * D, eps=config.norm_eps)
        nn.init.constant_(self.qk_norm.weight, config.qk_input_scale)
        self.v_proj = nn.Linear(D, D, bias=False)
        shortest, longest = config.attention_window
        taus = (
            torch.logspace(math.log10(shortest), math.log10(longest), H)
            if H > 1
            else torch.tensor([shortest])
        )
        self.window_log_tau = nn.Parameter(taus.log())
        self.out_norm_weight = nn.Parameter(torch.ones(D))
        self.out_norm_bias = nn.Parameter(torch.zeros(D))
        self.out_proj = nn.Linear(D, D, bias=False)
        self.lif = LIFNeurons(config, ops)

    def log_decay(self, serotonin: torch.Tensor | float = 0.5) -> torch.Tensor:
        """``[H]`` float32, < 0: the per-head log decay of the window per token."""
        return -torch.exp(-self.kappa_5ht * (serotonin - 0.5) - self.window_log_tau.float())

    def forward(
        self,
        spikes: torch.Tensor,
        serotonin: torch.Tensor,
        bias: torch.Tensor | None,
        qk_membrane: torch.Tensor | None,
        state: torch.Tensor | None,
        want_state: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Returns ``(a [B, T, D], q|k spikes [B, T, 2D], new q/k membrane [B, 2D], new state or None)``."""
        B, T, D = spikes.shape
        H, K = self.n_heads, self.head_dim
        qk, qk_membrane, _ = self.lif(self.qk_norm(self.qk_proj(spikes)), qk_membrane, bias)
        q, k = qk.view(B, T, 2, H, K).unbind(2)
        v = self.v_proj(spikes).view(B, T, H, K)
        log_decay = self.log_decay(serotonin)
        if T == 1 and state is not None:
            o, new_state = self.ops.spike_attention_step(
                q[:, 0], k[:, 0], v[:, 0], log_decay, state, check_decay=False
            )
            o = o[:, None]
        else:
            result = self.ops.spike_attention(
                q, k, v, log_decay, initial_state=state, output_final_state=want_state, check_decay=False
            )
            o, new_state = result if want_state else (result, None)
        o = head_norm(o.reshape(B, T, D), H, self.out_norm_weight, self.out_norm_bias, self.eps)
        return self.out_proj(o), qk, qk_membrane, new_state


class ApicalModulation(nn.Module):
    """Stage ④: prediction error against a top-down context and a forward-forward goodness.

    With ``x̂`` the normalised block input, ``a`` the attention output and ``c`` the context (retrieved
    memories in the unified model; ``[B, T, D]`` or ``[B, 1, D]``)::

        p = W_p c                                   top-down prediction of x̂   (p = 0 without context)
        e = x̂ − p                                   prediction error
        z = a ⊙ (1 + (1 − ACh) · tanh(p)) + λ ⊙ e    apical amplification + error passed forward
        pe_t = mean_d e_t²,  goodness_t = mean_d a_t²  (Hinton's forward-forward goodness)

    Acetylcholine sets encoding vs retrieval: at high ACh the top-down amplification fades and the block
    passes bottom-up input and its error (Hasselmo). ``pe`` feeds norepinephrine through the bus and the
    ``goodness`` a forward-forward objective (:func:`forward_forward_loss`).
    """

    def __init__(self, config: CorticalConfig) -> None:
        super().__init__()
        D = config.d_model
        self.pred_proj = nn.Linear(D, D, bias=False)
        self.error_weight = nn.Parameter(torch.full((D,), config.apical_error_init))

    def forward(
        self, x_hat: torch.Tensor, a: torch.Tensor, context: torch.Tensor | None, ach: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns ``(z [B, T, D], prediction error [B, T] float32, goodness [B, T] float32)``."""
        goodness = a.float().square().mean(-1)
        if context is None:
            error = x_hat
            z = a + self.error_weight * error
        else:
            prediction = self.pred_proj(context)
            error = x_hat - prediction
            z = a * (1.0 + (1.0 - ach).to(a.dtype) * torch.tanh(prediction)) + self.error_weight * error
        return z, error.float().square().mean(-1), goodness


def forward_forward_loss(goodness: torch.Tensor, positive: bool, threshold: float = 1.0) -> torch.Tensor:
    """Hinton's forward-forward loss of a block: ``softplus(θ − G)`` for positive data, ``softplus(G − θ)``
    for negative, averaged over tokens. ``goodness`` ``[B, T]`` from the block's signals; detach the block's
    input to keep the objective local."""
    margin = threshold - goodness if positive else goodness - threshold
    return F.softplus(margin).mean()


class RWKVRecurrence(nn.Module):
    """Stage ⑤: RWKV-6 time mixing with token shift (the kernel), per head ``K = head_dim``.

    With ``z'`` the previous token's input (from the state for the first token) and ``Δ = z' − z``::

        x_* = z + Δ ⊙ (μ_* + LoRA_*(z + Δ ⊙ μ_x))       * ∈ {w, k, v, r, g}   (data-dependent lerp)
        r, k, v = W_r x_r, W_k x_k, W_v x_v;  g = SiLU(W_g x_g)
        log w = −exp(w₀ + tanh(x_w A) B − κ_5HT·(5HT − 0.5))                    (≤ 0, serotonin slows decay)
        o = rwkv6(r, k, v, log w, u) per head;   out = GN(o) ⊙ g               [B, T, D]

    State: the last input token ``[B, D]`` (token shift) and the RWKV state ``[B, H, K, K]``.
    """

    def __init__(self, config: CorticalConfig, ops: SpikingOps = KERNEL_OPS) -> None:
        super().__init__()
        D, H = config.d_model, config.n_heads
        R, Rd = config.rwkv_mix_rank, config.rwkv_decay_rank
        self.n_heads, self.head_dim, self.eps = H, config.head_dim, config.norm_eps
        self.kappa_5ht = config.kappa_5ht
        self.ops = ops
        ratio = torch.arange(D, dtype=torch.float32) / max(D - 1, 1)
        self.mix_x = nn.Parameter(1.0 - ratio**0.5)
        self.mix = nn.Parameter(torch.stack([1.0 - ratio ** (0.3 + 0.2 * i) for i in range(5)]))  # [5, D]
        self.mix_w1 = nn.Parameter(torch.empty(D, 5 * R).uniform_(-1e-2, 1e-2))
        self.mix_w2 = nn.Parameter(torch.empty(5, R, D).uniform_(-1e-2, 1e-2))
        self.decay_base = nn.Parameter(-6.0 + 5.0 * ratio**0.85)  # log decay -exp(w0) from -0.0025 to -0.37
        self.decay_w1 = nn.Parameter(torch.empty(D, Rd).uniform_(-1e-2, 1e-2))
        self.decay_w2 = nn.Parameter(torch.empty(Rd, D).uniform_(-1e-2, 1e-2))
        self.bonus = nn.Parameter((1.0 - ratio).view(H, self.head_dim).clone())
        self.r_proj = nn.Linear(D, D, bias=False)
        self.k_proj = nn.Linear(D, D, bias=False)
        self.v_proj = nn.Linear(D, D, bias=False)
        self.g_proj = nn.Linear(D, D, bias=False)
        self.out_norm_weight = nn.Parameter(torch.ones(D))
        self.out_norm_bias = nn.Parameter(torch.zeros(D))

    def log_decay(self, x_w: torch.Tensor, serotonin: torch.Tensor | float = 0.5) -> torch.Tensor:
        """The data-dependent log decay ``[B, T, D]`` float32 (≤ 0) for the decay-mixed input ``x_w``."""
        w = self.decay_base + torch.tanh(x_w @ self.decay_w1) @ self.decay_w2
        return -torch.exp(w.float() - self.kappa_5ht * (serotonin - 0.5))

    def forward(
        self,
        z: torch.Tensor,
        serotonin: torch.Tensor,
        shift: torch.Tensor | None,
        state: torch.Tensor | None,
        want_state: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Returns ``(out [B, T, D], last input token [B, D] float32, new RWKV state or None)``."""
        B, T, D = z.shape
        H, K = self.n_heads, self.head_dim
        first = z.new_zeros(B, 1, D) if shift is None else shift.to(z.dtype)[:, None]
        delta = (first if T == 1 else torch.cat([first, z[:, :-1]], dim=1)) - z
        lora = torch.tanh((z + delta * self.mix_x) @ self.mix_w1).view(B, T, 5, -1)
        lora = torch.einsum("btfr,frd->fbtd", lora, self.mix_w2)  # [5, B, T, D]
        # the five mixes in one broadcast: x_* = z + Δ ⊙ (μ_* + LoRA_*)
        x_w, x_k, x_v, x_r, x_g = (z + delta * (self.mix[:, None, None] + lora)).unbind(0)
        r = self.r_proj(x_r).view(B, T, H, K)
        k = self.k_proj(x_k).view(B, T, H, K)
        v = self.v_proj(x_v).view(B, T, H, K)
        g = F.silu(self.g_proj(x_g))
        log_w = self.log_decay(x_w, serotonin).to(z.dtype).view(B, T, H, K)
        if T == 1 and state is not None:
            o, new_state = self.ops.rwkv6_step(
                r[:, 0], k[:, 0], v[:, 0], log_w[:, 0], self.bonus, state, check_decay=False
            )
            o = o[:, None]
        else:
            o, new_state = self.ops.rwkv6(
                r,
                k,
                v,
                log_w,
                self.bonus,
                initial_state=state,
                output_final_state=want_state,
                check_decay=False,
            )
        out = head_norm(o.reshape(B, T, D), H, self.out_norm_weight, self.out_norm_bias, self.eps) * g
        return out, z[:, -1].float(), new_state
