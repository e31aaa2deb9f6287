"""The stack in the residual stream: zero-init equivalence, the hook, LoRA, gradients, bad input."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from t4dm.errors import InvalidInput  # noqa: E402
from t4dm.qwen import UnifiedModel, decoder_layers, qwen_config  # noqa: E402
from tests.qwen.helpers import (  # noqa: E402
    LAYER,
    STACK,
    VOCAB,
    left_padded,
    random_ids,
    tiny_base,
    tiny_unified,
)


def _base_logits(model: UnifiedModel, ids: torch.Tensor) -> torch.Tensor:
    """The backbone's logits with the hook taken out (the model keeps working afterwards)."""
    model._hook.remove()
    try:
        with torch.no_grad():
            return model.backbone(input_ids=ids).logits
    finally:
        layer = decoder_layers(model.backbone)[model.layer]
        model._hook = layer.register_forward_hook(model._stack_hook, with_kwargs=True)


@pytest.mark.parametrize("layer", [0, LAYER, 3], ids=lambda layer: f"layer{layer}")
@pytest.mark.parametrize("lora", [False, True], ids=["plain", "lora"])
def test_zero_up_projection_gives_the_base_logits_exactly(layer, lora):
    base = tiny_base(1)
    ids = random_ids(2, 13, seed=layer)
    with torch.no_grad():
        reference = base(input_ids=ids).logits.clone()
    model = tiny_unified(1, base=tiny_base(1), layer=layer, lora=lora)
    with torch.no_grad():
        out = model(ids)
    assert torch.equal(out.logits, reference)
    # the stack did run: it has a state and signals, and the hook saw the layer
    assert len(out.signals) == STACK["n_blocks"] and out.layer_mean.shape == (2, 64)
    assert out.signals[0].firing_rate.shape == (2, 13)


def test_nonzero_up_projection_changes_the_logits_through_the_hook():
    model = tiny_unified(2, up_std=0.3, lora=True)
    ids = random_ids(1, 10)
    with torch.no_grad():
        logits = model(ids).logits
        direct = model.backbone(input_ids=ids).logits  # the hook also runs on a direct backbone call
    base = _base_logits(model, ids)
    assert not torch.allclose(logits, base, atol=1e-3)
    assert torch.equal(direct, logits)


def test_backbone_keys_are_unchanged_by_the_stack():
    plain = set(tiny_base(0).state_dict())
    model = tiny_unified(0)
    assert {k.removeprefix("backbone.") for k in model.state_dict() if k.startswith("backbone.")} == plain
    assert any(k.startswith("stack.bus.levels") for k in model.state_dict())


@pytest.mark.parametrize("layer", [-1, 4, 17, True, 2.0], ids=["neg", "n", "17", "bool", "float"])
def test_layer_outside_the_model(layer):
    with pytest.raises(InvalidInput) as info:
        UnifiedModel(tiny_base(), layer=layer, **STACK)
    assert info.value.field == "layer" and info.value.value is layer


def test_bad_input_ids_and_padding():
    model = tiny_unified(0)
    for bad in (
        torch.zeros(2, 3),
        torch.zeros(5, dtype=torch.long),
        [[1, 2]],
        torch.zeros(1, 0, dtype=torch.long),
    ):
        with pytest.raises(InvalidInput) as info:
            model(bad)
        assert info.value.field == "input_ids"
    ids = random_ids(2, 5)
    mask = torch.ones(2, 5, dtype=torch.long)
    model(ids, attention_mask=mask)
    mask[0, 0] = 0  # left padding
    model(ids, attention_mask=mask)
    mask[0] = torch.tensor([1, 1, 0, 1, 1])  # a gap
    with pytest.raises(NotImplementedError, match="gaps"):
        model(ids, attention_mask=mask)
    for bad in (torch.ones(2, 4, dtype=torch.long), torch.ones(2, 5), torch.full((2, 5), 2), [[1] * 5] * 2):
        with pytest.raises(InvalidInput) as info:
            model(ids, attention_mask=bad)
        assert info.value.field == "attention_mask"
    empty_row = torch.ones(2, 5, dtype=torch.long)
    empty_row[1] = 0
    with pytest.raises(InvalidInput, match="at least one token"):
        model(ids, attention_mask=empty_row)
    with pytest.raises(InvalidInput) as info:
        model.generate(ids, 0)
    assert info.value.field == "max_new_tokens"


def test_lora_keeps_stack_and_projections_trainable_and_freezes_the_rest():
    model = tiny_unified(0, memory_dim=16)
    model.add_lora()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    for name, p in model.named_parameters():
        if name.startswith(("stack.", "down.", "up.", "memory_context.")) or ".lora_" in name:
            assert p.requires_grad, name
        else:  # the base weights and the fixed memory-query projection
            assert not p.requires_grad, name
    lora = [n for n in trainable if ".lora_" in n]
    # A and B on q_proj and v_proj in each of the 4 layers
    assert len(lora) == 4 * 2 * 2 and all(("q_proj" in n) or ("v_proj" in n) for n in lora)
    with pytest.raises(InvalidInput):
        model.add_lora()


def test_trainable_parameter_counts_at_the_real_shape():
    with torch.device("meta"):
        from transformers import Qwen2ForCausalLM

        base = Qwen2ForCausalLM(qwen_config())
    model = UnifiedModel(base, memory_dim=256)
    model.add_lora()
    counts = model.trainable_parameters()
    hidden, kv, r, layers = 2048, 2 * 128, 16, 36
    assert counts["lora"] == layers * r * ((hidden + hidden) + (hidden + kv))  # q_proj, v_proj: A and B
    assert counts["projections"] == 2 * hidden * 1024 + 256 * 1024  # down, up, memory context
    assert counts["stack"] == sum(p.numel() for p in model.stack.parameters())
    assert model.stack.config.d_model == 1024 and model.stack.config.n_heads == 16 and model.layer == 17


def _next_token_loss(model: UnifiedModel, ids: torch.Tensor, context=None) -> torch.Tensor:
    out = model(ids, labels=ids, context=context)
    manual = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, VOCAB), ids[:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss, manual)
    return out.loss


def test_gradients_reach_lora_projections_and_stack_and_nothing_frozen():
    model = tiny_unified(4, lora=True, up_std=0.1).train()
    # Away from their zero initialisation (as after some training), so that every trainable tensor is on
    # a path with a non-zero gradient: LoRA A's gradient is B-weighted, and NE = 0.5 zeroes d/dβ_NE.
    with torch.no_grad():
        for name, p in model.backbone.named_parameters():
            if ".lora_B." in name:
                p.normal_(std=0.05)
    model.stack.bus.set("norepinephrine", 0.7)
    ids = random_ids(2, 12, seed=4)
    context = torch.randn(2, STACK["d_stack"])  # a top-down context reaches the apical prediction weights
    _next_token_loss(model, ids, context).backward()
    checked = 0
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, name
            assert p.grad.abs().sum() > 0, name
            assert torch.isfinite(p.grad).all(), name
            checked += 1
        else:
            assert p.grad is None, name
    groups = ("lora_A", "lora_B", "stack.", "down.", "up.")
    assert all(any(g in n for n, p in model.named_parameters() if p.grad is not None) for g in groups)
    assert checked == sum(1 for p in model.parameters() if p.requires_grad)


def test_at_initialisation_only_the_up_projection_and_lora_b_learn():
    """With ``up`` at zero nothing flows back into the stack yet: the first step moves ``up`` (and LoRA's B),
    after which the stack gets gradients."""
    model = tiny_unified(5, lora=True).train()
    ids = random_ids(1, 10, seed=5)
    _next_token_loss(model, ids).backward()
    assert model.up.weight.grad.abs().sum() > 0
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.stack.parameters())
    assert model.down.weight.grad.abs().sum() == 0
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    optimizer.step()
    optimizer.zero_grad()
    _next_token_loss(model, ids).backward()
    assert model.down.weight.grad.abs().sum() > 0
    assert model.stack.blocks[0].out_proj.weight.grad.abs().sum() > 0


def test_backbone_decoding_outside_the_model_is_refused():
    model = tiny_unified(13, up_std=0.3)
    ids = random_ids(1, 5)
    with pytest.raises(NotImplementedError, match="UnifiedModel"):
        model.backbone.generate(ids, max_new_tokens=3, do_sample=False)
    with torch.no_grad():
        logits = model(ids).logits  # the model is still usable
    assert logits.shape == (1, 5, VOCAB)


def test_gradient_checkpointing_is_refused_in_training():
    model = tiny_unified(14, up_std=0.3).train()
    base = model.base_model
    # transformers 5.25 names it activation checkpointing; 5.17 (the GPU image's) gradient checkpointing
    prefix = "activation" if hasattr(base, "activation_checkpointing_enable") else "gradient"
    getattr(base, f"{prefix}_checkpointing_enable")()
    with pytest.raises(NotImplementedError, match="checkpointing"):
        model(random_ids(1, 4))
    getattr(base, f"{prefix}_checkpointing_disable")()
    model(random_ids(1, 4))


def test_bfloat16_backbone_with_a_float32_stack():
    base = tiny_base(15).to(torch.bfloat16)
    ids = random_ids(2, 7, seed=15)
    with torch.no_grad():
        reference = base(input_ids=ids).logits.clone()
    model = tiny_unified(15, base=base)
    with torch.no_grad():
        out = model(ids)
    assert out.logits.dtype == torch.bfloat16 and torch.equal(out.logits, reference)
    torch.nn.init.normal_(model.up.weight, std=0.3)
    cached, full = model.generate(ids, 5), model.generate(ids, 5, use_cache=False)
    assert torch.equal(cached.sequences, full.sequences)


def test_training_phase_is_checked():
    from t4dm.qwen import train

    with pytest.raises(InvalidInput) as info:
        train(None, data=[], phase=3)
    assert info.value.field == "phase"


def test_right_padded_rows_get_what_they_get_alone():
    model = tiny_unified(16, lora=True, up_std=0.3, memory_dim=16).train()
    lengths = [7, 4, 1]
    rows = [random_ids(1, n, seed=160 + n) for n in lengths]
    ids = torch.zeros(3, 7, dtype=torch.long)
    mask = torch.zeros(3, 7, dtype=torch.long)
    for b, (row, n) in enumerate(zip(rows, lengths, strict=True)):
        ids[b, :n], mask[b, :n] = row[0], 1
        ids[b, n:] = 5  # padding tokens: they must change nothing
    torch.manual_seed(0)
    with torch.no_grad():
        model.eval()
        padded = model(ids, attention_mask=mask, labels=ids)
        for b, (row, n) in enumerate(zip(rows, lengths, strict=True)):
            alone = model(row, labels=row)
            torch.testing.assert_close(padded.logits[b, :n], alone.logits[0], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(padded.layer_mean[b], alone.layer_mean[0], rtol=1e-5, atol=1e-5)
    # the loss is over real next tokens only: 6 + 3 + 0 targets
    logits = torch.cat([padded.logits[b, : n - 1] for b, n in enumerate(lengths)])
    targets = torch.cat([ids[b, 1:n] for b, n in enumerate(lengths)])
    torch.testing.assert_close(padded.loss, torch.nn.functional.cross_entropy(logits, targets))
    # gradients flow through a padded batch
    model.train()
    model(ids, attention_mask=mask, labels=ids).loss.backward()
    assert model.up.weight.grad is not None and float(model.up.weight.grad.abs().sum()) > 0
    # a padded batch cannot continue a stream
    with pytest.raises(NotImplementedError, match="stream"):
        model(ids, attention_mask=mask, use_cache=True)
    with pytest.raises(NotImplementedError, match="stream"):
        model(ids, attention_mask=mask, return_stack_state=True)


def test_left_padded_rows_get_what_they_get_alone():
    """Rows of lengths 7, 4, 1, 4 padded on the left (two of equal length share a stack call): logits, memory
    query, loss, the stream state (a clock per row) and gradients are each row's alone."""
    model = tiny_unified(17, lora=True, up_std=0.3, memory_dim=16).eval()
    lengths = [7, 4, 1, 4]
    rows = [random_ids(1, n, seed=170 + b) for b, n in enumerate(lengths)]
    ids, mask = left_padded(rows)
    positions = []  # what the rotary embedding is given: each row counts its own tokens from 0
    rotary = model.base_model.model.rotary_emb
    handle = rotary.register_forward_pre_hook(lambda module, args: positions.append(args[1].clone()))
    with torch.no_grad():
        padded = model(ids, attention_mask=mask, labels=ids, return_stack_state=True)
        handle.remove()
        assert padded.stack_state.clock.tolist() == lengths
        for b, n in enumerate(lengths):
            assert positions[0][b, 7 - n :].tolist() == list(range(n))
        for b, (row, n) in enumerate(zip(rows, lengths, strict=True)):
            alone = model(row, return_stack_state=True)
            torch.testing.assert_close(padded.logits[b, 7 - n :], alone.logits[0], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(padded.layer_mean[b], alone.layer_mean[0], rtol=1e-5, atol=1e-5)
            for got, want in zip(padded.stack_state.blocks, alone.stack_state.blocks, strict=True):
                for name in got._fields:
                    torch.testing.assert_close(
                        getattr(got, name)[b], getattr(want, name)[0], rtol=1e-5, atol=1e-5
                    )
            # padded positions hold zero signals
            assert float(padded.signals[0].firing_rate[b, : 7 - n].abs().sum()) == 0.0
    # the loss is over real tokens predicted from real tokens: 6 + 3 + 0 + 3 targets
    logits = torch.cat([padded.logits[b, 7 - n : 6] for b, n in enumerate(lengths)])
    targets = torch.cat([ids[b, 8 - n :] for b, n in enumerate(lengths)])
    torch.testing.assert_close(padded.loss, torch.nn.functional.cross_entropy(logits, targets))
    # gradients flow through the grouped stack calls: to the parameters an unpadded batch reaches (without a
    # context the apical prediction and the context norm get none)
    model.train()

    def reached() -> set[str]:
        names = {
            n for n, p in model.named_parameters() if p.grad is not None and float(p.grad.abs().sum()) > 0
        }
        model.zero_grad(set_to_none=True)
        return names

    model(ids, attention_mask=mask, labels=ids).loss.backward()
    with_padding = reached()
    model(ids[:1], labels=ids[:1]).loss.backward()
    assert with_padding == reached() and "up.weight" in with_padding
    assert any(name.startswith("stack.blocks.1.") for name in with_padding)


def test_padding_and_streams():
    model = tiny_unified(18, up_std=0.3)
    ids, mask = left_padded([random_ids(1, 5, seed=1), random_ids(1, 3, seed=2)])
    with torch.no_grad():
        first = model(ids, attention_mask=mask, use_cache=True, return_stack_state=True)
        nxt = torch.tensor([[7], [9]])
        grown = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], dim=1)
        # the mask of a continuing call covers the cached tokens too
        with pytest.raises(InvalidInput) as info:
            model(nxt, attention_mask=torch.ones(2, 1, dtype=torch.long), cache=first.cache)
        assert info.value.field == "attention_mask"
        # the new tokens of a stream must be real
        two = torch.tensor([[7, 8], [9, 9]])
        pad_after = torch.cat([mask, torch.tensor([[1, 1], [0, 1]])], dim=1)
        with pytest.raises(NotImplementedError, match="gaps"):  # a pad after cached tokens
            model(two, attention_mask=pad_after, cache=first.cache)
        with pytest.raises(NotImplementedError, match="inside a stream"):  # padding, continuing a stack state
            model(ids, attention_mask=mask, stack_state=first.stack_state)
        model(nxt, attention_mask=grown, cache=first.cache, stack_state=first.stack_state, use_cache=True)
        # right padding cannot start a stream
        right = torch.flip(mask, dims=[1])
        with pytest.raises(NotImplementedError, match="right-padded"):
            model(ids, attention_mask=right, use_cache=True)
        with pytest.raises(NotImplementedError, match="right-padded"):
            model(ids, attention_mask=right, return_stack_state=True)


def test_recording_a_left_padded_batch_gives_each_row_its_own_records():
    """The glass box of a left-padded generation: each row's records are its records alone at its positions,
    zeros at the padding; the oscillator's bias follows each row's clock."""
    model = tiny_unified(19, up_std=0.3)
    rows = [random_ids(1, 6, seed=1), random_ids(1, 2, seed=2), random_ids(1, 6, seed=3)]
    ids, mask = left_padded(rows)
    kinds = ("spikes", "firing_rate", "levels", "oscillator", "stack_delta_norm")
    with model.record(kinds) as box:
        model.generate(ids, 3, attention_mask=mask)
    assert box.get(0, "spikes").shape == (3, 6 + 2, STACK["d_stack"])  # prompt, then the 2 decoded inputs
    assert box.get(-1, "oscillator").shape == (3, 8)
    for b, row in enumerate(rows):
        n = row.shape[1]
        with model.record(kinds) as alone:
            model.generate(row, 3)
        for block in range(STACK["n_blocks"]):
            for kind in ("spikes", "firing_rate"):
                got, want = box.get(block, kind)[b], alone.get(block, kind)[0]
                torch.testing.assert_close(got[6 - n :], want, rtol=1e-5, atol=1e-6)
                assert float(got[: 6 - n].abs().sum()) == 0.0
            torch.testing.assert_close(box.get(block, "levels"), alone.get(block, "levels"))
        torch.testing.assert_close(box.get(-1, "oscillator")[b, 6 - n :], alone.get(-1, "oscillator"))
        torch.testing.assert_close(
            box.get_layer(LAYER, "stack_delta_norm")[b, 6 - n :], alone.get_layer(LAYER, "stack_delta_norm")[0],
            rtol=1e-5, atol=1e-6,
        )  # fmt: skip
