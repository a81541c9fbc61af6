import torch

from vlv.shapes.reader import reading_of, score, train_reader
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
