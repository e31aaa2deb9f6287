"""Benchmark of the spiking cortical stack beside the same stack built from the kernels' naive references.

On CUDA (the issue's figures): the six-block stack at B=8, T=2048, d_model=1024, 16 heads, bfloat16 —
forward (no autograd), forward+backward (gradient of every parameter) and one decoding step (T=1 with the
stream state) — time, tokens/s and peak memory, for

- ``t4dm``: the stack on the public kernels (Triton on CUDA);
- ``naive references``: the same weights with the kernels swapped for their PyTorch references
  (``lif_multistep_naive``, ``naive_chunk_spike_attention`` / ``naive_spike_attention_step``,
  ``naive_chunk_rwkv6`` / ``naive_rwkv6_step``), run on the same GPU in the same process;

and the ratio ``reference time / t4dm time`` (> 1: ours is faster). Times are medians (and minima) of
synchronised wall-clock timings after a first call (whose time, compilation and autotuning included, is
reported as ``first_call_s``, and whose peak memory is ``peak_mib``); the peers' calls are interleaved
round by round so that load from other processes falls on all of them alike.

On CPU: a small stack (B=2, T=256, d_model=256, 4 heads, float32) — what a CPU user gets, where ours *is*
the PyTorch path — beside the specification forms (quadratic spike attention, token-by-token RWKV-6,
naive LIF), the glass-box cost (off, on, on with the membrane replay), and one forward at d_model=1024.

``python -m t4dm.bench.stack --device cuda --json out.json``
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

__all__ = ["reference_ops", "run_stack_bench", "spec_ops"]


def reference_ops() -> Any:
    """:class:`~t4dm.spiking.ops.SpikingOps` from the kernels' naive references (the PyTorch code the public
    functions run on the CPU), with the public signatures."""
    from t4dm.kernels.lif.naive import lif_multistep_naive
    from t4dm.kernels.rwkv.naive import naive_chunk_rwkv6, naive_rwkv6_step
    from t4dm.kernels.spike_attention.naive import naive_chunk_spike_attention, naive_spike_attention_step
    from t4dm.spiking.ops import SpikingOps

    return SpikingOps(
        _naive_lif(lif_multistep_naive),
        _attention(naive_chunk_spike_attention),
        lambda q, k, v, ld, state, scale=None, *, check_decay=True: naive_spike_attention_step(
            q, k, v, ld, state, scale
        ),
        lambda r, k, v, w, u, scale=None, initial_state=None, output_final_state=False, *, check_decay=True: (
            naive_chunk_rwkv6(r, k, v, w, u, scale, initial_state, output_final_state)
        ),
        lambda r, k, v, w, u, state, scale=None, *, check_decay=True: naive_rwkv6_step(
            r, k, v, w, u, state, scale
        ),
        name="naive references",
    )


def spec_ops() -> Any:
    """:class:`~t4dm.spiking.ops.SpikingOps` from the specification forms: quadratic spike attention
    (``O(T²)`` memory) and token-by-token RWKV-6 — for small CPU sizes only."""
    from t4dm.kernels.lif.naive import lif_multistep_naive
    from t4dm.kernels.rwkv.naive import naive_recurrent_rwkv6, naive_rwkv6_step
    from t4dm.kernels.spike_attention.naive import naive_spike_attention, naive_spike_attention_step
    from t4dm.spiking.ops import SpikingOps

    return SpikingOps(
        _naive_lif(lif_multistep_naive),
        _attention(naive_spike_attention),
        lambda q, k, v, ld, state, scale=None, *, check_decay=True: naive_spike_attention_step(
            q, k, v, ld, state, scale
        ),
        lambda r, k, v, w, u, scale=None, initial_state=None, output_final_state=False, *, check_decay=True: (
            naive_recurrent_rwkv6(r, k, v, w, u, scale, initial_state, output_final_state)
        ),
        lambda r, k, v, w, u, state, scale=None, *, check_decay=True: naive_rwkv6_step(
            r, k, v, w, u, state, scale
        ),
        name="specification forms",
    )


def _naive_lif(lif_multistep_naive: Callable) -> Callable:
    def lif(x, tau=2.0, v_threshold=1.0, v_reset=0.0, decay_input=True, surrogate="sigmoid", alpha=4.0,
            detach_reset=False, time_dim=0, v0=None, return_membrane=False):  # fmt: skip
        spikes, v_final = lif_multistep_naive(
            x.movedim(time_dim, 0), tau, v_threshold, v_reset, decay_input, surrogate, alpha, detach_reset, v0
        )
        spikes = spikes.movedim(0, time_dim)
        return (spikes, v_final) if return_membrane else spikes

    return lif


def _attention(fn: Callable) -> Callable:
    def attention(
        q, k, v, log_decay, scale=None, *, initial_state=None, output_final_state=False, check_decay=True
    ):
        o, state = fn(q, k, v, log_decay, scale, initial_state, output_final_state)
        return (o, state) if output_final_state else o

    return attention


def _print(line: str) -> None:
    print(line, flush=True)


def _row_line(row: dict[str, Any]) -> str:
    ms = f"{row['ms']:10.2f}" if row.get("ms") is not None else "         -"
    ms_min = f"{row['ms_min']:10.2f}" if row.get("ms_min") is not None else "         -"
    tps = f"{row['tokens_per_s']:12,.0f}" if row.get("tokens_per_s") else "           -"
    mem = f"{row['peak_mib']:9,.0f}" if row.get("peak_mib") is not None else "        -"
    first = f"{row['first_call_s']:7.1f}" if row.get("first_call_s") is not None else "      -"
    return f"{row['shape']:>22} {row['mode']:>8} {row['impl']:>22} {ms} {ms_min} {tps} {mem} {first}  {row.get('note', '')}"


def _header() -> str:
    return (
        f"{'shape':>22} {'mode':>8} {'impl':>22} {'ms median':>10} {'ms min':>10} {'tokens/s':>12} "
        f"{'peak MiB':>9} {'first s':>7}"
    )


class _Timer:
    """Wall-clock milliseconds of one call (synchronised on CUDA) and the first call's seconds and peak memory."""

    def __init__(self, device: str) -> None:
        self.device = device

    def sync(self) -> None:
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()

    def once_ms(self, fn: Callable[[], Any]) -> float:
        self.sync()
        start = time.perf_counter()
        fn()
        self.sync()
        return (time.perf_counter() - start) * 1e3

    def measured(self, fn: Callable[[], Any]) -> tuple[float, float | None]:
        """(ms of one call, peak device MiB allocated during it; None on the CPU)."""
        if self.device != "cuda":
            return self.once_ms(fn), None
        import torch

        torch.cuda.reset_peak_memory_stats()
        ms = self.once_ms(fn)
        return ms, torch.cuda.max_memory_allocated() / 2**20

    def first_call(self, fn: Callable[[], Any]) -> tuple[float, float | None]:
        """(seconds of the call, peak device MiB during it, None on the CPU)."""
        if self.device == "cuda":
            import torch

            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        seconds = self.once_ms(fn) * 1e-3
        if self.device == "cuda":
            return seconds, torch.cuda.max_memory_allocated() / 2**20
        return seconds, None


def _interleaved(
    timer: _Timer, runs: dict[str, tuple[Callable[[], Any], int, Callable[[], None] | None]]
) -> dict[str, dict[str, Any]]:
    """Time every run (name → (function, repetitions, reset before each call)): a first call each (compilation,
    autotuning), then rounds in which each run that has repetitions left is called once, so that load from
    other processes falls on all of them alike. Returns per name: ms (median), ms_min, first_call_s, peak_mib
    (the most device memory allocated during a timed call, everything resident included: both stacks'
    weights and stream states), first_call_peak_mib, or error."""
    results: dict[str, dict[str, Any]] = {}
    samples: dict[str, list[float]] = {}
    for name, (fn, _, reset) in runs.items():
        try:
            if reset is not None:
                reset()
            first, peak = timer.first_call(fn)
            results[name] = {"first_call_s": first, "first_call_peak_mib": peak, "peak_mib": None}
            samples[name] = []
        except Exception as exc:  # a peer that fails (out of memory) is reported, the others still run
            results[name] = {"error": f"{type(exc).__name__}: {str(exc)[:100]}"}
            if timer.device == "cuda":
                import torch

                torch.cuda.empty_cache()
    rounds = max((runs[name][1] for name in samples), default=0)
    for i in range(rounds):
        for name in list(samples):
            fn, repeat, reset = runs[name]
            if i >= repeat:
                continue
            if reset is not None:
                reset()
            try:
                ms, peak = timer.measured(fn)
            except Exception as exc:  # e.g. out of memory on a later call: report it, keep the others
                results[name]["error"] = f"{type(exc).__name__}: {str(exc)[:100]}"
                del samples[name]
                continue
            samples[name].append(ms)
            if peak is not None:
                results[name]["peak_mib"] = max(peak, results[name]["peak_mib"] or 0.0)
    for name, values in samples.items():
        if values:
            results[name].update(ms=statistics.median(values), ms_min=min(values), samples=len(values))
        else:
            results[name]["error"] = "no repetitions requested"
    return results


def _bench_stack(
    report: dict[str, Any],
    timer: _Timer,
    *,
    device: str,
    dtype: Any,
    B: int,
    T: int,
    D: int,
    H: int,
    n_blocks: int,
    peers: dict[str, tuple[Any, dict[str, int]]],
    modes: tuple[str, ...] = ("fwd", "fwd+bwd", "step"),
) -> None:
    """Time ``peers`` (name → (SpikingOps, repetitions per mode)) on one stack shape, the same weights and
    inputs for all; the first peer is ours."""
    import torch

    from t4dm.spiking import CorticalStack

    shape = f"B{B} T{T} D{D} H{H} x{n_blocks}"
    torch.manual_seed(0)
    ours_name = next(iter(peers))
    stacks = {}
    for name, (ops, _) in peers.items():
        stacks[name] = CorticalStack(n_blocks, D, H, ops=ops).to(device=device, dtype=dtype)
        if name != ours_name:
            stacks[name].load_state_dict(stacks[ours_name].state_dict())
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(B, T, D, device=device, dtype=dtype, generator=gen)
    context = torch.randn(B, T, D, device=device, dtype=dtype, generator=gen)
    grad = torch.randn(B, T, D, device=device, dtype=dtype, generator=gen)
    x_step = torch.randn(B, 1, D, device=device, dtype=dtype, generator=gen)
    ctx_step = torch.randn(B, 1, D, device=device, dtype=dtype, generator=gen)
    report["shapes"].append({"shape": shape, "B": B, "T": T, "d_model": D, "n_heads": H, "n_blocks": n_blocks,
                             "dtype": str(dtype).replace("torch.", ""),
                             "parameters": sum(p.numel() for p in stacks[ours_name].parameters())})  # fmt: skip
    with torch.no_grad():  # the stream state after the sequence, for the decoding step
        states = {name: stack(x, context, return_state=True).state for name, stack in stacks.items()}

    def reset_grads(stack: torch.nn.Module) -> Callable[[], None]:
        return lambda: stack.zero_grad(set_to_none=True)

    for mode in modes:
        runs: dict[str, tuple[Callable[[], Any], int, Callable[[], None] | None]] = {}
        for name, stack in stacks.items():
            repeat = peers[name][1][mode]
            if mode == "fwd":
                runs[name] = (lambda s=stack: _no_grad(lambda: s(x, context).hidden), repeat, None)
            elif mode == "fwd+bwd":
                runs[name] = (lambda s=stack: s(x, context).hidden.backward(grad), repeat, reset_grads(stack))
            else:
                runs[name] = (lambda s=stack, st=states[name]: _no_grad(
                    lambda: s(x_step, ctx_step, state=st, return_state=True).hidden), repeat, None)  # fmt: skip
        # ours again in step mode on CUDA, the whole step one CUDA graph (generate's default)
        if mode == "step" and device == "cuda":
            from t4dm.spiking import StackDecoder

            with torch.no_grad():
                decoder = StackDecoder(stacks[ours_name], states[ours_name], context=True)
            runs[f"{ours_name}, CUDA graph"] = (
                lambda d=decoder: _no_grad(lambda: d(x_step, ctx_step).hidden),
                peers[ours_name][1][mode],
                None,
            )
        results = _interleaved(timer, runs)
        for stack in stacks.values():
            stack.zero_grad(set_to_none=True)
        tokens = B * (1 if mode == "step" else T)
        for name, result in results.items():
            row: dict[str, Any] = {"shape": shape, "mode": mode, "impl": name, **result}
            if "error" in result:
                row.update(ms=None, note=f"failed: {result['error']}")
            else:
                row["tokens_per_s"] = tokens / (result["ms"] * 1e-3)
            report["rows"].append(row)
            _print(_row_line(row))
        ours = results.get(ours_name, {})
        for name in list(peers)[1:]:
            peer = results.get(name, {})
            if ours.get("ms") and peer.get("ms"):
                ratio = peer["ms"] / ours["ms"]
                report["ratios"].append({"shape": shape, "mode": mode, "peer": name, "peer_over_ours": ratio})
                _print(f"{shape:>22} {mode:>8} {'ratio ' + name + ' / t4dm':>34} = {ratio:.2f}x")
    del stacks, states
    if device == "cuda":
        torch.cuda.empty_cache()


def _no_grad(fn: Callable[[], Any]) -> Any:
    import torch

    with torch.no_grad():
        return fn()


def _glass_box_cost(report: dict[str, Any], timer: _Timer) -> None:
    """Forward time of a small CPU stack with the glass box off, on, and on with the membrane replay."""
    import torch

    from t4dm.spiking import CorticalStack, GlassBox
    from t4dm.spiking.glassbox import DEFAULT_KINDS

    B, T, D, H = 2, 256, 256, 4
    torch.manual_seed(0)
    stack = CorticalStack(6, D, H)
    x = torch.randn(B, T, D)
    shape = f"B{B} T{T} D{D} H{H} x6"
    _print(f"\n== glass box cost (CPU forward, {shape})")
    boxes = {
        "off": None,
        "on": GlassBox(DEFAULT_KINDS),
        "on + membrane": GlassBox((*DEFAULT_KINDS, "membrane")),
    }

    def run(box: GlassBox | None) -> None:
        if box is None:
            _no_grad(lambda: stack(x).hidden)
            return
        with box.attach(stack):
            _no_grad(lambda: stack(x).hidden)
        box.clear()

    timed = _interleaved(timer, {label: (lambda b=box: run(b), 5, None) for label, box in boxes.items()})
    results = {label: r["ms"] for label, r in timed.items()}
    for label, r in timed.items():
        row = {"shape": shape, "mode": "fwd", "impl": f"glass box {label}", **r,
               "tokens_per_s": B * T / (r["ms"] * 1e-3)}  # fmt: skip
        report["rows"].append(row)
        _print(_row_line(row))
    # what "off" costs: one `recorder is not None` test per block and one for the stack
    checks = 7
    n = 200_000
    start = time.perf_counter()
    for _ in range(n):
        _ = stack.recorder is not None
    per_check_ns = (time.perf_counter() - start) / n * 1e9
    report["glass_box"] = {
        "forward_ms": results,
        "off_checks_per_forward": checks,
        "off_check_ns": per_check_ns,
        "off_cost_fraction": checks * per_check_ns * 1e-6 / results["off"],
    }
    _print(f"glass box off: {checks} checks x {per_check_ns:.0f} ns = "
           f"{report['glass_box']['off_cost_fraction']:.1e} of the forward")  # fmt: skip


def run_stack_bench(device: str = "cuda", json_path: str | None = None) -> dict:
    """Run the stack benchmark on ``device`` ("cuda" or "cpu"), print a table as it goes, and return (and
    write to ``json_path`` if given) a dict: device, versions, shapes, rows (impl, mode, ms, tokens/s, peak
    MiB, first-call seconds), ratios (reference / ours) and, on CPU, the glass-box cost."""
    import torch

    if device not in ("cuda", "cpu"):
        raise ValueError(f"device must be 'cuda' or 'cpu', got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' but torch.cuda.is_available() is False")
    from t4dm.spiking.ops import KERNEL_OPS

    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if device == "cuda" else (platform.processor() or "cpu"),
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "threads": torch.get_num_threads(),
        "shapes": [],
        "rows": [],
        "ratios": [],
    }
    try:
        import triton

        report["triton"] = triton.__version__
    except ImportError:
        report["triton"] = None
    timer = _Timer(device)
    _print(f"stack benchmark on {report['device']} (torch {report['torch']}, {report['threads']} threads)")
    _print(_header())
    if device == "cuda":
        # the naive references walk the LIF loop token by token (seconds per call): fewer repetitions
        peers = {
            "t4dm": (KERNEL_OPS, {"fwd": 10, "fwd+bwd": 5, "step": 20}),
            "naive references": (reference_ops(), {"fwd": 2, "fwd+bwd": 2, "step": 10}),
        }
        _bench_stack(report, timer, device="cuda", dtype=torch.bfloat16, B=8, T=2048, D=1024, H=16, n_blocks=6,
                     peers=peers)  # fmt: skip
    else:
        peers = {
            "t4dm": (KERNEL_OPS, {"fwd": 3, "fwd+bwd": 3, "step": 10}),
            "specification forms": (spec_ops(), {"fwd": 3, "fwd+bwd": 3, "step": 10}),
        }
        _bench_stack(report, timer, device="cpu", dtype=torch.float32, B=2, T=256, D=256, H=4, n_blocks=6,
                     peers=peers)  # fmt: skip
        _bench_stack(report, timer, device="cpu", dtype=torch.float32, B=1, T=128, D=1024, H=16, n_blocks=6,
                     peers={"t4dm": (KERNEL_OPS, {"fwd": 2, "step": 5})}, modes=("fwd", "step"))  # fmt: skip
        _glass_box_cost(report, timer)
    if json_path is not None:
        with open(json_path, "w") as f:
            json.dump(report, f, indent=2)
        _print(f"wrote {json_path}")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--json", default=None, help="write the results to this JSON file")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (CPU; default torch's)"
    )
    args = parser.parse_args(argv)
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    run_stack_bench(args.device, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
