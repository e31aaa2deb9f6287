"""Benchmark of the spike-attention and RWKV-6 kernels beside their peers, in one process.

On CUDA (the figures the issue asks for), bfloat16, B=8, T=2048, H=16, K=D=V=64:

- RWKV-6, forward and forward+backward: ``t4dm.kernels.rwkv6`` vs flash-linear-attention ``chunk_rwkv6``;
  the decoding step: ``rwkv6_step`` vs fla ``fused_recurrent_rwkv6`` on one token with a state.
- Spike attention, forward and forward+backward: ``spike_attention`` vs
  ``torch.nn.functional.scaled_dot_product_attention(is_causal=True)`` (flash) and fla
  ``chunk_retention`` (the closest decayed linear attention), then the T-scaling curve
  (T = 2048, 8192, 32768) of ours vs SDPA.

fla is optional (``pip install fla-core``); without it those rows are skipped with a message. fla's
kernels autotune over many configurations on first use (100+ s); by default each fla autotuner keeps
``fla_max_configs`` of its configurations, spread over the list (0 keeps all), and every function is
warmed once before it is timed. Times are medians of ``triton.testing.do_bench`` (L2 flushed between
runs). Every speed row carries the ratio ``peer time / our time`` (> 1: ours is faster).

On CPU it runs a small benchmark of the PyTorch paths (ours chunked vs the naive references and CPU SDPA),
which says nothing about GPU speed.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from .timing import wall_times

__all__ = ["run_attention_bench"]


@dataclass
class Row:
    """One timed function: ``ms`` is the median time in milliseconds (None when it could not run)."""

    suite: str  # "rwkv6", "rwkv6-step", "spike", "spike-step", "scaling", "sweep"
    mode: str  # "fwd", "fwd+bwd" or "step"
    impl: str
    T: int
    ms: float | None
    tflops: float | None = None  # from the operation count in _flops (None where not meaningful)
    gbps: float | None = None  # bytes moved / time (decoding steps)
    first_call_s: float | None = None  # the first call: compilation and autotuning
    note: str = ""


@dataclass
class Report:
    device: str
    versions: dict[str, str | None]
    shape: dict[str, Any]
    rows: list[Row] = field(default_factory=list)
    ratios: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _print_row(row: Row) -> None:
    ms = f"{row.ms:10.3f}" if row.ms is not None else "         -"
    tf = f"{row.tflops:7.1f}" if row.tflops is not None else "      -"
    gb = f"{row.gbps:7.0f}" if row.gbps is not None else "      -"
    first = f"{row.first_call_s:7.1f}" if row.first_call_s is not None else "      -"
    print(
        f"{row.suite:11s} {row.mode:8s} T={row.T:<6d} {row.impl:34s} {ms} ms {tf} TF/s {gb} GB/s {first} s  {row.note}"
    )
    sys.stdout.flush()


def _linear_flops(B: int, T: int, H: int, K: int, V: int, chunk: int) -> float:
    """Chunked linear attention, forward: per token and head, scores and their product with v inside
    the chunk (2*C*K + 2*C*V) and the state read and update (2*K*V twice)."""
    return B * T * H * (2.0 * chunk * (K + V) + 4.0 * K * V)


def _sdpa_flops(B: int, T: int, H: int, K: int, V: int) -> float:
    """Causal softmax attention, forward: QK^T and PV over the lower triangle."""
    return B * H * T * T * (K + V)  # 2 * (T^2 / 2) * (K + V)


def _ratio(report: Report, suite: str, mode: str, T: int, peer: str, ours: str = "t4dm") -> None:
    rows = {r.impl: r for r in report.rows if r.suite == suite and r.mode == mode and r.T == T}
    if ours in rows and peer in rows and rows[ours].ms and rows[peer].ms:
        ratio = rows[peer].ms / rows[ours].ms
        report.ratios.append({"suite": suite, "mode": mode, "T": T, "peer": peer, "peer_over_ours": ratio})
        print(f"{'':11s} {mode:8s} T={T:<6d} ratio {peer} / t4dm = {ratio:.2f}x")


# ----------------------------------------------------------------------------------------------------
# CUDA


def _cuda_timer(fn: Callable[[], Any], grad_to_none: list | None = None) -> tuple[float, float]:
    """(median ms, seconds of the first call)."""
    import torch
    import triton

    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    first = time.perf_counter() - start
    ms = triton.testing.do_bench(fn, warmup=25, rep=100, grad_to_none=grad_to_none, return_mode="median")
    return float(ms), first


def _restrict_fla_autotune(max_configs: int) -> int:
    """Keep ``max_configs`` configurations, spread over the list, in every fla autotuner. Returns how
    many autotuners were restricted."""
    from triton.runtime.autotuner import Autotuner

    restricted = 0
    for name, module in list(sys.modules.items()):
        if not name.startswith("fla.") or module is None:
            continue
        for value in list(vars(module).values()):
            seen = 0
            while value is not None and seen < 4:
                if isinstance(value, Autotuner):
                    if len(value.configs) > max_configs:
                        step = len(value.configs) / max_configs
                        value.configs = [value.configs[int(i * step)] for i in range(max_configs)]
                        restricted += 1
                    break
                value, seen = getattr(value, "fn", None), seen + 1
    return restricted


def _import_fla(report: Report, max_configs: int) -> dict[str, Callable] | None:
    try:
        import fla  # noqa: F401
        from fla.ops.retention import chunk_retention
        from fla.ops.rwkv6 import chunk_rwkv6, fused_recurrent_rwkv6
    except Exception as exc:  # ImportError, or an fla that does not load against this torch/triton
        message = f"flash-linear-attention not available ({type(exc).__name__}: {exc}); fla rows skipped"
        print(message)
        report.skipped.append(message)
        return None
    report.versions["fla"] = getattr(sys.modules["fla"], "__version__", "?")
    if max_configs > 0:
        count = _restrict_fla_autotune(max_configs)
        print(f"fla: {count} autotuners restricted to {max_configs} configurations each (fla_max_configs)")
        report.shape["fla_max_configs"] = max_configs
    return {
        "chunk_rwkv6": chunk_rwkv6,
        "fused_recurrent_rwkv6": fused_recurrent_rwkv6,
        "chunk_retention": chunk_retention,
    }


def _cuda_bench(report: Report, fla_max_configs: int, scaling_T: tuple[int, ...], sweep: bool) -> None:
    import torch
    import torch.nn.functional as F

    from t4dm.kernels.rwkv import chunk as rwkv_chunk
    from t4dm.kernels.rwkv import rwkv6, rwkv6_step
    from t4dm.kernels.spike_attention import chunk as spike_chunk
    from t4dm.kernels.spike_attention import spike_attention, spike_attention_step

    dev = torch.device("cuda")
    dtype = torch.bfloat16
    B, T, H, K = 8, 2048, 16, 64
    V = K
    report.shape.update({"B": B, "T": T, "H": H, "K": K, "V": V, "dtype": "bfloat16"})
    fla = _import_fla(report, fla_max_configs)
    gen = torch.Generator(device=dev).manual_seed(0)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, device=dev, generator=gen) * scale).to(dtype)

    def add(row: Row) -> None:
        report.rows.append(row)
        _print_row(row)

    def timed(suite, mode, impl, T_, fn, grads=None, flops=None, bytes_=None, note=""):
        try:
            ms, first = _cuda_timer(fn, grads)
        except Exception as exc:  # a peer that fails (e.g. out of memory) is reported, not fatal
            torch.cuda.empty_cache()
            add(Row(suite, mode, impl, T_, None, note=f"failed: {type(exc).__name__}: {str(exc)[:120]}"))
            return
        tflops = flops / ms / 1e9 if flops else None
        gbps = bytes_ / ms / 1e6 if bytes_ else None
        add(Row(suite, mode, impl, T_, ms, tflops, gbps, first, note))

    def fwd_bwd(forward: Callable[[], torch.Tensor], do: torch.Tensor) -> Callable[[], None]:
        def run() -> None:
            forward().backward(do)

        return run

    # ---------------- RWKV-6
    print(f"\n== RWKV-6, bf16, B={B} T={T} H={H} K=V={K}")
    r, k, v = randn(B, T, H, K), randn(B, T, H, K), randn(B, T, H, V)
    w = F.logsigmoid(torch.randn(B, T, H, K, device=dev, generator=gen)).to(dtype)
    u = randn(H, K)
    leaves = [x.requires_grad_() for x in (r, k, v, w, u)]
    do = randn(B, T, H, V)
    flops = _linear_flops(B, T, H, K, V, rwkv_chunk.DEFAULT_CHUNK_SIZE)
    ours = lambda: rwkv6(r, k, v, w, u, check_decay=False)[0]  # noqa: E731
    with torch.no_grad():
        timed("rwkv6", "fwd", "t4dm", T, ours, flops=flops)
        timed("rwkv6", "fwd", "t4dm (decay check on)", T, lambda: rwkv6(r, k, v, w, u)[0], flops=flops)
    timed("rwkv6", "fwd+bwd", "t4dm", T, fwd_bwd(ours, do), leaves, flops=3 * flops)
    if fla is not None:
        peer = lambda: fla["chunk_rwkv6"](r, k, v, w, u)[0]  # noqa: E731
        with torch.no_grad():
            timed("rwkv6", "fwd", "fla.chunk_rwkv6", T, peer, flops=flops)
        timed("rwkv6", "fwd+bwd", "fla.chunk_rwkv6", T, fwd_bwd(peer, do), leaves, flops=3 * flops)
        _ratio(report, "rwkv6", "fwd", T, "fla.chunk_rwkv6")
        _ratio(report, "rwkv6", "fwd+bwd", T, "fla.chunk_rwkv6")
    if sweep:
        for chunk_size in (16, 32, 64):
            for block_v in (32, 64):
                impl = f"t4dm[C={chunk_size},BV={block_v}]"
                fn = lambda c=chunk_size, bv=block_v: rwkv_chunk.chunk_rwkv6(  # noqa: E731
                    r, k, v, w, u, chunk_size=c, block_v=bv, check_inputs=False
                )[0]
                timed("sweep-rwkv6", "fwd+bwd", impl, T, fwd_bwd(fn, do), leaves, flops=3 * flops)
    for x in leaves:
        x.grad = None

    # decoding step: one token, state [B, H, K, V] float32 read and written
    print(f"\n== RWKV-6 decoding step, bf16 inputs, float32 state [B={B}, H={H}, K={K}, V={V}]")
    with torch.no_grad():
        r1, k1, v1, w1 = r[:, 0].detach(), k[:, 0].detach(), v[:, 0].detach(), w[:, 0].detach()
        u1 = u.detach()
        state = torch.randn(B, H, K, V, device=dev, generator=gen)
        state_bytes = 2 * state.numel() * 4
        timed("rwkv6-step", "step", "t4dm", 1,
              lambda: rwkv6_step(r1, k1, v1, w1, u1, state, check_decay=False), bytes_=state_bytes)  # fmt: skip
        timed("rwkv6-step", "step", "t4dm (decay check on)", 1,
              lambda: rwkv6_step(r1, k1, v1, w1, u1, state), bytes_=state_bytes)  # fmt: skip
        if fla is not None:
            rr, kk, vv, ww = (x[:, None] for x in (r1, k1, v1, w1))
            timed("rwkv6-step", "step", "fla.fused_recurrent_rwkv6", 1,
                  lambda: fla["fused_recurrent_rwkv6"](rr, kk, vv, ww, u1, initial_state=state, output_final_state=True),
                  bytes_=state_bytes)  # fmt: skip
            _ratio(report, "rwkv6-step", "step", 1, "fla.fused_recurrent_rwkv6")

    # ---------------- spike attention
    def spike_inputs(T_: int):
        q = (torch.rand(B, T_, H, K, device=dev, generator=gen) < 0.25).to(dtype)
        kk = (torch.rand(B, T_, H, K, device=dev, generator=gen) < 0.25).to(dtype)
        vv = randn(B, T_, H, V)
        ld = -torch.logspace(-3, -0.5, H, device=dev)
        return q, kk, vv, ld, randn(B, T_, H, V)

    def spike_rows(suite: str, T_: int, peers: bool) -> None:
        q, kk, vv, ld, do_ = spike_inputs(T_)
        leaves_ = [x.requires_grad_() for x in (q, kk, vv, ld)]
        lin = _linear_flops(B, T_, H, K, V, spike_chunk.DEFAULT_CHUNK_SIZE)
        ours_ = lambda: spike_attention(q, kk, vv, ld, check_decay=False)  # noqa: E731
        with torch.no_grad():
            timed(suite, "fwd", "t4dm", T_, ours_, flops=lin)
        timed(suite, "fwd+bwd", "t4dm", T_, fwd_bwd(ours_, do_), leaves_, flops=3 * lin)
        # SDPA takes [B, H, T, D]: the transposes are made once, outside the timing
        qs, ks, vs = (x.detach().transpose(1, 2).contiguous().requires_grad_() for x in (q, kk, vv))
        dos = do_.transpose(1, 2).contiguous()
        sd = _sdpa_flops(B, T_, H, K, V)

        def sdpa() -> torch.Tensor:
            from torch.nn.attention import SDPBackend, sdpa_kernel

            with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
                return F.scaled_dot_product_attention(qs, ks, vs, is_causal=True)

        with torch.no_grad():
            timed(suite, "fwd", "sdpa(flash, causal)", T_, sdpa, flops=sd)
        timed(suite, "fwd+bwd", "sdpa(flash, causal)", T_, fwd_bwd(sdpa, dos), [qs, ks, vs], flops=3.5 * sd)
        _ratio(report, suite, "fwd", T_, "sdpa(flash, causal)")
        _ratio(report, suite, "fwd+bwd", T_, "sdpa(flash, causal)")
        if peers and fla is not None:
            peer = lambda: fla["chunk_retention"](q, kk, vv)[0]  # noqa: E731
            with torch.no_grad():
                timed(suite, "fwd", "fla.chunk_retention", T_, peer, flops=lin)
            timed(suite, "fwd+bwd", "fla.chunk_retention", T_, fwd_bwd(peer, do_), leaves_[:3], flops=3 * lin)
            _ratio(report, suite, "fwd", T_, "fla.chunk_retention")
            _ratio(report, suite, "fwd+bwd", T_, "fla.chunk_retention")
        if sweep and suite == "spike":
            for chunk_size in (32, 64, 128):
                for block_v in (32, 64):
                    impl = f"t4dm[C={chunk_size},BV={block_v}]"
                    fn = lambda c=chunk_size, bv=block_v: spike_chunk.chunk_spike_attention(  # noqa: E731
                        q, kk, vv, ld, chunk_size=c, block_v=bv, check_inputs=False
                    )[0]
                    timed("sweep-spike", "fwd+bwd", impl, T_, fwd_bwd(fn, do_), leaves_, flops=3 * lin)
        torch.cuda.empty_cache()

    print(f"\n== spike attention, bf16, B={B} T={T} H={H} D=V={K} (q, k binary spikes)")
    spike_rows("spike", T, peers=True)

    print(f"\n== spike attention decoding step, state [B={B}, H={H}, D={K}, V={V}] float32")
    with torch.no_grad():
        q1 = (torch.rand(B, H, K, device=dev, generator=gen) < 0.25).to(dtype)
        k1 = (torch.rand(B, H, K, device=dev, generator=gen) < 0.25).to(dtype)
        v1 = randn(B, H, V)
        ld = -torch.logspace(-3, -0.5, H, device=dev)
        state = torch.randn(B, H, K, V, device=dev, generator=gen)
        timed("spike-step", "step", "t4dm", 1,
              lambda: spike_attention_step(q1, k1, v1, ld, state, check_decay=False), bytes_=2 * state.numel() * 4)  # fmt: skip

    print(f"\n== T scaling, spike attention vs SDPA, bf16, B={B} H={H} D={K}")
    for T_ in scaling_T:
        spike_rows("scaling", T_, peers=False)


# ----------------------------------------------------------------------------------------------------
# CPU


def _cpu_timer(fn: Callable[[], Any], repeat: int = 3) -> tuple[float, float]:
    first, times = wall_times(fn, repeat)
    return 1e3 * statistics.median(times), first


def _cpu_bench(report: Report) -> None:
    import torch
    import torch.nn.functional as F

    from t4dm.kernels.rwkv import rwkv6
    from t4dm.kernels.rwkv.naive import naive_recurrent_rwkv6
    from t4dm.kernels.spike_attention import spike_attention
    from t4dm.kernels.spike_attention.naive import naive_spike_attention

    torch.manual_seed(0)
    B, T, H, K = 1, 256, 2, 32
    V = K
    report.shape.update({"B": B, "T": T, "H": H, "K": K, "V": V, "dtype": "float32"})
    print(f"CPU reference benchmark (PyTorch paths, float32, B={B} T={T} H={H} K=V={K}); no GPU figures")

    def timed(suite, mode, impl, fn):
        ms, first = _cpu_timer(fn)
        row = Row(suite, mode, impl, T, ms, first_call_s=first)
        report.rows.append(row)
        _print_row(row)

    r, k, v = torch.randn(B, T, H, K), torch.randn(B, T, H, K), torch.randn(B, T, H, V)
    w, u = F.logsigmoid(torch.randn(B, T, H, K)), torch.randn(H, K)
    for x in (r, k, v, w, u):
        x.requires_grad_()
    do = torch.randn(B, T, H, V)
    with torch.no_grad():
        timed("rwkv6", "fwd", "t4dm (PyTorch chunked)", lambda: rwkv6(r, k, v, w, u))
        timed("rwkv6", "fwd", "naive recurrence", lambda: naive_recurrent_rwkv6(r, k, v, w, u))
    timed("rwkv6", "fwd+bwd", "t4dm (PyTorch chunked)", lambda: rwkv6(r, k, v, w, u)[0].backward(do))
    timed(
        "rwkv6", "fwd+bwd", "naive recurrence", lambda: naive_recurrent_rwkv6(r, k, v, w, u)[0].backward(do)
    )
    _ratio(report, "rwkv6", "fwd", T, "naive recurrence", "t4dm (PyTorch chunked)")
    _ratio(report, "rwkv6", "fwd+bwd", T, "naive recurrence", "t4dm (PyTorch chunked)")

    q = (torch.rand(B, T, H, K) < 0.25).float().requires_grad_()
    kk = (torch.rand(B, T, H, K) < 0.25).float().requires_grad_()
    ld = -torch.logspace(-3, -0.5, H)
    qs, ks, vs = (x.detach().transpose(1, 2).contiguous().requires_grad_() for x in (q, kk, v))
    with torch.no_grad():
        timed("spike", "fwd", "t4dm (PyTorch chunked)", lambda: spike_attention(q, kk, v, ld))
        timed("spike", "fwd", "naive quadratic", lambda: naive_spike_attention(q, kk, v, ld))
        timed(
            "spike",
            "fwd",
            "sdpa (CPU, causal)",
            lambda: F.scaled_dot_product_attention(qs, ks, vs, is_causal=True),
        )
    timed("spike", "fwd+bwd", "t4dm (PyTorch chunked)", lambda: spike_attention(q, kk, v, ld).backward(do))
    timed("spike", "fwd+bwd", "naive quadratic", lambda: naive_spike_attention(q, kk, v, ld)[0].backward(do))
    for mode in ("fwd", "fwd+bwd"):
        _ratio(report, "spike", mode, T, "naive quadratic", "t4dm (PyTorch chunked)")
    _ratio(report, "spike", "fwd", T, "sdpa (CPU, causal)", "t4dm (PyTorch chunked)")


# ----------------------------------------------------------------------------------------------------


def run_attention_bench(
    device: str = "cuda",
    json_path: str | None = None,
    *,
    fla_max_configs: int = 4,
    scaling_T: tuple[int, ...] = (2048, 8192, 32768),
    sweep: bool = True,
) -> dict:
    """Run the benchmark on ``device`` ("cuda" or "cpu"), print a table as it goes, and return (and
    write to ``json_path`` if given) a dict with the device, versions, shape, rows and ratios."""
    import torch
    import triton

    use_cuda = device.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise ValueError(f"device={device!r}: CUDA is not available on this machine")
    name = torch.cuda.get_device_name() if use_cuda else "cpu"
    report = Report(
        device=name,
        versions={
            "torch": torch.__version__,
            "triton": triton.__version__,
            "fla": None,
            "python": sys.version.split()[0],
        },
        shape={},
    )
    print(f"attention benchmark on {name} (torch {torch.__version__}, triton {triton.__version__})")
    print(
        f"{'suite':11s} {'mode':8s} {'T':8s} {'impl':34s} {'median':>10s}    {'TF/s':>7s}      {'GB/s':>7s}      {'first':>7s}"
    )
    started = time.perf_counter()
    if use_cuda:
        _cuda_bench(report, fla_max_configs, scaling_T, sweep)
    else:
        _cpu_bench(report)
    result = asdict(report)
    result["seconds"] = round(time.perf_counter() - started, 1)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(result, f, indent=2, default=str)
        print(f"wrote {json_path}")
    return result


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--json", default=None)
    parser.add_argument("--fla-max-configs", type=int, default=4, help="0: let fla autotune over all configs")
    parser.add_argument("--scaling-T", default="2048,8192,32768")
    parser.add_argument("--no-sweep", action="store_true", help="skip our chunk-size / block sweep")
    args = parser.parse_args()
    run_attention_bench(
        args.device,
        args.json,
        fla_max_configs=args.fla_max_configs,
        scaling_T=tuple(int(t) for t in args.scaling_T.split(",") if t),
        sweep=not args.no_sweep,
    )
