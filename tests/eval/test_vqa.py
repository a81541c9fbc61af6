import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from vlv.eval.vqa import answer_questions, build_prompt, normalize_answer, vqa_accuracy


@pytest.mark.parametrize(
    "raw, normal",
    [
        ("Two", "2"),  # number words become digits (after lower-casing)
        ("a dog.", "dog"),  # articles dropped, a period not followed by a digit removed
        ("dont", "don't"),  # apostrophe-less contractions restored
        ("yes!", "yes"),  # "!" inside the text becomes a space, then whitespace collapses
        ("Yes !", "yes"),  # a mark next to a space is deleted
        ("3.5", "3.5"),  # a period before a digit stays
        ("1,000", "1000"),  # with a digit-comma-digit every mark is deleted, not spaced
        ("black/white", "black white"),  # a mark inside a word separates
        ("  The  Red\tcar\n", "red car"),
        ("none", "0"),
        ("it's", "it's"),  # the apostrophe is not punctuation here
    ],
)
def test_normalize_answer_follows_the_official_rules(raw, normal):
    assert normalize_answer(raw) == normal


@pytest.mark.parametrize(
    "matching, expected",
    [
        # 10 answers, m of them equal to the prediction. Leaving out a matching answer leaves m − 1 matches, leaving
        # out another leaves m; each scores min(1, matches / 3), averaged over the 10 leave-one-out subsets.
        (4, 1.0),  # (4 · min(1, 3/3) + 6 · min(1, 4/3)) / 10 = 1
        (3, 0.9),  # (3 · 2/3 + 7 · 3/3) / 10 = (2 + 7) / 10
        (2, 0.6),  # (2 · 1/3 + 8 · 2/3) / 10 = (2/3 + 16/3) / 10 = 6 / 10
        (1, 0.3),  # (1 · 0 + 9 · 1/3) / 10 = 3 / 10
        (0, 0.0),
    ],
)
def test_vqa_accuracy_worked_examples(matching, expected):
    answers = ["dog"] * matching + ["cat"] * (10 - matching)
    assert vqa_accuracy("dog", answers) == pytest.approx(expected)


def test_vqa_accuracy_normalises_both_sides_and_takes_any_number_of_answers():
    assert vqa_accuracy("Two.", ["2", "2", "2", "2", "two", "3", "3", "3", "3", "3"]) == 1.0
    assert vqa_accuracy("The Dog!", ["dog"]) == 1.0  # one answer: exact match after normalisation
    assert vqa_accuracy("cat", ["dog"]) == 0.0
    # 5 answers, 2 matching: (2 · 1/3 + 3 · 2/3) / 5 = (2/3 + 2) / 5 = 8/15
    assert vqa_accuracy("yes", ["yes", "yes", "no", "no", "no"]) == pytest.approx(8 / 15)
    with pytest.raises(ValueError, match="non-empty"):
        vqa_accuracy("yes", [])
    with pytest.raises(ValueError, match="non-empty"):
        vqa_accuracy("yes", "yes")


def test_prompt_format_zero_and_k_shot():
    assert build_prompt("a red circle", "what color?") == "Context: a red circle\nQuestion: what color?\nAnswer:"
    shots = [("a blue square", "what shape?", "square"), ("two cats", "how many?", "2")]
    assert build_prompt("a red circle", "what color?", shots) == (
        "Context: a blue square\nQuestion: what shape?\nAnswer: square\n\n"
        "Context: two cats\nQuestion: how many?\nAnswer: 2\n\n"
        "Context: a red circle\nQuestion: what color?\nAnswer:"
    )


@pytest.fixture(scope="module")
def hub_style_lm(tmp_path_factory):
    """A directory laid out like a hub LM: a tiny random Qwen2 and a byte-level BPE tokenizer (as Qwen's), saved with
    `save_pretrained` and loaded back with the Auto classes."""
    corpus = ["Context: a large red circle at the top left\nQuestion: what color is the circle?\nAnswer: red"] * 20
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>")  # no pad token, as GPT-2
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    directory = tmp_path_factory.mktemp("lm")
    Qwen2ForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return AutoModelForCausalLM.from_pretrained(directory).eval(), AutoTokenizer.from_pretrained(directory)


def test_answer_questions_batched_equals_one_at_a_time(hub_style_lm):
    lm, tokenizer = hub_style_lm
    captions = ["a large red circle at the top left", "a small blue square", "", "red"]
    questions = ["what color is the circle?", "what shape?", "is there a circle?", "what color is it at the top?"]
    shots = [("a red circle", "what color is the circle?", "red")]
    batched = answer_questions(lm, tokenizer, captions, questions, shots=shots, batch_size=4, max_new_tokens=6)
    single = answer_questions(lm, tokenizer, captions, questions, shots=shots, batch_size=1, max_new_tokens=6)
    assert len(batched) == len(questions) and all(isinstance(a, str) for a in batched)
    assert batched == single
    # Answers end at the first newline and carry no surrounding whitespace.
    assert all("\n" not in a and a == a.strip() for a in batched)
    with pytest.raises(ValueError, match="captions for"):
        answer_questions(lm, tokenizer, captions, questions[:2])
