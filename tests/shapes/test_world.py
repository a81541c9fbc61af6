import json

import numpy as np
import pytest

from vlv.cli import main
from vlv.shapes.world import (
    COLORS,
    INVALID,
    POSITIONS,
    SHAPES,
    SIZES,
    Scene,
    ShapeObject,
    all_scenes,
    parse_caption,
    render,
    render_batch,
    sample_compositions,
    sample_scenes,
)


def test_caption_grammar_is_exact():
    scene = Scene(
        (ShapeObject("bottom right", "small", "blue", "square"), ShapeObject("top left", "large", "red", "circle"))
    )
    assert scene.caption == "a large red circle at the top left and a small blue square at the bottom right"


def test_every_scene_round_trips_through_its_caption():
    scenes = all_scenes()
    assert len(scenes) == 4 * 24 + 6 * 24 * 24
    assert len({s.caption for s in scenes}) == len(scenes)
    for s in scenes:
        assert parse_caption(s.caption) == s
        assert Scene.from_dict(json.loads(json.dumps(s.to_dict()))) == s


@pytest.mark.parametrize(
    "text",
    [
        "",
        "a red circle",
        "a large red circle at the top",
        "a large red circle at the top left and",
        "a large red circle at the top left and a small blue square at the top left",
        "a large red circle at the top left and a small blue square at the top right"
        " and a small red square at the bottom left",
        "a huge red circle at the top left",
        None,
        12,
    ],
)
def test_invalid_captions_parse_to_invalid(text):
    assert parse_caption(text) == INVALID


def test_parser_accepts_any_object_order():
    a = parse_caption("a small blue square at the bottom right and a large red circle at the top left")
    assert a == parse_caption("a large red circle at the top left and a small blue square at the bottom right")


def test_held_out_split_is_disjoint_and_large_enough():
    held = [s for s in all_scenes() if s.held_out]
    assert len(held) >= 500
    train = sample_scenes(2000, seed=0, split="train")
    assert not any(s.held_out for s in train)
    assert all(s.held_out for s in sample_scenes(200, seed=0, split="heldout"))
    assert sample_scenes(50, seed=3) == sample_scenes(50, seed=3)
    assert sample_scenes(50, seed=3) != sample_scenes(50, seed=4)


def test_renders_are_deterministic_and_distinguish_every_attribute():
    renders = {}
    for size in SIZES:
        for color in COLORS:
            for shape in SHAPES:
                scene = Scene((ShapeObject("top left", size, color, shape),))
                img = np.asarray(render(scene, 16))
                assert np.array_equal(img, np.asarray(render(scene, 16)))
                renders[(size, color, shape)] = img.tobytes()
    assert len(set(renders.values())) == len(renders)  # small circle ≠ small square, etc.


def test_objects_are_drawn_in_their_quadrant():
    for p in POSITIONS:
        img = render_batch([Scene((ShapeObject(p, "large", "red", "square"),))], 16)[0]
        lit = img.sum(0) > 0
        row, col = POSITIONS.index(p) // 2, POSITIONS.index(p) % 2
        quadrant = lit[row * 8 : row * 8 + 8, col * 8 : col * 8 + 8]
        assert quadrant.sum() == lit.sum() > 20


def test_render_command(tmp_path, capsys):
    assert main(["shapes", "render", "--n", "12", "--seed", "1", "--out", str(tmp_path)]) == 0
    lines = [json.loads(x) for x in (tmp_path / "scenes.jsonl").read_text().splitlines()]
    assert len(lines) == 12
    for rec in lines:
        assert (tmp_path / rec["image"]).is_file()
        assert parse_caption(rec["caption"]) == Scene.from_dict(rec["scene"])
        # the caption beside the image, as `vlv train` reads a folder
        assert (tmp_path / rec["image"]).with_suffix(".txt").read_text().strip() == rec["caption"]
    assert [rec["caption"] for rec in lines] == [s.caption for s in sample_scenes(12, seed=1)]


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_compositions_are_two_single_object_scenes_and_their_union(split):
    triples = sample_compositions(200, seed=3, split=split)
    assert len(triples) == 200 and triples == sample_compositions(200, seed=3, split=split)
    for a, b, union in triples:
        assert len(a.objects) == len(b.objects) == 1 and a.objects[0].position != b.objects[0].position
        assert set(union.objects) == {a.objects[0], b.objects[0]}
        assert all(s.held_out == (split == "heldout") for s in (a, b, union))
    # the union renders exactly as both objects drawn together on the background
    a, b, union = triples[0]
    pa, pb, pu = (np.asarray(render(s), dtype=np.int32) for s in (a, b, union))
    assert np.array_equal(pu, pa + pb)  # background is black and the objects lie in distinct quadrants
