"""The unified model's GPU check (issue 7): memory and speed of Qwen2.5-3B in NF4 with the cortical stack,
beside the plain NF4 model in the same process.

Random weights of the real shape (:data:`~t4dm.qwen.QWEN25_3B`) are written to a local folder, then loaded
through :func:`~t4dm.qwen.load_backbone` (``quantize="nf4"``: bitsandbytes, bfloat16 compute, double
quantisation). Measured, each with ``torch.cuda.max_memory_allocated`` reset before it:

- **plain**: the NF4 model alone — prefill of ``context`` tokens, then greedy decoding of ``new_tokens`` with
  its KV cache, one forward per token (the loop ``UnifiedModel.generate`` runs, so the ratio measures the
  stack, not ``transformers.generate``'s machinery);
- **unified**: the same backbone with the six-block stack (d=1024, bf16) after decoder layer 17, LoRA r=16
  on q/v and a T4DX memory (``memory_dim`` 256, a store of random episodes read once from the prompt):
  prefill and decoding through :meth:`~t4dm.qwen.UnifiedModel.generate` (peak memory: target ≤ 10 GiB) — on
  CUDA with the stack's decoding step as one CUDA graph (its default), and again with ``stack_graph=False``
  (the stack's kernels launched one by one) for comparison;
- **train step**: one phase-1 step on ``context`` tokens (forward with labels, backward through the stack
  and LoRA, AdamW step) — peak memory (target ≤ 16 GiB) and time;

and ``decode_ratio = unified tokens/s / plain tokens/s`` (target ≥ 0.9). Times are medians of ``repeat``
synchronised runs after a first (compiling, autotuning) one.

On a CPU (``--device cpu --shape tiny --quantize none``) the same code runs on a tiny model: that is how
the tests check this script without a GPU.

``python -m t4dm.bench.qwen --device cuda --json out.json``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from .timing import wall_times

__all__ = ["run_qwen_bench"]

GIB = 1 << 30


def _say(text: str) -> None:
    print(text, flush=True)


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: Any) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None


def _timed(fn: Callable[[], Any], device: Any, repeat: int) -> tuple[float, list[float]]:
    """``(first call s, [later calls s])``, synchronised."""
    return wall_times(fn, repeat, sync=lambda: _sync(device))


def _write_random_checkpoint(folder: str, shape: str, device: Any, seed: int) -> int:
    """A random Qwen2 of ``shape`` saved to ``folder`` in bfloat16 (float32 for ``tiny``); returns its
    parameter count."""
    import torch
    from transformers import Qwen2ForCausalLM

    from t4dm.qwen import qwen_config, tiny_qwen_config

    config = qwen_config() if shape == "3b" else tiny_qwen_config()
    dtype = torch.bfloat16 if shape == "3b" else torch.float32
    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen2ForCausalLM(config).to(dtype)
    count = sum(p.numel() for p in model.parameters())
    model.save_pretrained(folder)
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return count


def _decode_loop(backbone: Any, ids: Any, new_tokens: int) -> Any:
    """Greedy decoding with the KV cache, one forward per token: the plain model's side of the ratio."""
    import torch

    from t4dm.qwen.unified import _cache_keyword

    keyword = _cache_keyword(backbone)  # "cache" (transformers 5.x) or "past_key_values"
    with torch.no_grad():
        out = backbone(input_ids=ids, use_cache=True)
        token = out.logits[:, -1].argmax(dim=-1, keepdim=True)
        tokens = [token]
        for _ in range(new_tokens - 1):
            out = backbone(input_ids=token, use_cache=True, **{keyword: getattr(out, keyword)})
            token = out.logits[:, -1].argmax(dim=-1, keepdim=True)
            tokens.append(token)
    return torch.cat(tokens, dim=1)


def run_qwen_bench(
    *,
    device: str = "cuda",
    shape: str = "3b",
    quantize: str = "nf4",
    context: int = 2048,
    new_tokens: int = 64,
    repeat: int = 3,
    memories: int = 1000,
    layer: int | None = None,
    workdir: str | None = None,
    json_path: str | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Run the measurements above; returns (and with ``json_path`` writes) the results."""
    import numpy as np
    import torch

    from t4dm.errors import InvalidInput
    from t4dm.qwen import UnifiedModel, load_backbone
    from t4dm.storage import T4DX

    if shape not in ("3b", "tiny"):
        raise InvalidInput("shape", shape, "expected '3b' or 'tiny'")
    for name, value, low in (("context", context, 2), ("new_tokens", new_tokens, 2), ("repeat", repeat, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise InvalidInput(name, value, f"must be an int >= {low}")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda needs a CUDA device")
    tiny = shape == "tiny"
    layer = (2 if tiny else 17) if layer is None else layer
    stack = {"d_stack": 32, "n_blocks": 2, "n_heads": 2} if tiny else {}
    memory_dim = 16 if tiny else 256
    stack_dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    results: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "shape": shape,
        "quantize": quantize,
        "context": context,
        "new_tokens": new_tokens,
        "layer": layer,
        "targets": {"generate_peak_gib": 10.0, "train_peak_gib": 16.0, "decode_ratio": 0.9},
    }
    root = tempfile.mkdtemp(prefix="t4dm-qwen-bench-", dir=workdir)
    try:
        start = time.perf_counter()
        folder = os.path.join(root, "model")
        results["parameters"] = _write_random_checkpoint(folder, shape, dev, seed)
        results["write_s"] = time.perf_counter() - start
        start = time.perf_counter()
        device_map = {"": dev.index or 0} if dev.type == "cuda" else None
        backbone = load_backbone(folder, quantize=quantize, device_map=device_map)
        if dev.type == "cpu":
            backbone = backbone.to(dev)
        backbone.eval()
        results["load_s"] = time.perf_counter() - start
        _say(f"{shape} Qwen2 ({results['parameters']:,} parameters), {quantize}: written in "
             f"{results['write_s']:.1f} s, loaded in {results['load_s']:.1f} s")  # fmt: skip

        vocab = int(backbone.config.vocab_size)
        generator = torch.Generator().manual_seed(seed)
        ids = torch.randint(0, vocab, (1, context), generator=generator).to(dev)

        # ---------------------------------------------------------------- plain NF4 model
        _reset_peak(dev)

        def plain_prefill() -> None:
            with torch.no_grad():
                backbone(input_ids=ids, use_cache=True)

        first, times = _timed(plain_prefill, dev, repeat)
        plain = {"prefill_first_s": first, "prefill_ms": statistics.median(times) * 1e3}
        first, times = _timed(lambda: _decode_loop(backbone, ids, new_tokens), dev, repeat)
        decode_s = statistics.median(times) - plain["prefill_ms"] / 1e3
        plain["decode_tokens_per_s"] = (new_tokens - 1) / max(decode_s, 1e-9)
        plain["peak_gib"] = _peak_gib(dev)
        results["plain"] = plain
        _say(f"plain:   prefill {plain['prefill_ms']:.1f} ms, decoding {plain['decode_tokens_per_s']:.1f} tokens/s"
             + (f", peak {plain['peak_gib']:.2f} GiB" if plain["peak_gib"] is not None else ""))  # fmt: skip

        # ---------------------------------------------------------------- unified model
        model = UnifiedModel(backbone, layer=layer, memory_dim=memory_dim, dtype=stack_dtype, **stack)
        model.add_lora(dropout=0.0)
        model.eval()
        store_path = os.path.join(root, "store")
        with T4DX.open(store_path, dim=memory_dim, durability="none") as store:
            rng = np.random.default_rng(seed)
            store.insert_batch(
                rng.normal(size=(memories, memory_dim)).astype(np.float32), [{}] * memories, kind="episode"
            )
            model.attach_memory(store, k=4)
            _reset_peak(dev)

            def unified_prefill() -> None:
                with torch.no_grad():
                    model(ids, use_cache=True, return_stack_state=True)

            first, times = _timed(unified_prefill, dev, repeat)
            unified = {"prefill_first_s": first, "prefill_ms": statistics.median(times) * 1e3}
            first, times = _timed(lambda: model.generate(ids, new_tokens), dev, repeat)
            decode_s = statistics.median(times) - unified["prefill_ms"] / 1e3
            unified["decode_tokens_per_s"] = (new_tokens - 1) / max(decode_s, 1e-9)
            unified["generate_first_s"] = first
            # generate()'s default on CUDA: the stack's decoding step as one CUDA graph
            unified["stack_graph"] = dev.type == "cuda"
            # the same decoding with the stack's kernels launched one by one (stack_graph=False)
            _, times = _timed(lambda: model.generate(ids, new_tokens, stack_graph=False), dev, repeat)
            eager_s = statistics.median(times) - unified["prefill_ms"] / 1e3
            unified["decode_tokens_per_s_eager_stack"] = (new_tokens - 1) / max(eager_s, 1e-9)
            unified["peak_gib"] = _peak_gib(dev)
            unified["trainable"] = model.trainable_parameters()
            results["unified"] = unified
            results["decode_ratio"] = unified["decode_tokens_per_s"] / plain["decode_tokens_per_s"]
            results["decode_ratio_eager_stack"] = (
                unified["decode_tokens_per_s_eager_stack"] / plain["decode_tokens_per_s"]
            )
            results["prefill_ratio"] = plain["prefill_ms"] / unified["prefill_ms"]
            _say(f"unified: prefill {unified['prefill_ms']:.1f} ms, decoding {unified['decode_tokens_per_s']:.1f} "
                 f"tokens/s ({results['decode_ratio']:.2f}x plain; with the stack's kernels launched one by one "
                 f"{unified['decode_tokens_per_s_eager_stack']:.1f}, {results['decode_ratio_eager_stack']:.2f}x)"
                 + (f", peak {unified['peak_gib']:.2f} GiB" if unified["peak_gib"] is not None else ""))  # fmt: skip
            model.detach_memory()

        # ---------------------------------------------------------------- one training step
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-4)
        _reset_peak(dev)

        def train_step() -> None:
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                loss = model(ids, labels=ids, read_memory=False).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()

        first, times = _timed(train_step, dev, max(1, repeat - 1))
        results["train"] = {
            "first_s": first,
            "step_ms": statistics.median(times) * 1e3,
            "peak_gib": _peak_gib(dev),
            "tokens": context,
        }
        _say(f"train step ({context} tokens): {results['train']['step_ms']:.1f} ms"
             + (f", peak {results['train']['peak_gib']:.2f} GiB" if dev.type == "cuda" else ""))  # fmt: skip
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(results, f, indent=2)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m t4dm.bench.qwen", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--shape", default="3b", choices=("3b", "tiny"))
    parser.add_argument("--quantize", default="nf4", choices=("nf4", "none"))
    parser.add_argument("--context", type=int, default=2048)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--workdir", default=None, help="folder for the random checkpoint (default: temporary)"
    )
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    run_qwen_bench(
        device=args.device, shape=args.shape, quantize=args.quantize, context=args.context,
        new_tokens=args.new_tokens, repeat=args.repeat, workdir=args.workdir, json_path=args.json,
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
