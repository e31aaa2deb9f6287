"""LoCoMo evaluation on a small conversation we write here (the real data is never copied in)."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from t4dm.eval.locomo import _score, load_locomo, normalise_evidence, parse_session_date, run_locomo_eval

from ..memory.conftest import bag_of_words

SAMPLE = {
    "sample_id": "conv-x",
    "conversation": {
        "speaker_a": "Ann",
        "speaker_b": "Ben",
        "session_1_date_time": "1:56 pm on 8 May, 2023",
        "session_1": [
            {"speaker": "Ann", "dia_id": "D1:1", "text": "I adopted a puppy named Rex last week"},
            {"speaker": "Ben", "dia_id": "D1:2", "text": "Congratulations, what breed is Rex?"},
            {"speaker": "Ann", "dia_id": "D1:3", "text": "A beagle", "blip_caption": "a small dog on grass"},
        ],
        "session_2_date_time": "10:04 am on 19 June, 2023",
        "session_2": [
            {"speaker": "Ben", "dia_id": "D2:1", "text": "I started learning the violin in June"},
            {"speaker": "Ann", "dia_id": "D2:2", "text": "Thanks!"},
            {"speaker": "Ann", "dia_id": "D2:3", "text": "Thanks!"},
        ],
    },
    "qa": [
        {
            "question": "What is the name of Ann's puppy?",
            "answer": "Rex",
            "evidence": ["D1:1"],
            "category": 4,
        },
        {
            "question": "When did Ben start the violin?",
            "answer": "June",
            "evidence": ["D2:01; D1:2"],
            "category": 2,
        },
        {"question": "What breed is the dog?", "evidence": ["D:1:3", "D9:9"], "category": 1},
        {"question": "Unanswerable?", "adversarial_answer": "x", "evidence": ["D1:1"], "category": 5},
        {"question": "No evidence", "answer": "y", "evidence": ["D"], "category": 3},
    ],
}


def test_parsing_and_normalisation(tmp_path):
    assert parse_session_date("1:56 pm on 8 May, 2023") == datetime(2023, 5, 8, 13, 56, tzinfo=timezone.utc)
    assert parse_session_date("sometime") is None
    assert normalise_evidence(["D8:6; D9:17", "D:11:26", "D30:05", "D"]) == [
        "D8:6",
        "D9:17",
        "D11:26",
        "D30:5",
    ]
    path = tmp_path / "data.json"
    path.write_text(json.dumps([SAMPLE]))
    turns, questions, counts = load_locomo(str(path))
    assert [t.dia_id for t in turns["conv-x"]] == ["D1:1", "D1:2", "D1:3", "D2:1", "D2:2", "D2:3"]
    assert turns["conv-x"][2].text == "A beagle [shares a photo of a small dog on grass]"
    assert [q.evidence for q in questions] == [("D1:1",), ("D2:1", "D1:2"), ("D1:3",)]
    assert counts["adversarial_skipped"] == 1 and counts["questions_without_evidence"] == 1
    assert counts["evidence_ids_unknown"] == 1 and counts["evidence_ids_rewritten"] == 3


def test_metrics():
    from t4dm.eval.locomo import Question

    q = Question("s", "q", 1, ("D1:1", "D2:4"))
    got = _score(["D3:1", "D1:1", "D1:2", "D2:4"], q, (1, 2, 4))
    assert got["recall@1"] == 0 and got["recall@2"] == 0.5 and got["recall@4"] == 1.0
    assert got["session_recall@2"] == 0.5 and got["session_recall@4"] == 1.0 and got["mrr"] == 0.5


def test_run_locomo_eval_end_to_end(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps([SAMPLE]))
    out = tmp_path / "out" / "locomo.json"
    report = run_locomo_eval(str(path), str(out), ks=(1, 5), embedder=bag_of_words, say=lambda _: None)
    assert json.loads(out.read_text())["results"].keys() == {"t4dm", "dense", "bm25"}
    # the two "Thanks!" turns of Ann are one memory standing for both
    assert report["counts"]["memories"] == 5 and report["counts"]["turns"] == 6
    for method in ("t4dm", "dense", "bm25"):
        r = report["results"][method]
        assert r["questions"] == 3 and set(r["by_category"]) == {"single-hop", "temporal", "multi-hop"}
        assert 0.0 <= r["recall@1"] <= r["recall@5"] <= 1.0
    assert report["results"]["bm25"]["by_category"]["single-hop"]["recall@1"] == 1.0  # "puppy" is rare
    with pytest.raises(ValueError, match="data"):
        run_locomo_eval(str(tmp_path / "missing.json"), say=lambda _: None)


TIED = {
    "sample_id": "conv-tie",
    "conversation": {
        "speaker_a": "Ann",
        "speaker_b": "Bea",
        "session_1_date_time": "1:56 pm on 8 May, 2023",
        "session_1": [  # the same words but one, the same length: BM25 scores them alike for "kayak"
            {"speaker": "Ann", "dia_id": "D1:1", "text": "kayak red"},
            {"speaker": "Bea", "dia_id": "D1:2", "text": "kayak blue"},
        ],
    },
    "qa": [{"question": "kayak", "answer": "red", "evidence": ["D1:1"], "category": 4}],
}


def test_the_same_seed_gives_the_same_figures(tmp_path):
    """Two memories tie under BM25; the tie is broken by id, so which comes first depends on the ids: over seeds
    it falls both ways, and with one seed the same way every run. The report names the seed."""
    path = tmp_path / "data.json"
    path.write_text(json.dumps([TIED]))

    def recall_at_1(seed):
        report = run_locomo_eval(str(path), ks=(1,), embedder=bag_of_words, say=lambda _: None, seed=seed)
        assert report["id_seed"] == seed
        return report["results"]["bm25"]["recall@1"]

    assert {recall_at_1(seed) for seed in range(8)} == {0.0, 1.0}  # a real tie, decided by the ids
    for seed in (0, 1, 2):
        assert len({recall_at_1(seed) for _ in range(3)}) == 1


def test_the_eval_can_sleep_between_ingest_and_questions(tmp_path):
    """--consolidate-after: NREM, REM and PRUNE run as that many days later; the report says what they made and
    forgot, and the questions are asked of what is left."""
    path = tmp_path / "data.json"
    path.write_text(json.dumps([SAMPLE]))
    awake = run_locomo_eval(str(path), ks=(1, 5), embedder=bag_of_words, say=lambda _: None)
    said = []
    report = run_locomo_eval(
        str(path), ks=(1, 5), embedder=bag_of_words, say=said.append, consolidate_after_days=365
    )
    sleep = report["consolidation"]
    assert "consolidation" not in awake
    assert sleep["days"] == 365 and sleep["evidence_turns"] == 4  # D1:1, D1:2, D1:3 (twice named), D2:1
    assert (
        sleep["memories_after"]
        == report["counts"]["memories"] - sleep["pruned_memories"] + sleep["prototypes"]
    )
    assert 0 <= sleep["evidence_turns_forgotten"] <= sleep["pruned_turns"]
    assert any(line.startswith("consolidated as 365 days later") for line in said)
    for method in ("t4dm", "dense", "bm25"):
        assert report["results"][method]["questions"] == awake["results"][method]["questions"] == 3
    with pytest.raises(ValueError, match="consolidate_after_days"):
        run_locomo_eval(str(path), embedder=bag_of_words, say=lambda _: None, consolidate_after_days=-1)
