"""Text-only VQA: a caption and a question in a text-only causal LM's prompt, the answer scored with VQAv2 accuracy.

This is the paper's protocol for judging how much of an image a caption carries: the LM never sees the image, only
the caption, so its VQA accuracy measures the caption (0-, 4- and 32-shot prompts in the paper, on VQAv2 and
OK-VQA). Answer normalisation and accuracy follow the official VQA evaluation (GT-Vision-Lab/VQA,
`PythonEvaluationTools/vqaEvaluation/vqaEval.py`); prompting and greedy answering work with any local transformers
causal LM and its tokenizer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

Shot = tuple[str, str, str]  # (caption, question, answer): one solved example shown before the question

# --- answer normalisation (the official script's processPunctuation + processDigitArticle) ---

# Removed or turned into a space (see `_strip_punctuation`). "." is handled by `_PERIOD`; the apostrophe is kept so
# that contractions reach the contraction table.
_PUNCTUATION = (
    ";",
    "/",
    "[",
    "]",
    '"',
    "{",
    "}",
    "(",
    ")",
    "=",
    "+",
    "\\",
    "_",
    "-",
    ">",
    "<",
    "@",
    "`",
    ",",
    "?",
    "!",
)
# The official pattern "(?!<=\d)(\.)(?!\d)" opens with a lookahead (not a lookbehind) that can never match before a
# ".", so in effect it removes every period not followed by a digit: "dog." → "dog", "3.5" stays.
_PERIOD = re.compile(r"\.(?!\d)")
_DIGIT_COMMA = re.compile(r"\d,\d")  # "1,000": punctuation is then deleted rather than spaced
_NUMBERS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
_ARTICLES = frozenset({"a", "an", "the"})
# Apostrophe-less spellings → contractions, as in the official table. Its capitalised keys (Id've, I'dve, Im, Ive)
# can never match the lower-cased words and its identity entries change nothing, so both are left out; its reversed
# entry somebody'd → somebodyd is kept so that scores stay identical.
_CONTRACTIONS = dict(
    pair.split("=")
    for pair in """
    aint=ain't arent=aren't cant=can't couldve=could've couldnt=couldn't couldn'tve=couldn't've couldnt've=couldn't've
    didnt=didn't doesnt=doesn't dont=don't hadnt=hadn't hadnt've=hadn't've hadn'tve=hadn't've hasnt=hasn't
    havent=haven't hed=he'd hed've=he'd've he'dve=he'd've hes=he's howd=how'd howll=how'll hows=how's isnt=isn't
    itd=it'd itd've=it'd've it'dve=it'd've itll=it'll maam=ma'am mightnt=mightn't mightnt've=mightn't've
    mightn'tve=mightn't've mightve=might've mustnt=mustn't mustve=must've neednt=needn't notve=not've oclock=o'clock
    oughtnt=oughtn't ow's'at='ow's'at 'ows'at='ow's'at 'ow'sat='ow's'at shant=shan't shed've=she'd've
    she'dve=she'd've shouldve=should've shouldnt=shouldn't shouldnt've=shouldn't've shouldn'tve=shouldn't've
    somebody'd=somebodyd somebodyd've=somebody'd've somebody'dve=somebody'd've somebodyll=somebody'll
    somebodys=somebody's someoned=someone'd someoned've=someone'd've someone'dve=someone'd've someonell=someone'll
    someones=someone's somethingd=something'd somethingd've=something'd've something'dve=something'd've
    somethingll=something'll thats=that's thered=there'd thered've=there'd've there'dve=there'd've therere=there're
    theres=there's theyd=they'd theyd've=they'd've they'dve=they'd've theyll=they'll theyre=they're theyve=they've
    twas='twas wasnt=wasn't wed've=we'd've we'dve=we'd've weve=we've werent=weren't whatll=what'll whatre=what're
    whats=what's whatve=what've whens=when's whered=where'd wheres=where's whereve=where've whod=who'd
    whod've=who'd've who'dve=who'd've wholl=who'll whos=who's whove=who've whyll=why'll whyre=why're whys=why's
    wont=won't wouldve=would've wouldnt=wouldn't wouldnt've=wouldn't've wouldn'tve=wouldn't've yall=y'all
    yall'll=y'all'll y'allll=y'all'll yall'd've=y'all'd've y'alld've=y'all'd've y'all'dve=y'all'd've youd=you'd
    youd've=you'd've you'dve=you'd've youll=you'll youre=you're youve=you've
    """.split()
)


def _strip_punctuation(text: str) -> str:
    # A mark touching a space ("yes !") or any text with a digit-comma-digit is deleted; a mark inside a word is a
    # separator ("black/white" → "black white"). Both tests look at the original text, as the official script does.
    delete_all = _DIGIT_COMMA.search(text) is not None
    out = text
    for p in _PUNCTUATION:
        out = out.replace(p, "" if delete_all or p + " " in text or " " + p in text else " ")
    return _PERIOD.sub("", out)


def normalize_answer(text: str) -> str:
    """The official VQA answer normalisation: punctuation rules, lower case, number words → digits ("two" → "2"),
    articles dropped, apostrophe-less contractions restored ("dont" → "don't"), single spaces."""
    text = _strip_punctuation(text.replace("\n", " ").replace("\t", " ").strip())
    words = [_NUMBERS.get(w, w) for w in text.lower().split()]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES)


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """VQAv2 accuracy of one predicted answer against the human answers (normally 10), in [0, 1].

    For each human answer left out in turn, the prediction scores min(1, #other answers equal to it / 3); the score
    is the mean over the leave-one-out subsets. So with 10 answers: 4 or more matches → 1.0, 3 → 0.9, 2 → 0.6,
    1 → 0.3. Both sides are normalised with `normalize_answer`. The official script does the same when the human
    answers disagree, but compares unnormalised (only stripped) strings when they are unanimous, so there "Yes"
    against ten "yes" scores 0; here it scores 1. A single answer counts as ten annotators agreeing on it (exact
    match after normalisation): the leave-one-out formula would score every prediction 0.
    """
    if isinstance(answers, str) or len(answers) == 0:
        raise ValueError(f"answers must be a non-empty list of strings, got {answers!r}")
    predicted = normalize_answer(prediction)
    truth = [normalize_answer(a) for a in answers]
    if len(truth) == 1:
        return float(predicted == truth[0])
    matches = sum(a == predicted for a in truth)
    # Leaving answer a out leaves `matches - (a == predicted)` matching answers among the others.
    return sum(min(1.0, (matches - (a == predicted)) / 3) for a in truth) / len(truth)


# --- prompting and answering ---


def build_prompt(caption: str, question: str, shots: Sequence[Shot] = ()) -> str:
    """The text-only VQA prompt: each shot as a solved block, then the open block, blocks separated by a blank line.

        Context: a large red circle at the top left
        Question: what color is the circle?
        Answer: red

        Context: {caption}
        Question: {question}
        Answer:

    The LM continues after "Answer:"; its answer ends at the first newline (or at EOS).
    """
    blocks = [f"Context: {c}\nQuestion: {q}\nAnswer: {a}" for c, q, a in shots]
    blocks.append(f"Context: {caption}\nQuestion: {question}\nAnswer:")
    return "\n\n".join(blocks)


@torch.no_grad()
def answer_prompts(
    lm, tokenizer, prompts: Sequence[str], *, batch_size: int = 32, max_new_tokens: int = 8
) -> list[str]:
    """Greedy answers of a causal LM to `prompts`: one stripped string per prompt, cut at the first newline.

    lm: any transformers causal LM (in eval mode) with `generate`; tokenizer: its tokenizer. Prompts are batched
    with left padding, so every prompt's last token sits at the end of the row and generation continues from there;
    the attention mask hides the padding (batched answers equal one-at-a-time answers). Generation stops at the
    model's EOS or after `max_new_tokens`.
    """
    # A tokenizer without a pad token (GPT-2, Llama) pads with EOS: padded positions are masked out anyway.
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise ValueError("the tokenizer has neither a pad nor an EOS token to pad batches with")
    device = next(lm.parameters()).device
    answers = []
    for start in range(0, len(prompts), batch_size):
        encoded = [tokenizer(p)["input_ids"] for p in prompts[start : start + batch_size]]
        T = max(len(ids) for ids in encoded)
        input_ids = torch.full((len(encoded), T), pad_id, dtype=torch.long)  # (B, T)
        attention_mask = torch.zeros((len(encoded), T), dtype=torch.long)  # (B, T)
        for i, ids in enumerate(encoded):
            input_ids[i, T - len(ids) :] = torch.tensor(ids)
            attention_mask[i, T - len(ids) :] = 1
        out = lm.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            do_sample=False,
            max_new_tokens=max_new_tokens,
            pad_token_id=pad_id,
        )  # (B, T + new)
        texts = tokenizer.batch_decode(out[:, T:], skip_special_tokens=True)
        answers += [text.split("\n")[0].strip() for text in texts]
    return answers


def answer_questions(
    lm,
    tokenizer,
    captions: Sequence[str],
    questions: Sequence[str],
    *,
    shots: Sequence[Shot] = (),
    batch_size: int = 32,
    max_new_tokens: int = 8,
) -> list[str]:
    """Answer `questions[i]` from `captions[i]` alone, with the same solved `shots` before every question (k-shot;
    none = 0-shot). Returns one answer string per question; see `build_prompt` and `answer_prompts`."""
    if len(captions) != len(questions):
        raise ValueError(f"{len(captions)} captions for {len(questions)} questions")
    prompts = [build_prompt(c, q, shots) for c, q in zip(captions, questions)]
    return answer_prompts(lm, tokenizer, prompts, batch_size=batch_size, max_new_tokens=max_new_tokens)
