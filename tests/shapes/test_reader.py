import json

import pytest
import torch

from vlv.cli import main
from vlv.loading import CheckpointMismatchError
from vlv.shapes import preset
from vlv.shapes.reader import load_reader, reading_of, save_reader, score, train_reader
from vlv.shapes.world import INVALID, parse_caption, render_batch, sample_scenes


def test_score_perfect_partial_and_invalid():
    truth = [
        reading_of(parse_caption("a large red circle at the top left and a small blue square at the bottom right"))
    ]
    assert score(truth, truth)["exact"] == 1.0
    wrong_color = [
        reading_of(parse_caption("a large green circle at the top left and a small blue square at the bottom right"))
    ]
    s = score(wrong_color, truth)
    assert s["exact"] == 0 and s["color"] == 0.5 and s["shape"] == 1 and s["position"] == 1
    missing = [reading_of(parse_caption("a large red circle at the top left"))]
    s = score(missing, truth)
    assert s["position"] == 0.75 and s["size"] == 0.5
    s = score([reading_of(INVALID)], truth)
    assert s["attribute_accuracy"] == 0 and s["exact"] == 0


def test_reader_learns_to_read_held_out_scenes():
    reader = train_reader(steps=250, batch_size=64)
    scenes = sample_scenes(200, seed=3, split="heldout")
    readings = reader.read(torch.from_numpy(render_batch(scenes)))
    s = score(readings, [reading_of(x) for x in scenes])
    assert s["attribute_accuracy"] > 0.9, s
    assert reader.features(torch.zeros(2, 3, 16, 16)).shape == (2, 256)


def test_committed_reader_reads_held_out_scenes_exactly():
    """The demo's reader (800 steps, seed 0) is committed: every evaluation reads with the same one."""
    reader = load_reader(preset.READER)
    assert reader.training_record == {"steps": 800, "batch_size": 128, "seed": 0}
    assert not reader.training  # loaded in eval mode
    scenes = sample_scenes(300, seed=5, split="heldout")
    s = score(reader.read(torch.from_numpy(render_batch(scenes))), [reading_of(x) for x in scenes])
    assert s["exact"] >= 0.99, s


def test_train_reader_command_saves_a_reader_that_loads_strictly(tmp_path):
    out = tmp_path / "reader"
    assert main(["shapes", "train-reader", "--steps", "3", "--seed", "1", "--out", str(out)]) == 0
    loaded = load_reader(out)
    assert loaded.training_record == {"steps": 3, "batch_size": 128, "seed": 1}
    again = train_reader(steps=3, seed=1)  # the same seed trains the same weights
    x = torch.rand(4, 3, 16, 16)
    torch.testing.assert_close(loaded(x), again(x), rtol=0, atol=0)

    save_reader(again, tmp_path / "narrow")
    config = json.loads((tmp_path / "narrow/config.json").read_text())
    (tmp_path / "narrow/config.json").write_text(json.dumps({**config, "width": 32}))
    with pytest.raises(CheckpointMismatchError, match="attribute reader"):
        load_reader(tmp_path / "narrow")  # weights of another size are an error, not a partial load
    with pytest.raises(FileNotFoundError, match="not an attribute reader folder"):
        load_reader(tmp_path / "nowhere")
