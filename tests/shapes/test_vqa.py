import random
import re

import pytest
from transformers import Qwen2ForCausalLM

from vlv.eval.vqa import answer_questions
from vlv.shapes.vqa import (
    QUESTION_TYPES,
    build_reader_tokenizer,
    evaluate_vqa,
    load_reader,
    question_type,
    questions_for,
    train_vqa_reader,
)
from vlv.shapes.world import sample_scenes


def _answer_from_scene(scene, question: str) -> str:
    """The answer read off the scene record independently of `questions_for`."""
    objects = scene.objects
    if m := re.fullmatch(r"what color is the (\w+)\?", question):
        (o,) = [o for o in objects if o.shape == m[1]]  # the question names a unique shape
        return o.color
    if question == "how many objects are there?":
        return str(len(objects))
    if m := re.fullmatch(r"is there a (\w+) at the (\w+ \w+)\?", question):
        return "yes" if any(o.shape == m[1] and o.position == m[2] for o in objects) else "no"
    if m := re.fullmatch(r"what shape is at the (\w+ \w+)\?", question):
        return scene.by_position()[m[1]].shape
    if m := re.fullmatch(r"what size is the (\w+) (\w+)\?", question):
        (o,) = [o for o in objects if (o.color, o.shape) == (m[1], m[2])]
        return o.size
    raise AssertionError(f"unexpected question {question!r}")


def test_answers_agree_with_the_scene():
    scenes = sample_scenes(400, seed=0, split="all")
    rng = random.Random(0)
    kinds, exists = [], []
    for scene in scenes:
        for question, answer in questions_for(scene, rng):
            assert answer == _answer_from_scene(scene, question), (scene.caption, question, answer)
            kinds.append(question_type(question))
            if kinds[-1] == "exists":
                exists.append(answer == "yes")
    assert set(kinds) == set(QUESTION_TYPES)
    assert 0.4 < sum(exists) / len(exists) < 0.6  # yes / no balanced
    # Seeded: the same rng seed asks the same questions.
    again = [q for s in scenes for q in questions_for(s, random.Random(0))][:5]
    assert again == [q for s in scenes for q in questions_for(s, random.Random(0))][:5]


def test_question_type_rejects_other_questions():
    with pytest.raises(ValueError, match="not a shapes question"):
        question_type("why is the sky blue?")


def test_reader_tokenizer_splits_punctuation_and_knows_every_word():
    tokenizer = build_reader_tokenizer()
    ids = tokenizer("Context: a large red circle at the top left\nQuestion: what color is the circle?\nAnswer:")
    tokens = tokenizer.convert_ids_to_tokens(ids["input_ids"])
    assert tokens[:2] == ["Context", ":"] and tokens[-3:] == ["?", "Answer", ":"] and "<unk>" not in tokens


@pytest.fixture(scope="module")
def reader_dir(tmp_path_factory):
    """A reader after a short run: enough to read the count from the caption ("and" joins two objects)."""
    return train_vqa_reader(tmp_path_factory.mktemp("reader"), steps=80, seed=0, batch_size=32, blocks=1)


def test_trained_reader_loads_as_a_causal_lm_and_answers(reader_dir):
    lm, tokenizer = load_reader(reader_dir)
    assert isinstance(lm, Qwen2ForCausalLM)
    answers = answer_questions(
        lm, tokenizer, ["a small red circle at the top left"] * 2, ["how many objects are there?"] * 2
    )
    assert answers == [answers[0]] * 2 and answers[0] in {"1", "2"}


def test_ground_truth_captions_beat_shuffled_captions(reader_dir):
    scenes = sample_scenes(60, seed=1, split="heldout")
    captions = [s.caption for s in scenes]
    truth = evaluate_vqa(reader_dir, scenes, captions, seed=0)
    shuffled = evaluate_vqa(reader_dir, scenes, captions[1:] + captions[:1], seed=0)
    assert set(truth["per_type"]) == set(QUESTION_TYPES) and truth["questions"] == shuffled["questions"]
    assert truth["accuracy"] > shuffled["accuracy"] + 0.05, (truth, shuffled)
