"""LIF benchmark: ``t4dm.kernels.lif.lif_multistep`` beside SpikingJelly's multi-step LIF and an eager PyTorch loop.

Forward (inference, no autograd graph) and forward+backward (float32, gradient of the spikes w.r.t. the input), all
peers in the same process on the same tensors. Reported per peer: milliseconds (median), effective GB/s (the bytes
floor divided by the time) and the ratios to ours; per shape, the bytes floor from a measured device copy:

- forward: input read + spikes written = 2·T·N·4 bytes;
- forward+backward: the forward's 2 + gradient read, input re-read, gradient written = 5·T·N·4 bytes;
- floor ms = bytes / copy bandwidth, the copy bandwidth counting bytes read and written.

On CUDA the shapes are the issue's (T=2048, N=8192: the sequence-length regime; T=16, N=4,194,304: the classic SNN
regime) and timing is ``triton.testing.do_bench`` (median). With ``device="cpu"`` the shapes are smaller and ours is
the Numba kernels (``kernels/lif/cpu.py``, what a CPU user gets), the eager loop the PyTorch reference.
``python -m t4dm.bench.lif --device cuda --json out.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

__all__ = ["run_lif_bench"]

CUDA_SHAPES = [(2048, 8192), (16, 4_194_304)]
CPU_SHAPES = [(1024, 8192), (16, 1 << 20)]
BYTES = 4  # float32


def _print(line: str) -> None:
    print(line, flush=True)


def _timer(device: str) -> Callable[[Callable[[], Any], list[Any] | None], float]:
    """Median milliseconds of ``fn``."""
    if device == "cuda":
        import triton.testing

        def cuda_ms(fn: Callable[[], Any], grad_to_none: list[Any] | None = None) -> float:
            return float(triton.testing.do_bench(fn, warmup=25, rep=200, grad_to_none=grad_to_none,
                                                 return_mode="median"))  # fmt: skip

        return cuda_ms

    def cpu_ms(fn: Callable[[], Any], grad_to_none: list[Any] | None = None) -> float:
        fn()  # warm-up
        samples = []
        deadline = time.perf_counter() + 2.0
        while len(samples) < 3 or (time.perf_counter() < deadline and len(samples) < 20):
            if grad_to_none:
                for t in grad_to_none:
                    t.grad = None
            start = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - start) * 1e3)
        return statistics.median(samples)

    return cpu_ms


def _copy_bandwidth(device: str, timer: Callable[..., float]) -> float:
    """Bytes per second of a device copy, counting bytes read and written."""
    import torch

    n = (256 << 20) // 4 if device == "cuda" else (64 << 20) // 4
    src = torch.empty(n, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    ms = timer(lambda: dst.copy_(src), None)
    return 2 * n * 4 / (ms * 1e-3)


def _spikingjelly() -> tuple[Callable[..., Any] | None, str]:
    """SpikingJelly's functional multi-step LIF, or None and why not."""
    try:
        from spikingjelly.activation_based import surrogate
        from spikingjelly.activation_based.functional.neuron import lif_multi_step
    except Exception as exc:  # ImportError, or one of its own imports failing
        return None, f"not available ({type(exc).__name__}: {exc})"

    sigmoid = surrogate.Sigmoid(alpha=4.0)

    def run(x: Any, v: Any) -> Any:
        spikes, _, _ = lif_multi_step(x, v, 2.0, True, 1.0, 0.0, sigmoid, False)
        return spikes

    import spikingjelly

    return run, f"spikingjelly {getattr(spikingjelly, '__version__', '?')}"


def _spikingjelly_implementation(device: str) -> str:
    """Which CUDA implementation SpikingJelly selected (private API; 'unknown' if it moved)."""
    if device != "cuda":
        return "torch (cpu)"
    try:
        import torch
        from spikingjelly._ops.lif import _selection

        return str(_selection._get_cuda_selection(torch.device("cuda", torch.cuda.current_device())).name)
    except Exception:
        return "unknown"


def _bench_shape(
    device: str,
    T: int,
    N: int,
    timer: Callable[..., float],
    bandwidth: float,
    sj_run: Callable[..., Any] | None,
    sweep: bool,
) -> dict[str, Any]:
    """Time every peer on one [T, N] float32 input; print rows; return the shape's entry."""
    import torch

    from t4dm.kernels.lif.fused import (
        LIFConfig,
        choose_config,
        choose_cpu_config,
        lif_multistep,
        lif_multistep_impl,
    )
    from t4dm.kernels.lif.naive import lif_multistep_naive

    gen = torch.Generator(device=device).manual_seed(0)
    x = (torch.randn(T, N, generator=gen, device=device) * 1.2 + 0.8).contiguous()
    grad = torch.randn(T, N, generator=gen, device=device)
    v_init = torch.zeros(N, device=device)
    floor_bytes = {"forward": 2 * T * N * BYTES, "forward+backward": 5 * T * N * BYTES}
    entry: dict[str, Any] = {
        "T": T,
        "N": N,
        "floor_bytes": floor_bytes,
        "floor_ms": {k: b / bandwidth * 1e3 for k, b in floor_bytes.items()},
        "config": str(choose_config(T, 1, N, 2.0) if device == "cuda" else choose_cpu_config(N)),
        "threads": None if device == "cuda" else torch.get_num_threads(),
        "peers": {},
    }
    peers: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"ours": lambda t: lif_multistep(t)}
    if device == "cuda":
        import triton

        peers["ours sequential"] = lambda t: lif_multistep_impl(
            t, backend="triton", config=LIFConfig(block=min(512, triton.next_power_of_2(N)))
        )[0]
        if sweep:
            for chunk in (32, 64, 128):
                for block in (128, 256, 512):
                    cfg = LIFConfig(block=block, num_warps=max(1, block // 128), chunk=chunk, warmup=24)
                    peers[f"ours c{chunk} b{block}"] = lambda t, cfg=cfg: lif_multistep_impl(
                        t, backend="triton", config=cfg
                    )[0]
    if sj_run is not None:
        peers["spikingjelly"] = lambda t: sj_run(t, v_init)
        entry["spikingjelly_implementation"] = _spikingjelly_implementation(device)
    peers["eager loop"] = lambda t: lif_multistep_naive(t)[0]

    for name, fn in peers.items():
        record: dict[str, Any] = {}
        for pass_name in ("forward", "forward+backward"):
            try:
                if pass_name == "forward":
                    with torch.no_grad():
                        ms = timer(lambda fn=fn: fn(x), None)
                else:
                    xg = x.clone().requires_grad_()
                    ms = timer(lambda fn=fn, xg=xg: fn(xg).backward(grad), [xg])
            except Exception as exc:  # a peer that fails is reported, the others still run
                record[pass_name] = {"error": f"{type(exc).__name__}: {exc}"}
                _print(f"{f'T{T} N{N}':>16} {pass_name[:8]:>8} {name:>22} failed: {exc}")
                continue
            ours_ms = entry["peers"]["ours"][pass_name].get("ms") if entry["peers"] else ms
            record[pass_name] = {
                "ms": ms,
                "GBps": floor_bytes[pass_name] / (ms * 1e-3) / 1e9,
                "x_floor": ms / entry["floor_ms"][pass_name],
                "ours_speedup": ms / ours_ms if ours_ms else math.nan,
            }
            r = record[pass_name]
            _print(
                f"{f'T{T} N{N}':>16} {'forward' if pass_name == 'forward' else 'fwd+bwd':>8} {name:>22} "
                f"{ms:>10.3f} {r['GBps']:>8.1f} {r['x_floor']:>8.2f} {r['ours_speedup']:>11.2f}"
            )
        entry["peers"][name] = record
        if device == "cuda":
            torch.cuda.synchronize()

    _print(f"{'':>16} floor ms: forward {entry['floor_ms']['forward']:.3f}, "
           f"fwd+bwd {entry['floor_ms']['forward+backward']:.3f}")  # fmt: skip
    return entry


def run_lif_bench(device: str = "cuda", json_path: str | None = None, *, sweep: bool = False) -> dict:
    """Benchmark forward and forward+backward of ours, SpikingJelly and an eager loop; print a table as it goes and
    write JSON to ``json_path`` (if given). ``sweep=True`` also times a few launch configs of ours on CUDA (tuning
    data for ``choose_config``). Returns the results as a dict."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' but torch.cuda.is_available() is False")
    if device not in ("cuda", "cpu"):
        raise ValueError(f"device must be 'cuda' or 'cpu', got {device!r}")
    timer = _timer(device)
    sj_run, sj_status = _spikingjelly()
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "spikingjelly": sj_status,
        "shapes": [],
    }
    try:
        import triton

        results["triton"] = triton.__version__
    except ImportError:
        results["triton"] = None
    if sj_run is None:
        _print(f"SpikingJelly skipped: {sj_status} (pip install spikingjelly loguru to compare)")
    bandwidth = _copy_bandwidth(device, timer)
    results["copy_bandwidth_GBps"] = bandwidth / 1e9
    _print(f"device {results['device']}: copy bandwidth {bandwidth / 1e9:.0f} GB/s (read + write)")
    _print(
        f"{'shape':>16} {'pass':>8} {'peer':>22} {'ms':>10} {'GB/s':>8} {'x floor':>8} {'ours faster':>11}"
    )

    for T, N in CUDA_SHAPES if device == "cuda" else CPU_SHAPES:
        results["shapes"].append(_bench_shape(device, T, N, timer, bandwidth, sj_run, sweep))
        if device == "cuda":
            torch.cuda.empty_cache()

    if json_path is not None:
        with open(json_path, "w") as f:
            json.dump(results, f, indent=2)
        _print(f"wrote {json_path}")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--json", default=None, help="write the results to this JSON file")
    parser.add_argument("--sweep", action="store_true", help="also time a few launch configs of ours (CUDA)")
    args = parser.parse_args(argv)
    run_lif_bench(args.device, args.json, sweep=args.sweep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
