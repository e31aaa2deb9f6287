"""The unified model's memory keys as a memory-SDK embedder: what an agent adds through ``Memory`` is stored
as the model's own episode vectors, and the model retrieves it while it generates."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from t4dm.errors import InvalidInput  # noqa: E402
from t4dm.memory import Memory  # noqa: E402
from t4dm.memory.embedder import Embedder  # noqa: E402
from t4dm.qwen import ModelEmbedder, encode_text  # noqa: E402
from tests.qwen.helpers import tiny_unified  # noqa: E402

DIM = 16


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _key_alone(model, text: str) -> np.ndarray:
    """The memory key ``remember`` would write for ``text`` (its byte ids), normalised."""
    ids = torch.tensor([list(text.encode())])
    with torch.no_grad():
        out = model(ids, read_memory=False)
    return _unit(model.memory_key(out.layer_mean)[0])


def test_texts_embed_as_the_models_own_memory_keys():
    model = tiny_unified(30, memory_dim=DIM).train()
    embedder = ModelEmbedder(model, "bytes", batch_size=2)
    assert isinstance(embedder, Embedder) and embedder.dim == DIM and "layer=2" in embedder.name
    texts = ["Alice moved to Lisbon in May.", "ok", "The cat sat on the mat, then it left for good."]
    vectors = embedder.embed(texts)  # two batches, the first right-padded
    assert vectors.shape == (3, DIM) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-6)
    for text, vector in zip(texts, vectors, strict=True):
        np.testing.assert_allclose(vector, _key_alone(model, text), rtol=1e-4, atol=1e-5)
    assert model.training  # the mode it had
    assert not np.allclose(vectors[0], vectors[2], atol=1e-2)  # different texts, different keys
    assert embedder.embed([]).shape == (0, DIM)
    short = ModelEmbedder(model, "bytes", max_tokens=5).embed([texts[0]])[0]
    np.testing.assert_allclose(short, _key_alone(model, texts[0][:5]), rtol=1e-4, atol=1e-5)


def test_a_memory_added_through_the_sdk_is_what_the_model_retrieves(tmp_path):
    model = tiny_unified(31, lora=True, up_std=0.3, memory_dim=DIM)
    prompt = torch.tensor([list(b"Where does Alice live?")])
    with Memory(tmp_path / "mem", embedder=ModelEmbedder(model, "bytes"), durability="none") as memory:
        model.attach_memory(memory.db, k=1)
        empty = model.generate(prompt, 8)
        assert empty.context is None
        [added] = memory.add("Alice lives in Lisbon.", user_id="alice")
        assert added.event == "ADD"
        stored = memory.db.get(added.id)
        np.testing.assert_allclose(
            stored.vector, _key_alone(model, "Alice lives in Lisbon."), rtol=1e-4, atol=1e-5
        )
        recalled = model.generate(prompt, 8)
        assert recalled.context is not None
        with torch.no_grad():  # the context is the SDK memory's vector through memory_context
            expected = model.memory_context(
                torch.from_numpy(np.asarray(stored.vector, dtype=np.float32))[None]
            )
        torch.testing.assert_close(recalled.context, expected)
        assert not torch.equal(recalled.scores, empty.scores)
        # and the SDK's own search finds it by the same keys
        assert memory.search("Where does Alice live?", user_id="alice")[0].id == added.id


def test_a_scoped_model_reads_and_writes_one_users_memories(tmp_path):
    model = tiny_unified(34, up_std=0.3, memory_dim=DIM)
    prompt = torch.tensor([list(b"Where do I live?")])
    with Memory(tmp_path / "mem", embedder=ModelEmbedder(model, "bytes"), durability="none") as memory:
        memory.add("Bob lives in Porto.", user_id="bob")
        model.attach_memory(memory.db, k=1, where={"user_id": "alice"})
        assert model.generate(prompt, 4).context is None  # bob's memory is outside the scope
        [alice] = memory.add("Alice lives in Lisbon.", user_id="alice")
        vector = np.asarray(memory.db.get(alice.id).vector, dtype=np.float32)
        with torch.no_grad():
            expected = model.memory_context(torch.from_numpy(vector)[None])
        torch.testing.assert_close(model.generate(prompt, 4).context, expected)
        [write] = model.remember(prompt)  # a random model's loss passes the default gate
        assert write.id is not None and memory.db.get(write.id).fields["user_id"] == "alice"
    for where in ({}, {"": "x"}, ["user_id"]):
        with pytest.raises(InvalidInput) as info:
            model.attach_memory(memory.db, where=where)
        assert info.value.field == "where"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"model": "not a model"}, "model"),
        ({"tokenizer": 42}, "tokenizer"),
        ({"batch_size": 0}, "batch_size"),
        ({"max_tokens": True}, "max_tokens"),
        ({"pad_id": -1}, "pad_id"),
    ],
)
def test_bad_construction_names_the_field(kwargs, field):
    args = {"model": tiny_unified(32, memory_dim=DIM), "tokenizer": "bytes", **kwargs}
    with pytest.raises(InvalidInput) as info:
        ModelEmbedder(args.pop("model"), args.pop("tokenizer"), **args)
    assert info.value.field == field


def test_bad_texts_and_a_model_without_memory():
    with pytest.raises(InvalidInput) as info:
        ModelEmbedder(tiny_unified(33), "bytes")
    assert info.value.field == "model"
    embedder = ModelEmbedder(tiny_unified(33, memory_dim=DIM), "bytes")
    with pytest.raises(InvalidInput) as info:
        embedder.embed(["fine", ""])
    assert info.value.field == "texts[1]"
    with pytest.raises(InvalidInput) as info:
        embedder.embed(["fine", 3])
    assert info.value.field == "texts[1]"


def test_encode_text_takes_bytes_an_encoder_or_a_callable():
    class Tok:
        def encode(self, text):
            return [len(text), 7]

    assert encode_text("hé", "bytes") == [104, 195, 169]
    assert encode_text("abc", Tok()) == [3, 7]
    assert encode_text("abc", lambda t: [ord(c) for c in t]) == [97, 98, 99]
    with pytest.raises(InvalidInput):
        encode_text("abc", "words")
