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
