"""Generation with the KV cache and the stack's stream state equals recomputing the whole sequence."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from tests.qwen.helpers import STACK, left_padded, random_ids, tiny_unified  # noqa: E402


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("batch,prompt,new", [(1, 1, 6), (2, 9, 12), (1, 17, 8)], ids=lambda v: str(v))
def test_cached_generation_equals_recomputing(batch, prompt, new):
    model = tiny_unified(6, lora=True, up_std=0.3)
    ids = random_ids(batch, prompt, seed=prompt)
    cached = model.generate(ids, new, use_cache=True)
    full = model.generate(ids, new, use_cache=False)
    assert cached.sequences.shape == (batch, prompt + new)
    assert torch.equal(cached.sequences[:, :prompt], ids)
    assert torch.equal(cached.sequences, full.sequences)
    assert cached.scores.shape == full.scores.shape == (batch, new, 256)
    assert _rel(cached.scores, full.scores) < 1e-5
    # the stack matters here: without it the model would choose other tokens or other scores
    plain = tiny_unified(6, lora=True)
    base = plain.generate(ids, new, use_cache=True)
    assert _rel(base.scores, cached.scores) > 1e-3


def test_generation_is_greedy_over_the_model_logits():
    model = tiny_unified(7, up_std=0.3)
    ids = random_ids(2, 5, seed=7)
    out = model.generate(ids, 4, use_cache=True)
    for step in range(4):
        with torch.no_grad():
            logits = model(out.sequences[:, : 5 + step]).logits[:, -1]
        torch.testing.assert_close(out.scores[:, step], logits, rtol=1e-5, atol=1e-5)
        assert torch.equal(out.sequences[:, 5 + step], logits.argmax(-1))


def test_eos_stops_a_row_and_generation():
    model = tiny_unified(8, up_std=0.3)
    ids = random_ids(2, 6, seed=8)
    free = model.generate(ids, 6)
    eos = int(free.sequences[0, 7])  # row 0's second new token
    out = model.generate(ids, 6, eos_token_id=eos)
    row0 = out.sequences[0, 6:].tolist()
    assert row0[:2] == free.sequences[0, 6:8].tolist() and set(row0[1:]) == {eos}
    if eos not in free.sequences[1, 6:].tolist():
        assert torch.equal(out.sequences[1], free.sequences[1])


def test_stream_in_chunks_equals_whole_sequence():
    model = tiny_unified(9, lora=True, up_std=0.3)
    ids = random_ids(2, 15, seed=9)
    context = torch.randn(2, STACK["d_stack"])
    with torch.no_grad():
        whole = model(ids, context=context).logits
        pieces, cache, state = [], None, None
        for start, stop in ((0, 4), (4, 5), (5, 12), (12, 15)):
            out = model(
                ids[:, start:stop],
                cache=cache,
                use_cache=True,
                stack_state=state,
                return_stack_state=True,
                context=context,
            )
            pieces.append(out.logits)
            cache, state = out.cache, out.stack_state
    assert int(state.clock) == 15
    assert _rel(torch.cat(pieces, dim=1), whole) < 1e-5


def test_generate_restores_training_mode():
    model = tiny_unified(0).train()
    model.generate(random_ids(1, 3), 2)
    assert model.training


@pytest.mark.parametrize("use_cache", [True, False], ids=["cached", "recomputed"])
def test_left_padded_prompts_generate_what_each_generates_alone(use_cache):
    model = tiny_unified(10, lora=True, up_std=0.3)
    lengths = [9, 3, 6, 3]
    rows = [random_ids(1, n, seed=100 + b) for b, n in enumerate(lengths)]
    ids, mask = left_padded(rows)
    out = model.generate(ids, 8, attention_mask=mask, use_cache=use_cache)
    assert out.sequences.shape == (4, 9 + 8) and torch.equal(out.sequences[:, :9], ids)
    for b, (row, n) in enumerate(zip(rows, lengths, strict=True)):
        alone = model.generate(row, 8, use_cache=use_cache)
        assert torch.equal(out.sequences[b, 9:], alone.sequences[0, n:]), b
        assert _rel(out.scores[b], alone.scores[0]) < 1e-5, b
    # a mask of ones is no padding; right padding cannot be continued
    assert torch.equal(
        model.generate(ids, 3, attention_mask=torch.ones_like(ids)).sequences,
        model.generate(ids, 3).sequences,
    )
    with pytest.raises(NotImplementedError, match="left"):
        model.generate(ids, 3, attention_mask=torch.flip(mask, dims=[1]))


# ---------------------------------------------------------------------------------------------- sampling
def test_sampling_is_reproducible_and_stays_in_its_candidates():
    from t4dm.qwen import sample_token

    model = tiny_unified(40, lora=True, up_std=0.3)
    ids = random_ids(2, 6, seed=40)

    def sampled(seed, **kwargs):
        return model.generate(
            ids, 10, do_sample=True, generator=torch.Generator().manual_seed(seed), **kwargs
        )

    a, b, c = sampled(1), sampled(1), sampled(2)
    assert torch.equal(a.sequences, b.sequences)  # the same seed, the same tokens
    assert not torch.equal(a.sequences, c.sequences)
    greedy = model.generate(ids, 10)
    assert not torch.equal(a.sequences, greedy.sequences)  # a random model's logits are flat: it samples
    # top_k = 1 and a tiny nucleus are greedy
    assert torch.equal(sampled(3, top_k=1).sequences, greedy.sequences)
    assert torch.equal(sampled(4, top_p=1e-6).sequences, greedy.sequences)
    # top_k = 5: every token is among its step's five largest logits
    out = sampled(5, top_k=5, temperature=2.0)
    new = out.sequences[:, ids.shape[1] :]
    top5 = out.scores.topk(5, dim=-1).indices
    assert bool((top5 == new[..., None]).any(-1).all())
    # cached and recomputed generation draw the same tokens from the same seed
    full = model.generate(
        ids, 10, use_cache=False, do_sample=True, generator=torch.Generator().manual_seed(1)
    )
    assert torch.equal(full.sequences, a.sequences)
    # the nucleus: the smallest most-likely set reaching top_p
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    seen = {
        int(sample_token(logits, top_p=0.75, generator=torch.Generator().manual_seed(s))) for s in range(200)
    }
    assert seen == {0, 1}
    seen = {
        int(sample_token(logits, top_p=0.81, generator=torch.Generator().manual_seed(s))) for s in range(200)
    }
    assert seen == {0, 1, 2}


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"do_sample": True, "temperature": 0.0}, "temperature"),
        ({"do_sample": True, "temperature": float("nan")}, "temperature"),
        ({"do_sample": True, "top_k": 0}, "top_k"),
        ({"do_sample": True, "top_p": 0.0}, "top_p"),
        ({"do_sample": True, "top_p": 1.5}, "top_p"),
        ({"do_sample": True, "generator": 7}, "generator"),
        ({"do_sample": "yes"}, "do_sample"),
        ({"top_k": 5}, "top_k"),  # a sampling option without do_sample
        ({"temperature": 0.7}, "temperature"),
    ],
)
def test_bad_sampling_options_name_the_field(kwargs, field):
    from t4dm.errors import InvalidInput

    model = tiny_unified(41)
    with pytest.raises(InvalidInput) as info:
        model.generate(random_ids(1, 4), 2, **kwargs)
    assert info.value.field == field


def test_decoding_through_the_stack_decoder_gives_the_same_tokens_and_scores():
    """stack_graph=True: the decoding steps run the stack in a StackDecoder's fixed buffers (on CUDA one graph
    replay; here eagerly): bit for bit what plain stack calls give, left-padded rows included."""
    from unittest import mock

    from t4dm.errors import InvalidInput
    from t4dm.spiking import StackDecoder

    model = tiny_unified(7, lora=True, up_std=0.3)
    ids = random_ids(2, 9, seed=7)
    plain = model.generate(ids, 10, stack_graph=False)
    with mock.patch.object(
        StackDecoder, "__call__", autospec=True, side_effect=StackDecoder.__call__
    ) as calls:
        decoded = model.generate(ids, 10, stack_graph=True)
    assert calls.call_count == 9  # every new token but the last is run through the decoder
    assert torch.equal(decoded.sequences, plain.sequences) and torch.equal(decoded.scores, plain.scores)
    assert torch.equal(model.generate(ids, 10).scores, plain.scores)  # the default off CUDA: plain calls
    # the decoder is kept for the next generation of these shapes (a CUDA graph is captured once) ...
    [kept] = model._decoders.values()
    again = model.generate(ids, 10, stack_graph=True)
    assert list(model._decoders.values()) == [kept] and torch.equal(again.scores, plain.scores)
    # ... unless the stack's weights moved (a new tensor: the graph would read the old one)
    weight = model.stack.blocks[0].out_proj.weight
    model.stack.blocks[0].out_proj.weight = torch.nn.Parameter(weight.detach().clone())
    moved = model.generate(ids, 10, stack_graph=True)
    assert list(model._decoders.values()) != [kept] and torch.equal(moved.scores, plain.scores)
    rows = [random_ids(1, n, seed=70 + n) for n in (6, 3)]
    padded, mask = left_padded(rows)
    a = model.generate(padded, 6, attention_mask=mask, stack_graph=True)
    b = model.generate(padded, 6, attention_mask=mask, stack_graph=False)
    assert torch.equal(a.sequences, b.sequences) and torch.equal(a.scores, b.scores)
    with pytest.raises(InvalidInput) as info:
        model.generate(ids, 2, stack_graph="yes")
    assert info.value.field == "stack_graph"
