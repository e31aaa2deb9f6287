"""Glass-box records of the unified model: per decoder layer and per block, off outside ``record()``, saved
to a file the visualisation reads back."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from t4dm.errors import InvalidInput  # noqa: E402
from t4dm.spiking import GlassBox  # noqa: E402
from tests.qwen.helpers import LAYER, random_ids, tiny_base, tiny_unified  # noqa: E402

N_LAYERS = 4


def _hooks(model) -> list[int]:
    return [len(layer._forward_hooks) for layer in model.base_model.model.layers]


def test_layer_records_are_the_residual_stream_norms():
    model = tiny_unified(30)  # up-projection at zero: the stream is the base model's
    ids = random_ids(2, 7, seed=30)
    with model.record() as box, torch.no_grad():
        model(ids)
    assert box.layers() == list(range(N_LAYERS)) and box.blocks() == [0, 1]
    with torch.no_grad():
        states = tiny_base(30)(ids, output_hidden_states=True).hidden_states
    for i in range(N_LAYERS - 1):  # hidden_states[i + 1] is layer i's output (the last one is normed)
        torch.testing.assert_close(box.get_layer(i, "residual_norm"), states[i + 1].norm(dim=-1))
    assert box.get_layer(LAYER, "stack_delta_norm").shape == (2, 7)
    assert float(box.get_layer(LAYER, "stack_delta_norm").abs().max()) == 0.0  # zero-initialised up
    assert box.get(0, "spikes").shape == (2, 7, 32) and box.get(1, "levels").shape == (1, 4)
    with pytest.raises(InvalidInput) as info:
        box.get_layer(0, "stack_delta_norm")  # only the layer the stack follows has it
    assert info.value.field == "layer"


def test_records_follow_generation_and_hooks_go_away():
    model = tiny_unified(31, up_std=0.3)
    before = _hooks(model)
    ids = random_ids(1, 5, seed=31)
    with model.record(
        ("residual_norm", "residual", "stack_delta_norm", "firing_rate"), layers=[1, LAYER]
    ) as box:
        out = model.generate(ids, 4)
    assert _hooks(model) == before and model.stack.recorder is None
    # the prompt in one call, then one call per new token but the last: 5 + 3 positions
    assert box.layers() == [1, LAYER]
    assert box.get_layer(1, "residual_norm").shape == (1, 8)
    assert box.get_layer(LAYER, "residual").shape == (1, 8, 64)
    torch.testing.assert_close(
        box.get_layer(LAYER, "residual").norm(dim=-1), box.get_layer(LAYER, "residual_norm")
    )
    assert float(box.get_layer(LAYER, "stack_delta_norm").min()) > 0.0
    assert box.get(1, "firing_rate").shape == (1, 8)
    # recording does not change what the model does
    assert torch.equal(model.generate(ids, 4).sequences, out.sequences)


def test_saved_records_read_back_and_draw(tmp_path):
    pytest.importorskip("matplotlib")
    from t4dm.viz import plot_glassbox

    model = tiny_unified(32, up_std=0.3)
    with model.record() as box:
        model.generate(random_ids(2, 6, seed=32), 3)
    path = box.save(tmp_path / "run.npz")
    loaded = GlassBox.load(path)
    assert loaded.layers() == box.layers() and loaded.blocks() == box.blocks()
    assert loaded.kinds == box.kinds
    for i in box.layers():
        assert torch.equal(loaded.get_layer(i, "residual_norm"), box.get_layer(i, "residual_norm"))
    assert torch.equal(loaded.get(0, "spikes"), box.get(0, "spikes"))
    assert torch.equal(loaded.get(1, "levels"), box.get(1, "levels"))
    assert torch.equal(loaded.get(-1, "oscillator"), box.get(-1, "oscillator"))

    png = plot_glassbox(path, tmp_path / "fig" / "run.png", row=1)
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(InvalidInput) as info:
        plot_glassbox(box, tmp_path / "x.png", row=2)
    assert info.value.field == "row" and info.value.value == 2
    with pytest.raises(InvalidInput) as info:
        plot_glassbox(GlassBox(("spikes",)), tmp_path / "x.png")
    assert info.value.field == "source"
    assert not (tmp_path / "x.png").exists()


def test_glassbox_bad_input(tmp_path):
    model = tiny_unified(33)
    with pytest.raises(InvalidInput) as info, model.record(layers=[N_LAYERS]):
        pass
    assert info.value.field == "layers" and info.value.value == N_LAYERS
    assert _hooks(model) == [0, 0, 1, 0]  # nothing left behind: only the stack's own hook
    with pytest.raises(InvalidInput) as info:
        GlassBox(("residual_norm", "nope"))
    assert info.value.field == "record" and info.value.value == "nope"
    box = GlassBox(("residual_norm",))
    with pytest.raises(InvalidInput) as info:
        box.save(tmp_path / "run.json")
    assert info.value.field == "path"
    not_npz = tmp_path / "notes.npz"
    not_npz.write_text("hello")
    with pytest.raises(InvalidInput) as info:
        GlassBox.load(not_npz)
    assert info.value.field == "path"
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(InvalidInput, match="kinds"):
        GlassBox.load(tmp_path / "other.npz")
