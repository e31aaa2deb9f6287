"""The unified model's GPU check script runs end to end on a tiny model on the CPU (so a GPU session does
not spend its minutes on a broken script), and refuses bad input."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from t4dm.bench.qwen import run_qwen_bench
from t4dm.errors import InvalidInput


@pytest.mark.parametrize("quantize", ["none", "nf4"])
def test_the_qwen_benchmark_runs_on_a_tiny_model(tmp_path, quantize):
    if quantize == "nf4":
        pytest.importorskip("bitsandbytes")
    out = tmp_path / "bench.json"
    results = run_qwen_bench(
        device="cpu", shape="tiny", quantize=quantize, context=12, new_tokens=3, repeat=1, memories=20,
        workdir=str(tmp_path), json_path=str(out),
    )  # fmt: skip
    assert json.loads(out.read_text()) == json.loads(json.dumps(results))
    for side in ("plain", "unified"):
        assert results[side]["prefill_ms"] > 0 and results[side]["decode_tokens_per_s"] > 0
    assert results["decode_ratio"] == pytest.approx(
        results["unified"]["decode_tokens_per_s"] / results["plain"]["decode_tokens_per_s"]
    )
    assert (
        results["unified"]["decode_tokens_per_s_eager_stack"] > 0
        and results["unified"]["stack_graph"] is False
    )
    assert results["decode_ratio_eager_stack"] == pytest.approx(
        results["unified"]["decode_tokens_per_s_eager_stack"] / results["plain"]["decode_tokens_per_s"]
    )
    assert results["train"]["step_ms"] > 0 and results["train"]["tokens"] == 12
    assert results["unified"]["trainable"]["lora"] > 0 and results["parameters"] > 0
    assert results["quantize"] == quantize
    assert list(tmp_path.iterdir()) == [out]  # the random checkpoint and the store are gone


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"shape": "7b"}, "shape"), ({"context": 1}, "context"), ({"new_tokens": 0}, "new_tokens"),
     ({"repeat": 0}, "repeat")],
)  # fmt: skip
def test_the_qwen_benchmark_refuses_bad_input(kwargs, field):
    with pytest.raises(InvalidInput) as info:
        run_qwen_bench(**{"device": "cpu", "shape": "tiny", "quantize": "none", **kwargs})
    assert info.value.field == field
