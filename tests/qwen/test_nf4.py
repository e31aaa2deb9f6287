"""The NF4 (QLoRA) path on tiny random Qwen2 models: bitsandbytes >= 0.50 quantises and runs them on the CPU.

What holds for the unquantised model must hold for the 4-bit one: the zero-init equivalence, gradients to
LoRA and the stack, cached generation, checkpoints, phase 1 training; and training after inference (where
bitsandbytes would repack the weights for the CPU and then lose gradients: ``keep_nf4_layout``).
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")
if importlib.util.find_spec("bitsandbytes") is None:
    pytest.skip("bitsandbytes is not installed", allow_module_level=True)

import bitsandbytes as bnb  # noqa: E402

from t4dm.errors import InvalidInput  # noqa: E402
from t4dm.qwen import (  # noqa: E402
    UnifiedModel,
    load_backbone,
    load_checkpoint,
    repacked_nf4_layers,
    save_checkpoint,
)
from t4dm.qwen.training import train  # noqa: E402
from tests.qwen.helpers import LAYER, STACK, tiny_base  # noqa: E402
from tests.qwen.helpers import random_ids as _cpu_ids  # noqa: E402

#: Where the 4-bit model lives: load_backbone puts it on the GPU when there is one (scripts/gpu_qwen.sh runs
#: this file there too), else on the CPU.
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() and tuple(int(p) for p in bnb.__version__.split(".")[:2]) < (0, 50),
    reason="NF4 on the CPU needs bitsandbytes >= 0.50",
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A tiny random Qwen2 checkpoint on disk (the NF4 path quantises while it loads)."""
    path = tmp_path_factory.mktemp("tiny-qwen")
    tiny_base(7).save_pretrained(path)
    return path


def random_ids(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return _cpu_ids(batch, length, seed).to(DEVICE)


def _nf4(folder) -> torch.nn.Module:
    return load_backbone(folder, quantize="nf4").eval()


def _unified(folder, *, lora: bool = True, seed: int = 8) -> UnifiedModel:
    torch.manual_seed(seed)
    model = UnifiedModel(_nf4(folder), layer=LAYER, **STACK).eval()
    if lora:
        model.add_lora(dropout=0.0)
    return model


def _linear_names(model) -> list[str]:
    return [n for n, m in model.named_modules() if n.endswith(("_proj", "q_proj")) and "lora" not in n]


def test_nf4_load_quantises_every_decoder_linear_and_stays_close(folder):
    model = _nf4(folder)
    plain = load_backbone(folder, quantize="none").eval().to(DEVICE)
    names = _linear_names(model)
    assert len(names) == 4 * 7  # q, k, v, o, gate, up, down in each of the 4 layers
    modules = dict(model.named_modules())
    weights = dict(plain.named_modules())
    for name in names:
        layer = modules[name]
        assert isinstance(layer, bnb.nn.Linear4bit), name
        state = layer.weight.quant_state
        assert state.quant_type == "nf4" and state.nested, name  # double quantisation
        assert layer.compute_dtype == torch.bfloat16, name
        # the 4-bit weight decodes to the loaded one within NF4's step (16 levels per 64-weight block)
        original = weights[name].weight.detach().cpu()
        decoded = bnb.functional.dequantize_4bit(layer.weight.data, state).float().cpu()
        scale = original.abs().reshape(-1, 64).amax(dim=1, keepdim=True)
        error = (decoded - original).reshape(-1, 64).abs() / scale
        assert float(error.max()) < 0.2, name  # widest NF4 gap is ~0.28 of the block's absmax; half of it
        assert float(error.mean()) < 0.05, name
    assert model.lm_head.weight.dtype == torch.bfloat16  # embeddings stay unquantised (tied head)
    ids = random_ids(2, 12, seed=1)
    with torch.no_grad():
        a, b = plain(input_ids=ids).logits, model(input_ids=ids).logits.float()
    cosine = torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0)
    assert 0.9 < float(cosine) < 1.0


@pytest.mark.parametrize("lora", [False, True], ids=["plain", "qlora"])
def test_zero_up_projection_gives_the_nf4_base_logits_exactly(folder, lora):
    from peft import prepare_model_for_kbit_training

    base = _nf4(folder)
    if lora:  # QLoRA first casts the unquantised weights (norms, embeddings) to float32: so does the base
        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False).eval()
    ids = random_ids(2, 11, seed=2)
    with torch.no_grad():
        reference = base(input_ids=ids).logits.clone()
    model = _unified(folder, lora=lora)
    with torch.no_grad():
        out = model(ids)
    assert out.logits.dtype == reference.dtype == (torch.float32 if lora else torch.bfloat16)
    assert torch.equal(out.logits, reference)
    assert len(out.signals) == STACK["n_blocks"]


def test_qlora_gradients_reach_lora_projections_and_stack_after_inference(folder):
    """Inference first (where bitsandbytes would repack weights for the CPU), then a training step: every
    trainable tensor gets a gradient, the 4-bit weights and the norms none."""
    model = _unified(folder)
    with torch.no_grad():
        torch.nn.init.normal_(model.up.weight, std=0.1)
        for name, p in model.backbone.named_parameters():
            if ".lora_B." in name:
                p.normal_(std=0.05)
        model(random_ids(1, 9, seed=3))  # eval mode, no gradients
    assert repacked_nf4_layers(model.backbone) == []
    model.train()
    model.stack.bus.set("norepinephrine", 0.7)  # NE = 0.5 zeroes d/d(NE gain)
    ids = random_ids(2, 10, seed=3)
    context = torch.randn(
        2, STACK["d_stack"], device=DEVICE
    )  # a top-down context reaches the apical prediction weights
    model(ids, labels=ids, context=context).loss.backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = ("lora_A", "lora_B", "stack.", "down.", "up.")
    assert all(any(g in n for n, _ in trainable) for g in groups)
    layers = {n.split(".layers.")[1].split(".")[0] for n, _ in trainable if "lora_A" in n}
    assert layers == {"0", "1", "2", "3"}  # LoRA of the first layer too: gradients cross every 4-bit layer
    for name, p in trainable:
        assert p.grad is not None and bool(p.grad.abs().sum() > 0), name
    for name, p in model.named_parameters():
        if not p.requires_grad:
            assert p.grad is None, name


def test_a_backbone_repacked_before_the_model_cannot_train(folder):
    from transformers import AutoModelForCausalLM

    from t4dm.qwen import nf4_quantization_config

    raw = AutoModelForCausalLM.from_pretrained(
        folder, quantization_config=nf4_quantization_config(), dtype=torch.bfloat16, device_map={"": "cpu"}
    ).eval()
    with torch.no_grad():  # on the CPU: the rewrite is bitsandbytes' CPU inference path
        raw(input_ids=_cpu_ids(1, 4))
    repacked = repacked_nf4_layers(raw)
    if not repacked:
        pytest.skip("bitsandbytes does not repack 4-bit weights on this CPU (no AVX512-BF16)")
    model = UnifiedModel(raw, layer=LAYER, **STACK).eval()  # inference still works
    with torch.no_grad():
        model(_cpu_ids(1, 4))
    with pytest.raises(InvalidInput) as info:
        model.train()
    assert info.value.field == "backbone" and "load the backbone again" in str(info.value)
    assert not model.training


def test_nf4_cached_generation_equals_recomputing(folder):
    model = _unified(folder)
    with torch.no_grad():
        torch.nn.init.normal_(model.up.weight, std=0.3)
    ids = random_ids(2, 7, seed=5)
    cached = model.generate(ids, 6, use_cache=True)
    full = model.generate(ids, 6, use_cache=False)
    assert torch.equal(cached.sequences, full.sequences)
    rel = float((cached.scores - full.scores).norm() / full.scores.norm())
    assert rel < 2e-2  # bfloat16 compute in the 4-bit layers: cached and recomputed sums round differently


def test_nf4_checkpoint_round_trip(tmp_path, folder):
    model = _unified(folder)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    ids = random_ids(1, 9, seed=6)
    with torch.no_grad():
        expected = model(ids).logits
    save_checkpoint(model, tmp_path / "ckpt")
    restored = load_checkpoint(tmp_path / "ckpt", _nf4(folder)).eval()
    with torch.no_grad():
        assert torch.equal(restored(ids).logits, expected)


def test_nf4_phase1_trains_lora_and_stack_and_lowers_the_loss(folder):
    model = _unified(folder, lora=False)
    model.add_lora(dropout=0.0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = np.tile(np.arange(40) % 17, 20)  # a short repeating pattern: easy to learn
    result = train(model, ids, steps=30, seq_len=16, batch_size=4, lr=3e-3, progress=False)
    assert len(result.losses) == 30 and all(np.isfinite(result.losses))
    assert np.mean(result.losses[-5:]) < np.mean(result.losses[:5]) - 0.1
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed and all(p.requires_grad for n, p in model.named_parameters() if n in changed)
    assert any("lora_" in n for n in changed) and any(n.startswith("stack.") for n in changed)


def test_an_inference_only_backbone_decodes_and_refuses_training(folder):
    if DEVICE != "cpu":
        pytest.skip("the repacked layout is bitsandbytes' CPU inference path")
    backbone = load_backbone(folder, quantize="nf4", inference_only=True)
    torch.manual_seed(8)
    model = UnifiedModel(backbone, layer=LAYER, **STACK).eval()
    kept = _unified(folder, lora=False)  # the same weights and stack, trainable layout
    ids = random_ids(1, 7, seed=9)
    fast, slow = model.generate(ids, 5), kept.generate(ids, 5)
    if not repacked_nf4_layers(model.backbone):
        pytest.skip("bitsandbytes does not repack 4-bit weights on this CPU (no AVX512-BF16)")
    assert repacked_nf4_layers(kept.backbone) == []
    # the repacked weights round their block scales to bfloat16: close to the kept layout, not equal
    rel = float((fast.scores - slow.scores).norm() / slow.scores.norm())
    assert rel < 0.05
    with pytest.raises(InvalidInput) as info:
        model.train()
    assert info.value.field == "backbone" and "inference_only=False" in str(info.value)
    with pytest.raises(InvalidInput) as info:
        load_backbone(folder, quantize="nf4", inference_only="yes")
    assert info.value.field == "inference_only"
