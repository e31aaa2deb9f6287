"""The LIF forward and backward on the CPU, in Numba: the launchers behind ``torch.ops.t4dm.lif_fwd_cpu`` /
``lif_bwd_cpu``, which :func:`t4dm.kernels.lif.lif_multistep` runs on CPU tensors.

The same layout and the same plan as the Triton kernels (``fused.py``), without the time parallelism: a CPU has
a handful of cores, and the neuron blocks alone keep them busy. ``x`` is viewed as ``[P, T, Q]``; a *block* is
``BLOCK`` neighbouring ``q`` of one ``p``; one call walks the time axis for a range of blocks, the innermost loop
running over the block's neurons (contiguous in memory, so LLVM vectorises it). Blocks are shared among
``torch.get_num_threads()`` threads (the kernels release the GIL); small inputs run on the calling thread.

Forward: the reference's float32 operations in the reference's order (no fused multiply-add: Numba leaves
``fastmath`` off, so LLVM contracts nothing and divides truly), hence spikes and membranes bit for bit those of
``naive.py``. When a gradient is needed it also keeps the membrane before every ``SUB``-th step
(``[P, ⌈T/SUB⌉, Q]``, float32).

Backward: for each sub-chunk, from the last, the forward is replayed from its checkpoint into a ``SUB × BLOCK``
scratch of ``h`` (it stays in L1/L2), then walked backwards with the carried ``dL/dv``: the input is read once
more, the gradient of the spikes read once, the input's gradient written once — the bytes floor.

16-bit inputs are converted to float32 by PyTorch before the call, and the spikes come back in the input's dtype
(written as the bit patterns of 0 and 1), so the kernels see float32 only.
"""

from __future__ import annotations

import itertools
import math
import os
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
import torch

__all__ = ["lif_bwd_cpu", "lif_fwd_cpu"]

#: Below this many neuron-steps (P·T·Q) a call runs on the calling thread: a pool's hand-off costs more.
_MIN_PARALLEL = 1 << 16

#: The bit patterns of 1.0 in the 16-bit float types (0.0 is all zeros in every float type).
_ONE_BITS = {torch.bfloat16: 0x3F80, torch.float16: 0x3C00}

#: Tests set this to fill every buffer the launchers allocate with NaN, so an element a kernel never writes shows.
NAN_FILL_OUTPUTS = False

_POOL: ThreadPoolExecutor | None = None
_POOL_PID = 0  # the process that made the pool: a forked child (a DataLoader worker) makes its own


@numba.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _step_row(vb, xr, hr, tau, v_th, v_reset, decay_input, k_hard):
    """One time step for a block's neurons: ``h`` into ``hr``, the membrane ``vb`` advanced in place — the
    reference's float32 operations in its order. Both resets are one expression (``k_hard`` 1 or 0):
    ``(h·(1 − k·s) + (r·k)·s) − (v_th·(1 − k))·s`` is ``h·(1 − s) + r·s`` for k = 1 and ``h − v_th·s`` for k = 0,
    rounded alike (multiplying by 1 or 0 and adding or subtracting 0 are exact)."""
    f_one = np.float32(1.0)
    f_zero = np.float32(0.0)
    r_k = v_reset * k_hard
    th_k = v_th * (f_one - k_hard)
    n = vb.shape[0]
    if decay_input:
        for j in range(n):
            vj = vb[j]
            h = vj + (xr[j] - (vj - v_reset)) / tau
            s = f_one if h >= v_th else f_zero
            hr[j] = h
            vb[j] = (h * (f_one - k_hard * s) + r_k * s) - th_k * s
    else:
        for j in range(n):
            vj = vb[j]
            h = vj - (vj - v_reset) / tau + xr[j]
            s = f_one if h >= v_th else f_zero
            hr[j] = h
            vb[j] = (h * (f_one - k_hard * s) + r_k * s) - th_k * s


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _fwd_blocks(x, v0, spikes, ckpt, v_final, one, tau, v_th, v_reset, has_v0, save_ckpt, decay_input,
                soft_reset, sub, block, first, last):  # fmt: skip
    """Blocks ``first`` .. ``last - 1`` of the forward (see the module docstring)."""
    _, T, Q = x.shape
    n_qblocks = (Q + block - 1) // block
    zero = one - one
    k_hard = np.float32(0.0 if soft_reset else 1.0)
    v = np.zeros(block, dtype=np.float32)
    h = np.zeros(block, dtype=np.float32)
    for i in range(first, last):
        p = i // n_qblocks
        q0 = (i % n_qblocks) * block
        n = min(block, Q - q0)
        vb = v[:n]  # one-dimensional slices: LLVM vectorises loops over them, not over 3-D indexing
        hb = h[:n]
        if has_v0:
            vb[:] = v0[p, q0 : q0 + n]
        else:
            vb[:] = 0.0
        for t in range(T):
            if save_ckpt and t % sub == 0:
                ckpt[p, t // sub, q0 : q0 + n] = vb
            _step_row(vb, x[p, t, q0 : q0 + n], hb, tau, v_th, v_reset, decay_input, k_hard)
            sr = spikes[p, t, q0 : q0 + n]
            for j in range(n):
                sr[j] = one if hb[j] >= v_th else zero
        v_final[p, q0 : q0 + n] = vb


@numba.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _exp_row(src, dst, bits):
    """``dst = exp(src)`` in float32, in loops LLVM vectorises (``math.exp`` is a scalar libm call per element
    here, Numba having no vector math library): Cephes' ``expf`` — ``exp(x) = 2ⁿ·exp(r)``, ``n = round(x/ln 2)``,
    ``r = x − n·ln 2`` in two parts, a degree-5 polynomial for ``exp(r)`` — with ``2ⁿ`` built from its exponent
    bits in ``bits`` (int32, viewed as float32). Within one ulp of the exact value (tested); inputs are
    clamped to [−87.3, 88] (no subnormal or infinite results: surrogates only need ``exp(−large) ≈ 0``)."""
    n = src.shape[0]
    for j in range(n):
        x = min(max(src[j], np.float32(-87.33654)), np.float32(88.0))
        fx = np.floor(x * np.float32(1.44269504088896341) + np.float32(0.5))
        r = x - fx * np.float32(0.693359375)
        r = r - fx * np.float32(-2.12194440e-4)
        y = np.float32(1.9875691500e-4) * r + np.float32(1.3981999507e-3)
        y = y * r + np.float32(8.3334519073e-3)
        y = y * r + np.float32(4.1665795894e-2)
        y = y * r + np.float32(1.6666665459e-1)
        y = y * r + np.float32(5.0000001201e-1)
        dst[j] = y * (r * r) + r + np.float32(1.0)
        bits[j] = (np.int32(fx) + np.int32(127)) << np.int32(23)
    scale = bits[:n].view(np.float32)
    for j in range(n):
        dst[j] = dst[j] * scale[j]


@numba.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _surrogate_row(hr, sgr, bits, v_th, alpha, surrogate):
    """``g'(u)`` at ``u = h - v_th`` for a row, in float32; ids as in ``naive.SURROGATES``; ``bits`` is int32
    scratch for :func:`_exp_row`."""
    f_one = np.float32(1.0)
    n = hr.shape[0]
    if surrogate == 0:  # sigmoid
        for j in range(n):
            sgr[j] = -alpha * (hr[j] - v_th)
        _exp_row(sgr, sgr, bits)
        for j in range(n):
            sig = f_one / (f_one + sgr[j])
            sgr[j] = alpha * sig * (f_one - sig)
    elif surrogate == 1:  # atan
        c = np.float32(math.pi / 2) * alpha
        a2 = np.float32(0.5) * alpha
        for j in range(n):
            z = c * (hr[j] - v_th)
            sgr[j] = a2 / (f_one + z * z)
    elif surrogate == 2:  # fast_sigmoid / superspike
        for j in range(n):
            z = f_one + alpha * abs(hr[j] - v_th)
            sgr[j] = f_one / (z * z)
    elif surrogate == 3:  # piecewise_quadratic
        a2 = alpha * alpha
        for j in range(n):
            sgr[j] = max(alpha - a2 * abs(hr[j] - v_th), np.float32(0.0))
    else:  # erf
        c = np.float32(1.0 / math.sqrt(math.pi)) * alpha
        for j in range(n):
            z = alpha * (hr[j] - v_th)
            sgr[j] = -z * z
        _exp_row(sgr, sgr, bits)
        for j in range(n):
            sgr[j] = c * sgr[j]


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _bwd_blocks(x, ckpt, grad_spikes, grad_v_final, grad_x, grad_v0, tau, v_th, v_reset, alpha, has_grad_v,
                decay_input, soft_reset, detach_reset, surrogate, sub, block, first, last):  # fmt: skip
    """Blocks ``first`` .. ``last - 1`` of the backward (see the module docstring)."""
    _, T, Q = x.shape
    n_qblocks = (Q + block - 1) // block
    n_sub = (T + sub - 1) // sub
    f_one = np.float32(1.0)
    f_zero = np.float32(0.0)
    # dv_t/dh_t = (1 - k_s·s) + (a - k_h·h)·g'(u), written once for the four reset modes (multiplying by 1 or 0
    # and adding 0 are exact, so each mode rounds as its own formula would):
    # hard (1 - s) + (r - h)·g' | hard, detached 1 - s | soft 1 - v_th·g' | soft, detached 1
    k_s = f_zero if soft_reset else f_one
    k_h = f_zero if soft_reset or detach_reset else f_one
    a = f_zero if detach_reset else (-v_th if soft_reset else v_reset)
    k_hard = k_s
    dh_dx = f_one / tau if decay_input else f_one
    dh_dv = f_one - f_one / tau  # in both forms
    v = np.zeros(block, dtype=np.float32)
    carry = np.zeros(block, dtype=np.float32)
    sg = np.zeros(block, dtype=np.float32)
    bits = np.zeros(block, dtype=np.int32)
    hs = np.zeros((sub, block), dtype=np.float32)
    for i in range(first, last):
        p = i // n_qblocks
        q0 = (i % n_qblocks) * block
        n = min(block, Q - q0)
        cb = carry[:n]
        vb = v[:n]
        sgb = sg[:n]
        if has_grad_v:
            cb[:] = grad_v_final[p, q0 : q0 + n]
        else:
            cb[:] = 0.0
        for c in range(n_sub - 1, -1, -1):
            t0 = c * sub
            t1 = min(t0 + sub, T)
            vb[:] = ckpt[p, c, q0 : q0 + n]
            for t in range(t0, t1):  # replay the forward from the checkpoint, keeping h
                _step_row(vb, x[p, t, q0 : q0 + n], hs[t - t0, :n], tau, v_th, v_reset, decay_input, k_hard)
            for t in range(t1 - 1, t0 - 1, -1):  # and walk it backwards
                hr = hs[t - t0, :n]
                _surrogate_row(hr, sgb, bits, v_th, alpha, surrogate)
                gr = grad_spikes[p, t, q0 : q0 + n]
                gxr = grad_x[p, t, q0 : q0 + n]
                for j in range(n):
                    h = hr[j]
                    s = f_one if h >= v_th else f_zero
                    dv_dh = (f_one - k_s * s) + (a - k_h * h) * sgb[j]
                    gh = gr[j] * sgb[j] + cb[j] * dv_dh  # dL/dh_t
                    gxr[j] = gh * dh_dx
                    cb[j] = gh * dh_dv  # dL/dv_{t-1}
        grad_v0[p, q0 : q0 + n] = cb


def _run(kernel, n_blocks: int, work: int, *args) -> None:
    """``kernel(*args, first, last)`` over ``n_blocks`` blocks, split among PyTorch's thread count."""
    global _POOL, _POOL_PID
    n_threads = min(torch.get_num_threads(), n_blocks)
    if n_threads <= 1 or work < _MIN_PARALLEL:
        kernel(*args, 0, n_blocks)
        return
    if _POOL is None or os.getpid() != _POOL_PID or _POOL._max_workers < n_threads - 1:
        _POOL = ThreadPoolExecutor(max_workers=n_threads - 1, thread_name_prefix="t4dm-lif")
        _POOL_PID = os.getpid()
    bounds = [n_blocks * k // n_threads for k in range(n_threads + 1)]
    futures = [_POOL.submit(kernel, *args, lo, hi) for lo, hi in itertools.pairwise(bounds[1:])]
    kernel(*args, bounds[0], bounds[1])
    for future in futures:
        future.result()


def _empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    if NAN_FILL_OUTPUTS:
        return torch.full(shape, float("nan"), dtype=dtype)
    return torch.empty(shape, dtype=dtype)


def _n_blocks(P: int, Q: int, block: int) -> int:
    return P * ((Q + block - 1) // block)


def lif_fwd_cpu(
    x: torch.Tensor,
    v0: torch.Tensor | None,
    *,
    tau: float,
    v_threshold: float,
    v_reset: float | None,
    decay_input: bool,
    save_checkpoints: bool,
    block: int,
    sub: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Forward on ``x`` ``[P, T, Q]`` (contiguous, CPU) and ``v0`` ``[P, Q]`` float32 (or None).

    Returns ``(spikes [P, T, Q] in x.dtype, v_final [P, Q] float32, checkpoints [P, ⌈T/sub⌉, Q] or None)``.
    """
    P, T, Q = x.shape
    xf = x.float().contiguous()
    spikes = _empty((P, T, Q), x.dtype)
    if x.dtype == torch.float32:
        spikes_np, one = spikes.numpy(), np.float32(1.0)
    else:
        spikes_np, one = spikes.view(torch.int16).numpy(), np.int16(_ONE_BITS[x.dtype])
    v_final = _empty((P, Q), torch.float32)
    n_sub = (T + sub - 1) // sub
    ckpt = _empty((P, n_sub if save_checkpoints else 0, Q), torch.float32)
    v0_np = v0.numpy() if v0 is not None else v_final.numpy()
    _run(
        _fwd_blocks, _n_blocks(P, Q, block), P * T * Q,
        xf.numpy(), v0_np, spikes_np, ckpt.numpy(), v_final.numpy(), one, np.float32(tau),
        np.float32(v_threshold), np.float32(0.0 if v_reset is None else v_reset), v0 is not None,
        save_checkpoints, bool(decay_input), v_reset is None, sub, block,
    )  # fmt: skip
    return spikes, v_final, ckpt if save_checkpoints else None


def lif_bwd_cpu(
    x: torch.Tensor,
    ckpt: torch.Tensor,
    grad_spikes: torch.Tensor,
    grad_v_final: torch.Tensor | None,
    *,
    tau: float,
    v_threshold: float,
    v_reset: float | None,
    decay_input: bool,
    surrogate: int,
    alpha: float,
    detach_reset: bool,
    block: int,
    sub: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Backward: ``(grad_x [P, T, Q] in x.dtype, grad_v0 [P, Q] float32)``; ``surrogate`` is the id in
    ``naive.SURROGATES``."""
    P, T, Q = x.shape
    grad_x = _empty((P, T, Q), torch.float32)
    grad_v0 = _empty((P, Q), torch.float32)
    gvf = grad_v_final.float().contiguous() if grad_v_final is not None else grad_v0
    _run(
        _bwd_blocks, _n_blocks(P, Q, block), P * T * Q,
        x.float().contiguous().numpy(), ckpt.numpy(), grad_spikes.float().contiguous().numpy(), gvf.numpy(),
        grad_x.numpy(), grad_v0.numpy(), np.float32(tau), np.float32(v_threshold),
        np.float32(0.0 if v_reset is None else v_reset), np.float32(alpha), grad_v_final is not None,
        bool(decay_input), v_reset is None, bool(detach_reset), int(surrogate), sub, block,
    )  # fmt: skip
    return grad_x.to(x.dtype), grad_v0
