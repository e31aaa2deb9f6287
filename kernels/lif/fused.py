"""Fused multi-step LIF neuron with surrogate gradients, in Triton.

Four layers, as in every kernel file here:

1. ``_lif_fwd_kernel``, ``_lif_fwd_fixup_kernel``, ``_lif_bwd_kernel``, ``_lif_bwd_carry_kernel`` (Triton);
2. the host launchers :func:`lif_fwd` and :func:`lif_bwd`;
3. the operators ``torch.ops.t4dm.lif_fwd`` / ``lif_bwd`` (``torch.library.custom_op``: fake shapes for
   torch.compile, the backward registered with the forward), and ``lif_fwd_cpu`` / ``lif_bwd_cpu`` over the
   Numba launchers of :mod:`t4dm.kernels.lif.cpu` (the same plan without time chunks);
4. the public :func:`lif_multistep`, which checks its inputs and runs the Triton kernels on CUDA, the Numba ones
   on the CPU and the PyTorch reference (:mod:`t4dm.kernels.lif.naive`) elsewhere.

Layout. Any tensor with a time axis is viewed, without a copy when it is contiguous, as ``[P, T, Q]``: ``P`` the
product of the dimensions before the time axis, ``Q`` of those after. A program owns ``BLOCK`` neighbouring
``q`` of one ``p``, so loads are coalesced for ``[T, N]`` (P = 1) and for the model's ``[B, T, D]`` (Q = D). When
``Q`` is tiny (``[N, T]``, time last) the host transposes to ``[1, T, P·Q]`` first.

Time parallelism (``chunk``): the time axis is cut into chunks of ``CHUNK`` steps, every chunk of every neuron
block is a program. Chunk 0 starts from the true initial membrane; chunk k > 0 starts from a guess (``v_reset``,
0 for the soft reset), first runs ``WARMUP`` steps of the previous chunk's input (no writes) and then its own
steps, writing spikes. The state after the warm-up is kept as the chunk's *guessed start*. A second kernel walks
the chunks in order per neuron block, carrying the true membrane: where the true start equals the guessed start
bit for bit, the chunk is already right (the same float operations on the same state give the same results); where
it differs, it re-runs the chunk from the true start beside the guess, rewriting spikes (and checkpoints) only
until the two trajectories meet bit for bit, which a hard reset that fires in both makes happen at once (after a
reset the state no longer depends on the past) and the decay ``1 − 1/τ`` makes happen within tens of steps without
one. If they never meet, the walk covers the whole chunk: slower, never wrong. Spikes are exactly those of the
sequential loop.

Backward. The gradient w.r.t. the membrane obeys, walking time backwards,
``carry_{t−1} = (1 − 1/τ)·(g_t·g'(u_t) + c_t·carry_t)`` with ``c_t`` from the reset (below). The forward keeps
only the membrane before every ``SUB``-th step (``[P, ⌈T/SUB⌉, Q]``, float32); the backward re-reads the input and
recomputes ``h`` from those checkpoints (each sub-chunk of ``SUB`` steps is replayed from its checkpoint, unrolled,
``SUB·(SUB+1)/2`` step evaluations that read the input from L1), so HBM traffic is the bytes floor: gradient read,
input re-read, gradient written. With chunks it is a two-pass linear scan: pass 1 walks each chunk backwards from
a zero carry, giving the chunk's local carry and the product ``Φ`` of its coefficients; a short sequential kernel
combines them, ``carry_start = local + Φ·carry_end``, from the last chunk to the first; pass 2 walks each chunk
again from its true end carry and writes the input gradient. That is the same recurrence reassociated, exact up to
float32 rounding.

Float arithmetic: the forward step is written with ``tl.div_rn`` and launched with ``enable_fp_fusion=False`` so that
it performs the very float32 operations of the reference loop, in the same order, without FMA contraction: that
is what makes spikes (and the fix-up's bit-for-bit comparisons) exact. The backward replays the same step the same
way.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ..checks import check_number, or_empty
from .naive import SURROGATES, lif_multistep_forward, lif_multistep_naive

__all__ = [
    "LIFConfig",
    "choose_config",
    "lif_bwd",
    "lif_fwd",
    "lif_multistep",
    "lif_multistep_impl",
]

#: True when this module was imported under ``TRITON_INTERPRET=1`` (kernels run on the CPU, slowly).
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"

#: Tests set this to fill every buffer the launchers allocate with NaN, so an element a kernel never writes shows.
NAN_FILL_OUTPUTS = False

_SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


# ----------------------------------------------------------------------------------------------------------------
# 1. Triton kernels
# ----------------------------------------------------------------------------------------------------------------


@triton.jit
def _lif_step(v, x, tau, v_th, v_reset, DECAY_INPUT: tl.constexpr, SOFT_RESET: tl.constexpr):
    """One LIF step in float32, operation for operation as in ``naive.py``: returns ``(h, spike, v_next)``."""
    if DECAY_INPUT:
        h = v + tl.div_rn(x - (v - v_reset), tau)
    else:
        h = v - tl.div_rn(v - v_reset, tau) + x
    spike = (h >= v_th).to(tl.float32)
    if SOFT_RESET:
        v_next = h - spike * v_th
    else:
        v_next = h * (1.0 - spike) + v_reset * spike
    return h, spike, v_next


@triton.jit
def _i64(value):
    """``value`` as an int64 scalar tensor (a loop index is a plain int under the interpreter)."""
    return tl.zeros([], dtype=tl.int64) + value


@triton.jit
def _surrogate_grad(u, alpha, SURROGATE: tl.constexpr):
    """``g'(u)``; ids as in ``naive.SURROGATES``."""
    if SURROGATE == 0:  # sigmoid
        sig = 1.0 / (1.0 + tl.exp(-alpha * u))
        sg = alpha * sig * (1.0 - sig)
    elif SURROGATE == 1:  # atan
        z = (1.5707963267948966 * alpha) * u
        sg = (0.5 * alpha) / (1.0 + z * z)
    elif SURROGATE == 2:  # fast_sigmoid / superspike
        z = 1.0 + alpha * tl.abs(u)
        sg = 1.0 / (z * z)
    elif SURROGATE == 3:  # piecewise_quadratic
        sg = tl.maximum(alpha - alpha * alpha * tl.abs(u), 0.0)
    else:  # erf
        z = alpha * u
        sg = (0.5641895835477563 * alpha) * tl.exp(-z * z)
    return sg


@triton.jit(do_not_specialize=["T", "n_sub"])
def _lif_fwd_kernel(
    x,  # input current [P, T, Q], float32 / bfloat16 / float16
    v0,  # initial membrane [P, Q] float32 (read only when HAS_V0)
    spikes,  # out: spikes [P, T, Q], dtype of x
    ckpt,  # out: membrane before steps 0, SUB, 2·SUB, ... [P, n_sub, Q] float32 (written when SAVE_CKPT)
    v_start,  # out: membrane each chunk starts from, guessed for chunks > 0 [K, P, Q] float32
    v_end,  # out: membrane after each chunk's last step [K, P, Q] float32
    T,  # number of time steps
    Q,  # neurons per time step per p (the inner, contiguous extent)
    n_sub,  # ceil(T / SUB): checkpoints per neuron
    n_qblocks,  # ceil(Q / BLOCK)
    n_neurons,  # P·Q: stride between chunks in v_start / v_end
    tau,  # membrane time constant (> 1)
    v_th,  # firing threshold
    v_reset,  # reset potential (0.0 for the soft reset; also the decay's reference)
    HAS_V0: tl.constexpr,  # v0 given (else zeros)
    SAVE_CKPT: tl.constexpr,  # write checkpoints for the backward pass
    DECAY_INPUT: tl.constexpr,  # h = v + (x - (v - r)) / tau, else h = v - (v - r) / tau + x
    SOFT_RESET: tl.constexpr,  # v = h - s·v_th, else v = h·(1 - s) + r·s
    CHUNK: tl.constexpr,  # time steps per chunk (a multiple of SUB)
    SUB: tl.constexpr,  # checkpoint interval; steps unrolled per inner loop
    WARMUP: tl.constexpr,  # sub-chunks of warm-up before a chunk > 0
    BLOCK: tl.constexpr,  # neurons per program
):
    i_pq = tl.program_id(0)
    i_k = tl.program_id(1)
    i_p = i_pq // n_qblocks
    i_qb = i_pq % n_qblocks
    o_q = i_qb * BLOCK + tl.arange(0, BLOCK)
    m_q = o_q < Q
    o_state = i_p.to(tl.int64) * Q + o_q  # [P, Q] offset of each neuron
    o_series = i_p.to(tl.int64) * T * Q + o_q  # [P, T, Q] offset of each neuron at t = 0
    o_ckpt = i_p.to(tl.int64) * n_sub * Q + o_q  # [P, n_sub, Q] offset at checkpoint 0

    t_end = tl.minimum((i_k + 1) * CHUNK, T)
    i_s_begin = i_k * (CHUNK // SUB)
    i_s_warm = tl.maximum(i_s_begin - WARMUP, 0)
    if HAS_V0:
        b_v = tl.load(v0 + o_state, mask=m_q, other=0.0)
    else:
        b_v = tl.zeros([BLOCK], dtype=tl.float32)
    # a chunk whose warm-up does not reach back to t = 0 starts from the guess
    b_v = tl.where(i_s_warm > 0, tl.zeros([BLOCK], dtype=tl.float32) + v_reset, b_v)

    o_t = o_series + _i64(i_s_warm) * SUB * Q  # offset of the current step
    for i_w in range(i_s_warm, i_s_begin):  # noqa: B007 (the offset o_t advances instead)
        for j in tl.static_range(SUB):
            b_x = tl.load(x + o_t + j * Q, mask=m_q, other=0.0).to(tl.float32)
            _, _, b_v = _lif_step(b_v, b_x, tau, v_th, v_reset, DECAY_INPUT, SOFT_RESET)
        o_t += SUB * Q
    tl.store(v_start + _i64(i_k) * n_neurons + o_state, b_v, mask=m_q)

    t = _i64(i_s_begin) * SUB  # first step of the current sub-chunk
    o_c = o_ckpt + _i64(i_s_begin) * Q
    while t < t_end:
        if SAVE_CKPT:
            tl.store(ckpt + o_c, b_v, mask=m_q)
        for j in tl.static_range(SUB):
            m_t = m_q & (t + j < t_end)
            b_x = tl.load(x + o_t + j * Q, mask=m_t, other=0.0).to(tl.float32)
            _, b_s, b_v_next = _lif_step(b_v, b_x, tau, v_th, v_reset, DECAY_INPUT, SOFT_RESET)
            tl.store(spikes + o_t + j * Q, b_s.to(spikes.dtype.element_ty), mask=m_t)
            b_v = tl.where(m_t, b_v_next, b_v)
        t += SUB
        o_t += SUB * Q
        o_c += Q
    tl.store(v_end + _i64(i_k) * n_neurons + o_state, b_v, mask=m_q)


@triton.jit(do_not_specialize=["T", "n_sub", "n_chunks"])
def _lif_fwd_fixup_kernel(
    x,  # input current [P, T, Q]
    spikes,  # in/out: spikes [P, T, Q], rewritten where the guessed start was wrong
    ckpt,  # in/out: checkpoints [P, n_sub, Q] float32, rewritten likewise (when SAVE_CKPT)
    v_start,  # guessed chunk starts [K, P, Q] float32 (from _lif_fwd_kernel)
    v_end,  # chunk ends from the guessed starts [K, P, Q] float32
    v_final,  # out: true membrane after step T - 1 [P, Q] float32
    T,  # number of time steps
    Q,  # inner extent
    n_sub,  # ceil(T / SUB)
    n_qblocks,  # ceil(Q / BLOCK)
    n_neurons,  # P·Q
    n_chunks,  # K = ceil(T / CHUNK)
    tau,  # membrane time constant
    v_th,  # firing threshold
    v_reset,  # reset potential (0.0 for the soft reset)
    SAVE_CKPT: tl.constexpr,  # checkpoints exist and must be fixed too
    DECAY_INPUT: tl.constexpr,  # see _lif_fwd_kernel
    SOFT_RESET: tl.constexpr,  # see _lif_fwd_kernel
    CHUNK: tl.constexpr,  # time steps per chunk
    SUB: tl.constexpr,  # checkpoint interval
    BLOCK: tl.constexpr,  # neurons per program
):
    i_pq = tl.program_id(0)
    i_p = i_pq // n_qblocks
    i_qb = i_pq % n_qblocks
    o_q = i_qb * BLOCK + tl.arange(0, BLOCK)
    m_q = o_q < Q
    o_state = i_p.to(tl.int64) * Q + o_q
    o_series = i_p.to(tl.int64) * T * Q + o_q
    o_ckpt = i_p.to(tl.int64) * n_sub * Q + o_q

    b_v_true = tl.load(v_end + o_state, mask=m_q, other=0.0)  # chunk 0 started from the true membrane
    for i_k in range(1, n_chunks):
        b_v_guess = tl.load(v_start + _i64(i_k) * n_neurons + o_state, mask=m_q, other=0.0)
        b_v_guess_end = tl.load(v_end + _i64(i_k) * n_neurons + o_state, mask=m_q, other=0.0)
        # lanes whose chunk ran from a wrong start, as int32 (an i1 loop-carried tensor trips the compiler)
        b_open = (m_q & (b_v_true != b_v_guess)).to(tl.int32)
        n_open = tl.sum(b_open, axis=0)
        t = _i64(i_k) * CHUNK
        t_end = tl.minimum(t + CHUNK, T)
        b_v_walk = b_v_true
        b_v_shadow = b_v_guess
        if n_open > 0:
            # (a `while` on n_open here trips an assertion in Triton 3.8's layout pass: for + if instead)
            for i_t in range(0, CHUNK):
                if (n_open > 0) & (t < t_end):
                    m_open = b_open != 0
                    if SAVE_CKPT:  # noqa: SIM102 (constexpr test, then a runtime one)
                        if i_t % SUB == 0:
                            tl.store(ckpt + o_ckpt + (t // SUB) * Q, b_v_walk, mask=m_open)
                    b_x = tl.load(x + o_series + t * Q, mask=m_open, other=0.0).to(tl.float32)
                    _, b_s, b_v_walk = _lif_step(b_v_walk, b_x, tau, v_th, v_reset, DECAY_INPUT, SOFT_RESET)
                    _, _, b_v_shadow = _lif_step(b_v_shadow, b_x, tau, v_th, v_reset, DECAY_INPUT, SOFT_RESET)
                    tl.store(spikes + o_series + t * Q, b_s.to(spikes.dtype.element_ty), mask=m_open)
                    b_open = tl.where(b_v_walk != b_v_shadow, b_open, 0)
                    n_open = tl.sum(b_open, axis=0)
                    t += 1
        b_v_true = tl.where(b_open != 0, b_v_walk, b_v_guess_end)
    tl.store(v_final + o_state, b_v_true, mask=m_q)


@triton.jit(do_not_specialize=["T", "n_sub"])
def _lif_bwd_kernel(
    x,  # input current [P, T, Q]
    ckpt,  # membrane before every SUB-th step [P, n_sub, Q] float32
    grad_spikes,  # dL/dspikes [P, T, Q]
    carry_end,  # dL/dv after each chunk's last step [K, P, Q] float32 (read when HAS_CARRY_IN)
    grad_x,  # out: dL/dx [P, T, Q], dtype of x (written when WRITE_GRAD_X)
    carry_start,  # out: dL/dv before each chunk's first step [K, P, Q] float32
    phi,  # out: product of the chunk's carry coefficients [K, P, Q] float32 (written unless WRITE_GRAD_X)
    T,  # number of time steps
    Q,  # inner extent
    n_sub,  # ceil(T / SUB)
    n_qblocks,  # ceil(Q / BLOCK)
    n_neurons,  # P·Q
    tau,  # membrane time constant
    v_th,  # firing threshold
    v_reset,  # reset potential (0.0 for the soft reset)
    alpha,  # surrogate sharpness
    decay,  # dh/dv = 1 - 1/tau
    HAS_CARRY_IN: tl.constexpr,  # start from carry_end (else from zero: pass 1, or no gradient on v_final)
    WRITE_GRAD_X: tl.constexpr,  # pass 2 / sequential: write grad_x; pass 1: write phi instead
    DECAY_INPUT: tl.constexpr,  # see _lif_fwd_kernel
    SOFT_RESET: tl.constexpr,  # see _lif_fwd_kernel
    DETACH_RESET: tl.constexpr,  # no gradient through the spike inside the reset
    SURROGATE: tl.constexpr,  # id in naive.SURROGATES
    CHUNK: tl.constexpr,  # time steps per chunk (a multiple of SUB)
    SUB: tl.constexpr,  # checkpoint interval; h is replayed from the checkpoint within a sub-chunk
    BLOCK: tl.constexpr,  # neurons per program
):
    i_pq = tl.program_id(0)
    i_k = tl.program_id(1)
    i_p = i_pq // n_qblocks
    i_qb = i_pq % n_qblocks
    o_q = i_qb * BLOCK + tl.arange(0, BLOCK)
    m_q = o_q < Q
    o_state = i_p.to(tl.int64) * Q + o_q
    o_series = i_p.to(tl.int64) * T * Q + o_q
    o_ckpt = i_p.to(tl.int64) * n_sub * Q + o_q
    o_chunk = _i64(i_k) * n_neurons + o_state

    if HAS_CARRY_IN:
        b_carry = tl.load(carry_end + o_chunk, mask=m_q, other=0.0)
    else:
        b_carry = tl.zeros([BLOCK], dtype=tl.float32)
    b_phi = tl.full([BLOCK], 1.0, dtype=tl.float32)
    r_tau = 1.0 / tau

    t_end = tl.minimum((i_k + 1) * CHUNK, T)
    i_s_begin = i_k * (CHUNK // SUB)
    i_s_end = tl.cdiv(t_end, SUB)
    t0 = _i64(i_s_end - 1) * SUB  # first step of the current sub-chunk, walking backwards
    while t0 >= _i64(i_s_begin) * SUB:
        b_v_ckpt = tl.load(ckpt + o_ckpt + (t0 // SUB) * Q, mask=m_q, other=0.0)
        o_t0 = o_series + t0 * Q
        for j in tl.static_range(SUB - 1, -1, -1):
            m_t = m_q & (t0 + j < t_end)
            # replay the forward from the checkpoint up to step j (same float operations, same h)
            b_v = b_v_ckpt
            for i in tl.static_range(j):
                b_xi = tl.load(x + o_t0 + i * Q, mask=m_t, other=0.0).to(tl.float32)
                _, _, b_v = _lif_step(b_v, b_xi, tau, v_th, v_reset, DECAY_INPUT, SOFT_RESET)
            b_x = tl.load(x + o_t0 + j * Q, mask=m_t, other=0.0).to(tl.float32)
            b_h, b_s, _ = _lif_step(b_v, b_x, tau, v_th, v_reset, DECAY_INPUT, SOFT_RESET)
            b_gs = tl.load(grad_spikes + o_t0 + j * Q, mask=m_t, other=0.0).to(tl.float32)
            b_sg = _surrogate_grad(b_h - v_th, alpha, SURROGATE)
            # dv_t/dh_t through the reset
            if SOFT_RESET:
                if DETACH_RESET:
                    b_c = tl.full([BLOCK], 1.0, dtype=tl.float32)
                else:
                    b_c = 1.0 - v_th * b_sg
            else:
                if DETACH_RESET:
                    b_c = 1.0 - b_s
                else:
                    b_c = (1.0 - b_s) + (v_reset - b_h) * b_sg
            b_gh = b_gs * b_sg + b_carry * b_c  # dL/dh_t
            if WRITE_GRAD_X:
                if DECAY_INPUT:
                    b_gx = b_gh * r_tau
                else:
                    b_gx = b_gh
                tl.store(grad_x + o_t0 + j * Q, b_gx.to(grad_x.dtype.element_ty), mask=m_t)
            else:
                b_phi = tl.where(m_t, b_phi * (decay * b_c), b_phi)
            b_carry = tl.where(m_t, b_gh * decay, b_carry)
        t0 -= SUB
    tl.store(carry_start + o_chunk, b_carry, mask=m_q)
    if not WRITE_GRAD_X:
        tl.store(phi + o_chunk, b_phi, mask=m_q)


@triton.jit(do_not_specialize=["n_chunks"])
def _lif_bwd_carry_kernel(
    carry_local,  # dL/dv before each chunk from a zero carry at its end [K, P, Q] float32
    phi,  # product of each chunk's carry coefficients [K, P, Q] float32
    grad_v_final,  # dL/dv after step T - 1 [P, Q] float32 (read when HAS_GRAD_V)
    carry_end,  # out: true dL/dv after each chunk's last step [K, P, Q] float32
    n_neurons,  # P·Q
    n_chunks,  # K
    HAS_GRAD_V: tl.constexpr,  # grad_v_final given (else zeros)
    BLOCK: tl.constexpr,  # neurons per program
):
    o_n = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m_n = o_n < n_neurons
    if HAS_GRAD_V:
        b_carry = tl.load(grad_v_final + o_n, mask=m_n, other=0.0)
    else:
        b_carry = tl.zeros([BLOCK], dtype=tl.float32)
    for i_r in range(0, n_chunks):
        o_chunk = _i64(n_chunks - 1 - i_r) * n_neurons + o_n
        b_local = tl.load(carry_local + o_chunk, mask=m_n, other=0.0)
        b_phi = tl.load(phi + o_chunk, mask=m_n, other=0.0)
        tl.store(carry_end + o_chunk, b_carry, mask=m_n)
        b_carry = b_local + b_phi * b_carry


# ----------------------------------------------------------------------------------------------------------------
# 2. Host launchers
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LIFConfig:
    """Launch shape. ``chunk=None`` walks the whole time axis in one program per neuron block (sequential)."""

    block: int = 512  # neurons per program (a power of two)
    num_warps: int = 4
    sub: int = 8  # checkpoint interval / unroll (steps)
    chunk: int | None = None  # time steps per chunk (a multiple of sub), or None
    warmup: int = 0  # warm-up steps before each chunk > 0 (rounded up to a multiple of sub)

    def __post_init__(self) -> None:
        if self.block < 1 or self.block & (self.block - 1):
            raise ValueError(f"LIFConfig.block must be a power of two, got {self.block}")
        if self.sub < 1:
            raise ValueError(f"LIFConfig.sub must be >= 1, got {self.sub}")
        if self.chunk is not None and (self.chunk < self.sub or self.chunk % self.sub):
            raise ValueError(
                f"LIFConfig.chunk must be a positive multiple of sub={self.sub}, got {self.chunk}"
            )
        if self.warmup < 0:
            raise ValueError(f"LIFConfig.warmup must be >= 0, got {self.warmup}")


def _contraction_steps(tau: float) -> int:
    """Steps after which the decay ``(1 − 1/τ)^n`` is below 2⁻²⁴: two trajectories that differ only by their
    start have then usually met bit for bit, spike or no spike."""
    return math.ceil(24 * math.log(2) / -math.log1p(-1.0 / tau))


def choose_config(T: int, P: int, Q: int, tau: float) -> LIFConfig:
    """Pick the launch shape. Not tuned on a GPU yet (no GPU in the session that wrote it): the rule is to go
    time-parallel when the neuron blocks alone give too few programs to hide memory latency (fewer than ~1024,
    i.e. about 8 per SM on an H100) and the sequence is long enough for several chunks."""
    block = min(512, triton.next_power_of_2(max(Q, 1)))
    block = max(block, 32)
    num_warps = max(1, min(8, block // 128))
    n_programs = P * triton.cdiv(Q, block)
    sub = 8
    if n_programs < 1024 and T >= 4 * 64:
        chunk = 64
        warmup = min(chunk, triton.cdiv(_contraction_steps(tau), sub) * sub)
        return LIFConfig(block=block, num_warps=num_warps, sub=sub, chunk=chunk, warmup=warmup)
    return LIFConfig(block=block, num_warps=num_warps, sub=sub)


def choose_cpu_config(Q: int) -> LIFConfig:
    """The Numba kernels' shape (``cpu.py``): blocks of up to 256 neighbouring neurons (a 1 KiB row per step;
    256 to 4096 timed alike on a 2-core VM) and a checkpoint every 16 steps (the backward's replay scratch,
    16 × 256 floats, stays in L1). Chunks and warps do not apply."""
    return LIFConfig(block=max(16, min(256, 1 << (max(Q, 1) - 1).bit_length())), sub=16)


def _empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    if NAN_FILL_OUTPUTS:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def _n_chunks(T: int, config: LIFConfig) -> tuple[int, int]:
    """(CHUNK, K): a sequential config is one chunk covering T (rounded up to a multiple of sub)."""
    if config.chunk is None or config.chunk >= T:
        chunk = triton.cdiv(T, config.sub) * config.sub
        return chunk, 1
    return config.chunk, triton.cdiv(T, config.chunk)


def lif_fwd(
    x: torch.Tensor,
    v0: torch.Tensor | None,
    *,
    tau: float,
    v_threshold: float,
    v_reset: float | None,
    decay_input: bool,
    save_checkpoints: bool,
    config: LIFConfig,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Forward launcher on ``x`` ``[P, T, Q]`` (contiguous) and ``v0`` ``[P, Q]`` float32 (or None).

    Returns ``(spikes [P, T, Q] in x.dtype, v_final [P, Q] float32, checkpoints [P, ceil(T/sub), Q] or None)``.
    """
    P, T, Q = x.shape
    chunk, n_chunks = _n_chunks(T, config)
    sub = config.sub
    n_sub = triton.cdiv(T, sub)
    n_qblocks = triton.cdiv(Q, config.block)
    spikes = _empty((P, T, Q), x.dtype, x.device)
    ckpt = _empty((P, n_sub, Q), torch.float32, x.device) if save_checkpoints else spikes.new_empty(1)
    v_start = _empty((n_chunks, P, Q), torch.float32, x.device)
    v_end = _empty((n_chunks, P, Q), torch.float32, x.device)
    reset = 0.0 if v_reset is None else float(v_reset)
    _lif_fwd_kernel[(P * n_qblocks, n_chunks)](
        x,
        v0 if v0 is not None else v_start,
        spikes,
        ckpt,
        v_start,
        v_end,
        T,
        Q,
        n_sub,
        n_qblocks,
        P * Q,
        float(tau),
        float(v_threshold),
        reset,
        HAS_V0=v0 is not None,
        SAVE_CKPT=save_checkpoints,
        DECAY_INPUT=bool(decay_input),
        SOFT_RESET=v_reset is None,
        CHUNK=chunk,
        SUB=sub,
        WARMUP=triton.cdiv(config.warmup, sub),
        BLOCK=config.block,
        num_warps=config.num_warps,
        enable_fp_fusion=False,
    )
    if n_chunks == 1:
        v_final = v_end[0]
    else:
        v_final = _empty((P, Q), torch.float32, x.device)
        _lif_fwd_fixup_kernel[(P * n_qblocks,)](
            x,
            spikes,
            ckpt,
            v_start,
            v_end,
            v_final,
            T,
            Q,
            n_sub,
            n_qblocks,
            P * Q,
            n_chunks,
            float(tau),
            float(v_threshold),
            reset,
            SAVE_CKPT=save_checkpoints,
            DECAY_INPUT=bool(decay_input),
            SOFT_RESET=v_reset is None,
            CHUNK=chunk,
            SUB=sub,
            BLOCK=config.block,
            num_warps=config.num_warps,
            enable_fp_fusion=False,
        )
    return spikes, v_final, ckpt if save_checkpoints else None


def lif_bwd(
    x: torch.Tensor,
    ckpt: torch.Tensor,
    grad_spikes: torch.Tensor,
    grad_v_final: torch.Tensor | None,
    *,
    tau: float,
    v_threshold: float,
    v_reset: float | None,
    decay_input: bool,
    surrogate: str,
    alpha: float,
    detach_reset: bool,
    config: LIFConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Backward launcher: ``(grad_x [P, T, Q] in x.dtype, grad_v0 [P, Q] float32)``."""
    P, T, Q = x.shape
    chunk, n_chunks = _n_chunks(T, config)
    sub = config.sub
    n_sub = triton.cdiv(T, sub)
    n_qblocks = triton.cdiv(Q, config.block)
    reset = 0.0 if v_reset is None else float(v_reset)
    grad_x = _empty((P, T, Q), x.dtype, x.device)
    carry_start = _empty((n_chunks, P, Q), torch.float32, x.device)
    scalars = (
        T,
        Q,
        n_sub,
        n_qblocks,
        P * Q,
        float(tau),
        float(v_threshold),
        reset,
        float(alpha),
        1.0 - 1.0 / tau,
    )
    flags = dict(
        DECAY_INPUT=bool(decay_input),
        SOFT_RESET=v_reset is None,
        DETACH_RESET=bool(detach_reset),
        SURROGATE=SURROGATES[surrogate],
        CHUNK=chunk,
        SUB=sub,
        BLOCK=config.block,
        num_warps=config.num_warps,
        enable_fp_fusion=False,
    )
    grid = (P * n_qblocks, n_chunks)
    if n_chunks == 1:
        carry_end = grad_v_final
    else:
        carry_local = _empty((n_chunks, P, Q), torch.float32, x.device)
        phi = _empty((n_chunks, P, Q), torch.float32, x.device)
        _lif_bwd_kernel[grid](
            x, ckpt, grad_spikes, carry_local, grad_x, carry_local, phi, *scalars,
            HAS_CARRY_IN=False, WRITE_GRAD_X=False, **flags,
        )  # fmt: skip
        carry_end = _empty((n_chunks, P, Q), torch.float32, x.device)
        carry_block = 1024
        _lif_bwd_carry_kernel[(triton.cdiv(P * Q, carry_block),)](
            carry_local,
            phi,
            grad_v_final if grad_v_final is not None else carry_local,
            carry_end,
            P * Q,
            n_chunks,
            HAS_GRAD_V=grad_v_final is not None,
            BLOCK=carry_block,
            num_warps=4,
        )
    _lif_bwd_kernel[grid](
        x, ckpt, grad_spikes, carry_end if carry_end is not None else carry_start, grad_x, carry_start,
        carry_start, *scalars, HAS_CARRY_IN=carry_end is not None, WRITE_GRAD_X=True, **flags,
    )  # fmt: skip
    return grad_x, carry_start[0]


# ----------------------------------------------------------------------------------------------------------------
# 3. Operators (torch.library)
# ----------------------------------------------------------------------------------------------------------------


# The launchers as PyTorch operators: torch.compile and torch.export see one opaque call with known output shapes
# (``register_fake``) instead of tracing into kernel launches, and the backward is registered with the forward
# (``register_autograd``). The launch shape travels as plain ints. Two pairs with one schema: ``t4dm::lif_fwd`` /
# ``lif_bwd`` launch the Triton kernels (CUDA, or the CPU under ``TRITON_INTERPRET=1``), ``t4dm::lif_fwd_cpu`` /
# ``lif_bwd_cpu`` the Numba kernels of ``cpu.py`` (which read ``block`` and ``sub`` of the launch shape only).


def _config_args(config: LIFConfig) -> tuple[int, int, int, int | None, int]:
    return config.block, config.num_warps, config.sub, config.chunk, config.warmup


def _lif_fwd_cpu(x, v0, *, config: LIFConfig, **params):
    from . import cpu  # Numba is imported (and the kernels loaded from its cache) on the first CPU call

    return cpu.lif_fwd_cpu(x, v0, block=config.block, sub=config.sub, **params)


def _lif_bwd_cpu(x, ckpt, grad_spikes, grad_v_final, *, config: LIFConfig, surrogate: str, **params):
    from . import cpu

    return cpu.lif_bwd_cpu(
        x, ckpt, grad_spikes, grad_v_final, block=config.block, sub=config.sub, surrogate=SURROGATES[surrogate],
        **params,
    )  # fmt: skip


def _define_ops(fwd_name: str, bwd_name: str, fwd_launcher, bwd_launcher):
    """Register ``t4dm::{fwd_name}`` and ``t4dm::{bwd_name}`` (the backward as the forward's autograd) over
    launchers with the signatures of :func:`lif_fwd` and :func:`lif_bwd`; return the two operators."""

    def fwd(
        x: torch.Tensor,
        v0: torch.Tensor | None,
        tau: float,
        v_threshold: float,
        v_reset: float | None,
        decay_input: bool,
        surrogate: str,
        alpha: float,
        detach_reset: bool,
        save_checkpoints: bool,
        block: int,
        num_warps: int,
        sub: int,
        chunk: int | None,
        warmup: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The forward launcher as an operator (``surrogate``, ``alpha``, ``detach_reset`` are for its
        backward); without checkpoints the third output is empty ``[0]``."""
        config = LIFConfig(block=block, num_warps=num_warps, sub=sub, chunk=chunk, warmup=warmup)
        spikes, v_final, ckpt = fwd_launcher(
            x,
            v0,
            tau=tau,
            v_threshold=v_threshold,
            v_reset=v_reset,
            decay_input=decay_input,
            save_checkpoints=save_checkpoints,
            config=config,
        )
        return spikes, v_final, or_empty(ckpt, x)

    def bwd(
        x: torch.Tensor,
        ckpt: torch.Tensor,
        grad_spikes: torch.Tensor,
        grad_v_final: torch.Tensor | None,
        tau: float,
        v_threshold: float,
        v_reset: float | None,
        decay_input: bool,
        surrogate: str,
        alpha: float,
        detach_reset: bool,
        block: int,
        num_warps: int,
        sub: int,
        chunk: int | None,
        warmup: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The backward launcher as an operator: ``(grad_x, grad_v0)``."""
        config = LIFConfig(block=block, num_warps=num_warps, sub=sub, chunk=chunk, warmup=warmup)
        return bwd_launcher(
            x,
            ckpt,
            grad_spikes.contiguous(),
            None if grad_v_final is None else grad_v_final.float().contiguous(),
            tau=tau,
            v_threshold=v_threshold,
            v_reset=v_reset,
            decay_input=decay_input,
            surrogate=surrogate,
            alpha=alpha,
            detach_reset=detach_reset,
            config=config,
        )

    fwd_op = torch.library.custom_op(f"t4dm::{fwd_name}", fwd, mutates_args=())
    bwd_op = torch.library.custom_op(f"t4dm::{bwd_name}", bwd, mutates_args=())

    @fwd_op.register_fake
    def _(
        x, v0, tau, v_threshold, v_reset, decay_input, surrogate, alpha, detach_reset, save_checkpoints, *cfg
    ):
        P, T, Q = x.shape
        sub = cfg[2]
        ckpt_shape = (P, (T + sub - 1) // sub, Q) if save_checkpoints else (0,)
        return (
            x.new_empty((P, T, Q)),
            x.new_empty((P, Q), dtype=torch.float32),
            x.new_empty(ckpt_shape, dtype=torch.float32),
        )

    @bwd_op.register_fake
    def _(x, ckpt, grad_spikes, grad_v_final, *args):
        P, _, Q = x.shape
        return torch.empty_like(x), x.new_empty((P, Q), dtype=torch.float32)

    def setup_context(ctx, inputs, output) -> None:
        x, v0, tau, v_threshold, v_reset, decay_input, surrogate, alpha, detach_reset, save, *config = inputs
        ctx.save_for_backward(x, output[2])
        ctx.has_v0 = v0 is not None
        ctx.saved_checkpoints = save
        ctx.params = (tau, v_threshold, v_reset, decay_input, surrogate, alpha, detach_reset, *config)

    def backward(ctx, grad_spikes, grad_v_final, _grad_ckpt):
        if not ctx.saved_checkpoints:
            raise RuntimeError(
                f"t4dm::{fwd_name} ran with save_checkpoints=False, so it cannot be differentiated; "
                "lif_multistep saves them whenever x or v0 requires a gradient"
            )
        x, ckpt = ctx.saved_tensors
        if grad_spikes is None:
            grad_spikes = torch.zeros_like(x)
        grad_x, grad_v0 = bwd_op(x, ckpt, grad_spikes, grad_v_final, *ctx.params)
        return grad_x, (grad_v0 if ctx.has_v0 else None), *([None] * 13)

    fwd_op.register_autograd(backward, setup_context=setup_context)
    return fwd_op, bwd_op


_lif_fwd_op, _lif_bwd_op = _define_ops("lif_fwd", "lif_bwd", lif_fwd, lif_bwd)
_lif_fwd_cpu_op, _lif_bwd_cpu_op = _define_ops("lif_fwd_cpu", "lif_bwd_cpu", _lif_fwd_cpu, _lif_bwd_cpu)


# ----------------------------------------------------------------------------------------------------------------
# 4. Public function
# ----------------------------------------------------------------------------------------------------------------

#: Below this inner extent the kernels would waste most of each block: transpose to [1, T, P·Q] first.
_MIN_INNER = 16

_BACKENDS = ("auto", "naive", "triton", "cpu")


def _check_inputs(
    x: object,
    tau: object,
    v_threshold: object,
    v_reset: object,
    surrogate: object,
    alpha: object,
    time_dim: object,
    v0: object,
) -> int:
    """Raise ValueError naming the argument; return the normalised time_dim."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _SUPPORTED_DTYPES:
        raise ValueError(
            f"x must be float32, bfloat16 or float16 (state is kept in float32), got dtype {x.dtype}"
        )
    if x.dim() == 0:
        raise ValueError("x has no time axis: expected at least 1 dimension ([T, ...]), got a 0-d tensor")
    if isinstance(time_dim, bool) or not isinstance(time_dim, int) or not -x.dim() <= time_dim < x.dim():
        raise ValueError(f"time_dim must be an int in [{-x.dim()}, {x.dim() - 1}] for x of shape "
                         f"{tuple(x.shape)}, got {time_dim!r}")  # fmt: skip
    time_dim %= x.dim()
    if x.shape[time_dim] == 0:
        raise ValueError(f"x has an empty time axis (time_dim={time_dim}, shape {tuple(x.shape)})")
    tau_f = check_number("tau", tau)
    if tau_f <= 1.0:
        raise ValueError(f"tau must be > 1 (the membrane keeps 1 - 1/tau of itself per step), got {tau!r}")
    check_number("v_threshold", v_threshold)
    if v_reset is not None:
        check_number("v_reset", v_reset)
    if not isinstance(surrogate, str) or surrogate not in SURROGATES:
        raise ValueError(f"surrogate must be one of {sorted(SURROGATES)}, got {surrogate!r}")
    if check_number("alpha", alpha) <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha!r}")
    if v0 is not None:
        expected = tuple(x.shape[:time_dim] + x.shape[time_dim + 1 :])
        if not isinstance(v0, torch.Tensor):
            raise ValueError(
                f"v0 must be a torch.Tensor of shape {expected} or None, got {type(v0).__name__}"
            )
        if tuple(v0.shape) != expected:
            raise ValueError(
                f"v0 must have the shape of x without its time axis, expected {expected}, got {tuple(v0.shape)}"
            )
        if not v0.is_floating_point():
            raise ValueError(f"v0 must be a floating-point tensor, got dtype {v0.dtype}")
        if v0.device != x.device:
            raise ValueError(f"v0 must be on x's device {x.device}, got {v0.device}")
    return time_dim


def _lif_kernels(
    backend: str,
    x: torch.Tensor,
    v0: torch.Tensor | None,
    time_dim: int,
    tau: float,
    v_threshold: float,
    v_reset: float | None,
    decay_input: bool,
    surrogate: str,
    alpha: float,
    detach_reset: bool,
    config: LIFConfig | None,
    needs_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``backend``'s operator (``"triton"`` or ``"cpu"``) on any layout: view as [P, T, Q], run, view back
    (saving the backward's checkpoints when ``needs_grad``). Inputs already checked."""
    shape = tuple(x.shape)
    T = shape[time_dim]
    P = math.prod(shape[:time_dim])
    Q = math.prod(shape[time_dim + 1 :])
    state_shape = shape[:time_dim] + shape[time_dim + 1 :]
    x3 = x.reshape(P, T, Q)
    v03 = None if v0 is None else v0.reshape(P, Q).float()
    transposed = Q < _MIN_INNER and P > 1
    if transposed:
        x3 = x3.transpose(0, 1).reshape(1, T, P * Q)
        v03 = None if v03 is None else v03.reshape(1, P * Q)
    x3 = x3.contiguous()
    v03 = None if v03 is None else v03.contiguous()
    if config is None:
        config = (
            choose_config(T, x3.shape[0], x3.shape[2], tau)
            if backend == "triton"
            else choose_cpu_config(x3.shape[2])
        )
    if not needs_grad and type(x3) is torch.Tensor and not torch.compiler.is_compiling():
        # inference on plain tensors: the launcher itself, without the operator's dispatch (~20 µs a call, as
        # much as a decoded token's whole LIF step on the CPU); traced code and autograd keep the operator
        launcher = lif_fwd if backend == "triton" else _lif_fwd_cpu
        spikes, v_final, _ = launcher(
            x3,
            v03,
            tau=tau,
            v_threshold=v_threshold,
            v_reset=v_reset,
            decay_input=decay_input,
            save_checkpoints=False,
            config=config,
        )
    else:
        spikes, v_final, _ = (_lif_fwd_op if backend == "triton" else _lif_fwd_cpu_op)(
            x3,
            v03,
            tau,
            v_threshold,
            v_reset,
            decay_input,
            surrogate,
            alpha,
            detach_reset,
            needs_grad,
            *_config_args(config),
        )
    if transposed:
        spikes = spikes.reshape(T, P, Q).transpose(0, 1)
    return spikes.reshape(shape), v_final.reshape(state_shape)


def lif_multistep_impl(
    x: torch.Tensor,
    tau: float = 2.0,
    v_threshold: float = 1.0,
    v_reset: float | None = 0.0,
    decay_input: bool = True,
    surrogate: str = "sigmoid",
    alpha: float = 4.0,
    detach_reset: bool = False,
    time_dim: int = 0,
    v0: torch.Tensor | None = None,
    *,
    backend: str = "auto",
    config: LIFConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`lif_multistep` with the backend chosen by hand and an optional launch :class:`LIFConfig`; always
    returns ``(spikes, v_final)``. For tests and benchmarks. Backends: ``"triton"`` (the Triton kernels),
    ``"cpu"`` (the Numba kernels, CPU tensors), ``"naive"`` (the PyTorch reference, any device), ``"auto"``
    (Triton on CUDA, Numba on the CPU, the reference elsewhere)."""
    td = _check_inputs(x, tau, v_threshold, v_reset, surrogate, alpha, time_dim, v0)
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    if backend == "auto":
        backend = "triton" if x.is_cuda else "cpu" if x.device.type == "cpu" else "naive"
    if backend == "cpu" and x.device.type != "cpu":
        raise ValueError(f"backend='cpu' runs on CPU tensors, got x on {x.device}")
    tau, v_threshold, alpha = float(tau), float(v_threshold), float(alpha)
    v_reset = None if v_reset is None else float(v_reset)
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or (v0 is not None and v0.requires_grad))
    if backend == "naive" or x.numel() == 0:
        if not needs_grad:  # the same operations without autograd
            spikes, v_final = lif_multistep_forward(
                x.movedim(td, 0), tau, v_threshold, v_reset, bool(decay_input), v0
            )
            return spikes.movedim(0, td), v_final
        spikes, v_final = lif_multistep_naive(
            x.movedim(td, 0),
            tau=tau,
            v_threshold=v_threshold,
            v_reset=v_reset,
            decay_input=bool(decay_input),
            surrogate=surrogate,
            alpha=alpha,
            detach_reset=bool(detach_reset),
            v0=v0,
        )
        return spikes.movedim(0, td), v_final
    return _lif_kernels(
        backend, x, v0, td, tau, v_threshold, v_reset, bool(decay_input), surrogate, alpha, bool(detach_reset), config,
        needs_grad,
    )  # fmt: skip


def lif_multistep(
    x: torch.Tensor,
    tau: float = 2.0,
    v_threshold: float = 1.0,
    v_reset: float | None = 0.0,
    decay_input: bool = True,
    surrogate: str = "sigmoid",
    alpha: float = 4.0,
    detach_reset: bool = False,
    time_dim: int = 0,
    v0: torch.Tensor | None = None,
    return_membrane: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Multi-step leaky integrate-and-fire neurons with a surrogate gradient (SpikingJelly's multi-step LIF).

    For every neuron, walking the time axis (float32 state, ``r = v_reset``, or 0 when ``v_reset is None``)::

        h_t = v_{t-1} + (x_t - (v_{t-1} - r)) / tau      decay_input=True
        h_t = v_{t-1} - (v_{t-1} - r) / tau + x_t        decay_input=False
        s_t = H(h_t - v_threshold)                       (1 if h_t >= v_threshold)
        v_t = h_t·(1 - s_t) + v_reset·s_t                hard reset
        v_t = h_t - s_t·v_threshold                      soft reset (v_reset=None)

    The backward pass is the exact gradient of this graph with ``H'(u)`` replaced by the surrogate ``g'(u)``,
    ``u = h - v_threshold``:

    - ``"sigmoid"``: ``α·σ(αu)·(1 − σ(αu))`` (SpikingJelly's default surrogate, α = 4);
    - ``"atan"``: ``(α/2) / (1 + (π/2·α·u)²)`` (SpikingJelly uses α = 2: pass ``alpha=2.0``);
    - ``"fast_sigmoid"`` (alias ``"superspike"``): ``1 / (1 + α·|u|)²`` (Zenke & Ganguli's SuperSpike);
    - ``"piecewise_quadratic"``: ``max(0, α − α²·|u|)`` (SpikingJelly uses α = 1);
    - ``"erf"``: ``α/√π · exp(−α²u²)`` (SpikingJelly uses α = 2).

    ``detach_reset=True`` stops the gradient through the spike inside the reset (not through the spike output).

    Args:
        x: input current with a time axis at ``time_dim``: ``[T, N]``, ``[T, B, N]``, ``[B, T, D]`` (time_dim=1), ...;
            float32, bfloat16 or float16.
        tau: membrane time constant in steps, > 1.
        v_threshold: firing threshold.
        v_reset: reset potential (hard reset), or None for the soft reset (subtract the threshold).
        decay_input: whether the input is divided by tau too.
        surrogate: one of the names above.
        alpha: surrogate sharpness α.
        detach_reset: detach the spike inside the reset.
        time_dim: the time axis of ``x``.
        v0: initial membrane, the shape of ``x`` without its time axis (zeros when None); gradients flow into it.
        return_membrane: also return the membrane after the last step.

    Returns:
        spikes (the shape and dtype of ``x``, exactly 0 or 1), and with ``return_membrane=True`` also the final
        membrane (the shape of ``v0``, float32), differentiable.

    On CUDA tensors the Triton kernels run (time-parallel for long sequences, see the module docstring), on CPU
    tensors the Numba kernels (``cpu.py``), on other devices the PyTorch reference loop. Spikes are bit for bit
    those of the reference.
    """
    spikes, v_final = lif_multistep_impl(
        x, tau, v_threshold, v_reset, decay_input, surrogate, alpha, detach_reset, time_dim, v0
    )
    return (spikes, v_final) if return_membrane else spikes
