"""Compile Triton kernels to Hopper machine code without a GPU (ptxas ships with triton).

The interpreter (``TRITON_INTERPRET=1``) lets through what the real compiler rejects (dot shapes under 16,
layouts, dtype mixes), so each kernel module's tests also compile its kernels for sm_90 in a fresh process
without ``TRITON_INTERPRET``. ``python -m tests.kernels.sm90 MODULE`` compiles the cases that ``MODULE``'s
``sm90_cases()`` (in this file) lists and prints ``compiled NAME`` for each.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# kernel, argument types, constexpr values (and optionally compile options beside num_warps = 4, num_stages = 2)
Case = tuple[Any, dict[str, str], dict[str, Any]] | tuple[Any, dict[str, str], dict[str, Any], dict[str, Any]]


def _jit_function(kernel: Any) -> Any:
    """The ``JITFunction`` under ``autotune`` / ``heuristics`` wrappers."""
    import triton

    while not isinstance(kernel, triton.runtime.jit.JITFunction):
        kernel = kernel.fn
    return kernel


def compile_cases(cases: list[Case]) -> None:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    for kernel, signature, constexprs, *extra in cases:
        start = time.perf_counter()
        fn = _jit_function(kernel)
        missing = set(fn.arg_names) - set(signature) - set(constexprs)
        assert not missing, f"{fn.__name__}: no type for {sorted(missing)}"
        src = ASTSource(
            fn=fn, signature={**signature, **dict.fromkeys(constexprs, "constexpr")}, constexprs=constexprs
        )
        compiled = triton.compile(
            src,
            target=GPUTarget("cuda", 90, 32),
            options=dict(num_warps=4, num_stages=2, **(extra[0] if extra else {})),
        )
        assert compiled.asm["cubin"], fn.__name__
        usage = resource_usage(compiled.asm["cubin"])
        shared = int(compiled.metadata.shared)
        # an H100 block gets at most 227 KiB of shared memory (opt-in); more fails at launch, not here
        assert shared <= H100_SHARED_BYTES, (
            f"{fn.__name__}: {shared} bytes of shared memory > {H100_SHARED_BYTES}"
        )
        print(
            "compiled", fn.__name__, f"{time.perf_counter() - start:.1f} s:", f"shared {shared} B,",
            f"{usage.get('REG', '?')} registers, local (spills) {usage.get('LOCAL', '?')} B",
            flush=True,
        )  # fmt: skip


H100_SHARED_BYTES = 227 * 1024


def resource_usage(cubin: bytes) -> dict[str, int]:
    """Registers, shared, local (register spills) and stack bytes of a cubin's kernel, as ``cuobjdump
    --dump-resource-usage`` (shipped with triton) reads them; empty when it cannot run."""
    import re
    import shutil
    import tempfile

    import triton

    shipped = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    tool = str(shipped) if shipped.exists() else shutil.which("cuobjdump")
    if tool is None:
        return {}
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        run = subprocess.run(
            [tool, "--dump-resource-usage", f.name], capture_output=True, text=True, timeout=60
        )
    return {key: int(value) for key, value in re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", run.stdout)}


def run_compile_check(module: str) -> subprocess.CompletedProcess[str]:
    """Compile ``module``'s cases in a fresh process without ``TRITON_INTERPRET``."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run(
        [sys.executable, "-m", "tests.kernels.sm90", module],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=Path(__file__).resolve().parents[2],
    )


# ------------------------------------------------------------------------------------------------------------
# the cases: the benchmark's shapes (K = D = V = 64, chunk 64), 16-bit and float32 inputs, every optional part on
# ------------------------------------------------------------------------------------------------------------


def _lif_cases() -> list[Case]:
    from t4dm.kernels.lif import fused

    f32 = "*fp32"
    sizes = dict(T="i32", Q="i32", n_sub="i32", n_qblocks="i32", n_neurons="i32")
    lif = dict(tau="fp32", v_th="fp32", v_reset="fp32")
    exact = dict(enable_fp_fusion=False)  # as the kernels are launched: no fused multiply-adds
    return [
        (fused._lif_fwd_kernel,
         dict(x="*bf16", v0=f32, spikes="*bf16", ckpt=f32, v_start=f32, v_end=f32, **sizes, **lif),
         dict(HAS_V0=True, SAVE_CKPT=True, DECAY_INPUT=True, SOFT_RESET=False, CHUNK=64, SUB=8, WARMUP=3,
              BLOCK=512), exact),
        (fused._lif_fwd_fixup_kernel,
         dict(x=f32, spikes=f32, ckpt=f32, v_start=f32, v_end=f32, v_final=f32, **sizes, n_chunks="i32", **lif),
         dict(SAVE_CKPT=True, DECAY_INPUT=False, SOFT_RESET=True, CHUNK=64, SUB=8, BLOCK=512), exact),
        (fused._lif_bwd_kernel,
         dict(x=f32, ckpt=f32, grad_spikes=f32, carry_end=f32, grad_x=f32, carry_start=f32, phi=f32, **sizes, **lif,
              alpha="fp32", decay="fp32"),
         dict(HAS_CARRY_IN=True, WRITE_GRAD_X=True, DECAY_INPUT=True, SOFT_RESET=False, DETACH_RESET=False,
              SURROGATE=0, CHUNK=64, SUB=8, BLOCK=512), exact),
        (fused._lif_bwd_carry_kernel,
         dict(carry_local=f32, phi=f32, grad_v_final=f32, carry_end=f32, n_neurons="i32", n_chunks="i32"),
         dict(HAS_GRAD_V=True, BLOCK=1024), exact),
    ]  # fmt: skip


def _rwkv_cases() -> list[Case]:
    import torch

    from t4dm.kernels.rwkv import chunk, fused_recurrent

    cases: list[Case] = []
    BT = chunk.DEFAULT_CHUNK_SIZE
    i32 = "*i32"
    # bf16 and float32 for one batch of rows, and bf16 for packed sequences (cu_seqlens)
    for dt, dtype, varlen in (("bf16", torch.bfloat16, False), ("fp32", torch.float32, False),
                              ("bf16", torch.bfloat16, True)):  # fmt: skip
        precision = chunk._dot_precision(dtype)
        p, f32 = f"*{dt}", "*fp32"
        shape = dict(H=16, K=64)
        flags = dict(IS_VARLEN=varlen)
        cases += [
            (
                chunk._rwkv6_fwd_intra_kernel,
                dict(r=p, k=p, w=p, u=p, A=p, cu_seqlens=i32, chunk_indices=i32, T="i32"),
                dict(**shape, BT=BT, BK=64, **flags),
            ),
            (
                chunk._rwkv6_fwd_kernel,
                dict(r=p, k=p, v=p, w=p, A=p, o=p, h0=f32, ht=f32, hc=f32, cu_seqlens=i32, chunk_offsets=i32,
                     scale="fp32", T="i32"),
                dict(**shape, V=64, BT=BT, BK=64, BV=64, DOT_PRECISION=precision, USE_INITIAL_STATE=True,
                     STORE_FINAL_STATE=True, STORE_CHUNK_STATES=True, **flags),
            ),
            (
                chunk._rwkv6_bwd_intra_kernel,
                dict(r=p, k=p, v=p, w=p, u=p, do=p, dr=f32, dk=f32, dd=f32, cu_seqlens=i32, chunk_indices=i32,
                     scale="fp32", T="i32"),
                dict(**shape, V=64, BT=BT, BK=64, BV=64, DOT_PRECISION=precision, **flags),
            ),
            (
                chunk._rwkv6_bwd_kernel,
                dict(r=p, k=p, v=p, w=p, A=p, hc=f32, do=p, dht=f32, dr=f32, dk=f32, dv=p, dh0=f32,
                     cu_seqlens=i32, chunk_offsets=i32, scale="fp32", T="i32", total="i32"),
                dict(**shape, V=64, BT=BT, BK=64, BV=64, DOT_PRECISION=precision, USE_FINAL_STATE_GRADIENT=True,
                     STORE_INITIAL_STATE_GRADIENT=True, **flags),
            ),
            (
                chunk._rwkv6_bwd_dw_kernel,
                dict(r=p, k=p, u=p, dr_intra=f32, dk_intra=f32, dd=f32, dr_inter=f32, dk_inter=f32, c=f32,
                     dr=p, dk=p, dw=p, du_part=f32, cu_seqlens=i32, chunk_offsets=i32, T="i32",
                     total="i32"),
                dict(**shape, NV=1, BT=BT, BK=64, USE_FINAL_STATE_GRADIENT=True, **flags),
            ),
        ]  # fmt: skip
        cases.append(
            (
                fused_recurrent._rwkv6_fused_recurrent_fwd_kernel,
                dict(r=p, k=p, v=p, w=p, u=p, o=p, h0=f32, ht=f32, cu_seqlens=i32, scale="fp32", T="i32"),
                dict(**shape, V=64, BK=64, BV=32, USE_INITIAL_STATE=True, STORE_FINAL_STATE=True, **flags),
            )
        )
    return cases


def _spike_attention_cases() -> list[Case]:
    import torch

    from t4dm.kernels.spike_attention import chunk, fused_recurrent

    cases: list[Case] = []
    BT, i32 = chunk.DEFAULT_CHUNK_SIZE, "*i32"
    for dt, dtype, varlen in (("bf16", torch.bfloat16, False), ("fp32", torch.float32, False),
                              ("bf16", torch.bfloat16, True)):  # fmt: skip
        precision = chunk._dot_precision(dtype)
        p, f32 = f"*{dt}", "*fp32"
        shape = dict(H=16, D=64, V=64)
        cases += [
            (
                chunk._spike_attention_fwd_kernel,
                dict(q=p, k=p, v=p, log_decay=f32, o=p, h0=f32, ht=f32, hc=f32, cu_seqlens=i32, chunk_offsets=i32,
                     scale="fp32", T="i32"),
                dict(**shape, BT=BT, BD=64, BV=64, DOT_PRECISION=precision, USE_INITIAL_STATE=True,
                     STORE_FINAL_STATE=True, STORE_CHUNK_STATES=True, IS_VARLEN=varlen),
            ),
            (
                chunk._spike_attention_bwd_kernel,
                dict(q=p, k=p, v=p, log_decay=f32, hc=f32, do=p, dht=f32, dq=f32, dk=f32, dv=p, dh0=f32,
                     dld=f32, cu_seqlens=i32, chunk_offsets=i32, scale="fp32", T="i32", total="i32"),
                dict(**shape, BT=BT, BD=64, BV=64, DOT_PRECISION=precision, USE_FINAL_STATE_GRADIENT=True,
                     STORE_INITIAL_STATE_GRADIENT=True, IS_VARLEN=varlen),
            ),
        ]  # fmt: skip
        cases.append(
            (
                fused_recurrent._spike_attention_fused_recurrent_fwd_kernel,
                dict(
                    q=p, k=p, v=p, log_decay=f32, o=p, h0=f32, ht=f32, cu_seqlens=i32, scale="fp32", T="i32"
                ),
                dict(**shape, BD=64, BV=32, USE_INITIAL_STATE=True, STORE_FINAL_STATE=True, IS_VARLEN=varlen),
            )
        )
    return cases


CASES = {"lif": _lif_cases, "rwkv": _rwkv_cases, "spike_attention": _spike_attention_cases}

if __name__ == "__main__":
    compile_cases(CASES[sys.argv[1]]())
