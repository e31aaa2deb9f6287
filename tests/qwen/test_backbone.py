"""Configurations and loading: the real Qwen2.5-3B shape, tiny test models, local-only loading, NF4."""

from __future__ import annotations

import importlib.util
import json

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from t4dm.errors import InvalidInput  # noqa: E402
from t4dm.qwen import QWEN25_3B, load_backbone, nf4_quantization_config, qwen_config, tiny_qwen_config  # noqa: E402
from t4dm.qwen import backbone as backbone_module  # noqa: E402
from tests.qwen.helpers import random_ids, tiny_base  # noqa: E402


def _qwen2_parameters(c) -> int:
    """Parameters of a Qwen2ForCausalLM with tied embeddings, counted from the shape."""
    head_dim = c.hidden_size // c.num_attention_heads
    kv = c.num_key_value_heads * head_dim
    attention = (c.hidden_size + 1) * c.hidden_size + 2 * (c.hidden_size + 1) * kv + c.hidden_size**2
    mlp = 3 * c.hidden_size * c.intermediate_size
    layer = attention + mlp + 2 * c.hidden_size
    return c.vocab_size * c.hidden_size + c.num_hidden_layers * layer + c.hidden_size


def test_qwen25_3b_shape_and_parameter_count():
    config = qwen_config()
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (2048, 36, 16)
    assert (config.num_key_value_heads, config.intermediate_size, config.vocab_size) == (2, 11008, 151936)
    assert config.tie_word_embeddings is True
    assert config.rope_parameters["rope_theta"] == 1e6
    with torch.device("meta"):
        model = transformers.Qwen2ForCausalLM(config)
    total = sum(p.numel() for p in model.parameters())
    assert total == _qwen2_parameters(config)
    # the model card: 3.09 B parameters, 2.77 B without the (tied) embedding
    assert round(total / 1e9, 2) == 3.09
    assert round((total - config.vocab_size * config.hidden_size) / 1e9, 2) == 2.77
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_qwen_config_overrides_and_unknown_field():
    assert qwen_config(num_hidden_layers=2).num_hidden_layers == 2
    assert QWEN25_3B["num_hidden_layers"] == 36  # the spec itself is not changed
    tiny = tiny_qwen_config(hidden_size=32, num_attention_heads=2)
    assert (tiny.hidden_size, tiny.num_attention_heads, tiny.vocab_size) == (32, 2, 256)
    with pytest.raises(InvalidInput) as info:
        tiny_qwen_config(hidden_sise=32)
    assert info.value.field == "hidden_sise"


def test_load_backbone_from_a_local_folder_gives_the_same_model(tmp_path):
    base = tiny_base(3)
    base.save_pretrained(tmp_path / "tiny")
    loaded = load_backbone(tmp_path / "tiny", quantize="none").eval()
    ids = random_ids(2, 9)
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, base(input_ids=ids).logits)
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight


def test_load_backbone_path_without_config(tmp_path):
    with pytest.raises(InvalidInput) as info:
        load_backbone(tmp_path, quantize="none")
    assert info.value.field == "path" and str(tmp_path) in str(info.value)
    with pytest.raises(InvalidInput) as info:
        load_backbone(tmp_path / "missing", quantize="none")
    assert info.value.field == "path"


def test_load_backbone_refuses_other_models_and_modes(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(InvalidInput) as info:
        load_backbone(tmp_path, quantize="none")
    assert info.value.field == "path" and "llama" in str(info.value)
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(InvalidInput, match="JSON object"):
        load_backbone(tmp_path, quantize="none")
    tiny_base().save_pretrained(tmp_path / "tiny")
    with pytest.raises(InvalidInput) as info:
        load_backbone(tmp_path / "tiny", quantize="int8")
    assert info.value.field == "quantize"


def test_nf4_without_bitsandbytes_says_so(tmp_path, monkeypatch):
    real = importlib.util.find_spec

    def pretend_missing(name, *args, **kwargs):
        return None if name == "bitsandbytes" else real(name, *args, **kwargs)

    tiny_base().save_pretrained(tmp_path)
    monkeypatch.setattr(backbone_module.importlib.util, "find_spec", pretend_missing)
    with pytest.raises(ImportError, match="needs bitsandbytes"):
        load_backbone(tmp_path, quantize="nf4")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_nf4_without_cuda_needs_a_recent_bitsandbytes(monkeypatch):
    import importlib.metadata

    real = importlib.util.find_spec

    def pretend_installed(name, *args, **kwargs):
        return object() if name == "bitsandbytes" else real(name, *args, **kwargs)

    monkeypatch.setattr(backbone_module.importlib.util, "find_spec", pretend_installed)
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.45.5")
    with pytest.raises(ImportError, match=r"bitsandbytes >= 0\.50 \(found 0\.45\.5\)"):
        nf4_quantization_config()


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="needs bitsandbytes")
def test_nf4_config_is_qlora():
    config = nf4_quantization_config()
    assert config.load_in_4bit and config.bnb_4bit_quant_type == "nf4"
    assert config.bnb_4bit_compute_dtype == torch.bfloat16 and config.bnb_4bit_use_double_quant
