"""Checkpoints round-trip the LoRA weights, the stack (neuromodulator state included) and the projections."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("safetensors")

from t4dm.errors import InvalidInput  # noqa: E402
from t4dm.qwen import (  # noqa: E402
    checkpoint_memory,
    load_backbone,
    load_checkpoint,
    save_checkpoint,
    tiny_qwen_config,
)
from t4dm.storage import T4DX  # noqa: E402
from tests.qwen.helpers import random_ids, tiny_base, tiny_unified  # noqa: E402


def _trained(seed: int, **kwargs):
    """A model whose every saved tensor is away from its initial value (as after training)."""
    model = tiny_unified(seed, lora=True, up_std=0.3, **kwargs)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    model.stack.bus.set("acetylcholine", 0.8)
    model.stack.bus.set("serotonin", 0.3, block=1)
    model.stack.bus.observe(reward=1.0)
    return model


@pytest.mark.parametrize("memory_dim", [None, 16], ids=["no-memory", "memory"])
def test_checkpoint_round_trip_gives_identical_logits(tmp_path, memory_dim):
    tiny_base(11).save_pretrained(tmp_path / "base")
    model = _trained(11, base=load_backbone(tmp_path / "base", quantize="none").eval(), memory_dim=memory_dim)
    ids = random_ids(2, 11, seed=11)
    with torch.no_grad():
        expected = model(ids).logits
    save_checkpoint(model, tmp_path / "ckpt")
    spec = json.loads((tmp_path / "ckpt" / "unified.json").read_text())
    assert spec["lora"]["r"] == 16 and spec["model"]["memory_dim"] == memory_dim

    fresh_base = load_backbone(tmp_path / "base", quantize="none").eval()
    with torch.no_grad():
        assert not torch.equal(fresh_base(input_ids=ids).logits, expected)  # the checkpoint has to matter
    loaded = load_checkpoint(tmp_path / "ckpt", fresh_base).eval()
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, expected)
    assert torch.equal(loaded.stack.bus.levels, model.stack.bus.levels)
    assert torch.equal(loaded.stack.bus.expected_reward, model.stack.bus.expected_reward)
    saved = {k: v for k, v in model.state_dict().items() if not k.startswith("backbone.") or ".lora_" in k}
    reloaded = loaded.state_dict()
    for key, value in saved.items():
        assert torch.equal(reloaded[key], value), key
    assert loaded.trainable_parameters() == model.trainable_parameters()


def test_checkpoint_bad_path_and_wrong_backbone(tmp_path):
    with pytest.raises(InvalidInput) as info:
        load_checkpoint(tmp_path, tiny_base())
    assert info.value.field == "path"
    save_checkpoint(_trained(12), tmp_path / "ckpt")
    from transformers import Qwen2ForCausalLM

    wider = Qwen2ForCausalLM(tiny_qwen_config(hidden_size=96, num_attention_heads=4)).eval()
    ids = random_ids(1, 6)
    with torch.no_grad():
        before = wider(input_ids=ids).logits
    keys = set(wider.state_dict())
    with pytest.raises(InvalidInput) as info:
        load_checkpoint(tmp_path / "ckpt", wider)
    assert info.value.field == "backbone"
    # the backbone is left as it was: no hook, no adapters, same weights and flags
    assert all(not layer._forward_hooks for layer in wider.model.layers)
    assert set(wider.state_dict()) == keys and all(p.requires_grad for p in wider.parameters())
    with torch.no_grad():
        assert torch.equal(wider(input_ids=ids).logits, before)
    with pytest.raises(InvalidInput) as info:
        save_checkpoint(tiny_base(), tmp_path / "other")
    assert info.value.field == "model"


def test_release_gives_the_backbone_back():
    base = tiny_base(13)
    ids = random_ids(1, 6)
    with torch.no_grad():
        before = base(input_ids=ids).logits
    model = tiny_unified(13, base=base, lora=True, up_std=0.3)
    with torch.no_grad():
        assert not torch.equal(base(input_ids=ids).logits, before)  # hook and adapters are in
    released = model.release()
    assert released is base and all(p.requires_grad for p in base.parameters())
    assert not any(".lora_" in k for k in base.state_dict())
    with torch.no_grad():
        assert torch.equal(base(input_ids=ids).logits, before)


def test_checkpoint_holds_a_snapshot_of_the_memory_it_ran_with(tmp_path):
    model = _trained(12, memory_dim=16)
    with pytest.raises(InvalidInput) as info:  # no memory attached: no snapshot
        save_checkpoint(model, tmp_path / "bare")
        checkpoint_memory(tmp_path / "bare")
    assert info.value.field == "path"
    assert json.loads((tmp_path / "bare" / "unified.json").read_text())["memory"] is None
    with T4DX.open(tmp_path / "store", dim=16, durability="none") as store:
        model.attach_memory(store, k=2)
        [first] = model.remember(random_ids(1, 8, seed=12))
        save_checkpoint(model, tmp_path / "ckpt")
        [second] = model.remember(random_ids(1, 8, seed=13))  # after the checkpoint: not in its snapshot
        assert first.id and second.id and len(store) == 2
        prompt = random_ids(1, 8, seed=12)
        with torch.no_grad():
            context = model(prompt).context
    spec = json.loads((tmp_path / "ckpt" / "unified.json").read_text())
    assert spec["memory"]["snapshot"] == "memory" and spec["memory"]["k"] == 2 and spec["memory"]["dim"] == 16
    with checkpoint_memory(tmp_path / "ckpt") as snapshot:
        assert len(snapshot) == 1 and snapshot.get(second.id) is None
        assert (snapshot.get(first.id).vector == first.vector).all()
        model.attach_memory(snapshot, k=2)
        with torch.no_grad():
            assert not torch.equal(model(prompt).context, context)  # the second episode is not there
    with T4DX.open(tmp_path / "store") as store:
        model.attach_memory(store, k=2)
        model.remember(random_ids(1, 8, seed=14))
        save_checkpoint(model, tmp_path / "ckpt")  # a newer snapshot replaces the older one
    with checkpoint_memory(tmp_path / "ckpt") as snapshot:
        assert len(snapshot) == 3
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "memory",
        "unified.json",
        "unified.safetensors",
    ]
