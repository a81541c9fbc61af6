"""Text-only VQA in the shapes world: questions with exact answers, and a small text-only reader LM.

The paper scores captions by how well a text-only LLM answers VQAv2 questions from them (`vlv.eval.vqa`). No
pretrained LLM exists offline, so here the LLM is a small `Qwen2ForCausalLM` with a word-level tokenizer, trained on
(ground-truth caption, question, answer) prompts of training-split scenes and saved with `save_pretrained`: it is
then loaded and prompted like any local causal LM. Questions come in five types, each answerable from a correct
caption and not from answer priors alone:

    color   what color is the {shape}?            (the shape is unique in the scene)
    count   how many objects are there?           1 / 2 (digits: VQA normalisation maps "two" to "2")
    exists  is there a {shape} at the {position}? yes / no, balanced; half the "no"s off by one attribute
    shape   what shape is at the {position}?      (an occupied quadrant)
    size    what size is the {color} {shape}?     (the color and shape pair is unique in the scene)
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizers import pre_tokenizers
from tqdm import trange
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from vlv.config import derive_seed
from vlv.eval.vqa import Shot, answer_prompts, build_prompt, vqa_accuracy
from vlv.presets import qwen2_arch
from vlv.shapes.preset import WORDS
from vlv.shapes.world import POSITIONS, SHAPES, Scene, sample_scenes
from vlv.tokenizer import build_word_tokenizer

# Question type → the opening words that identify it (as the VQAv2 "question_type" is a question's first words).
QUESTION_TYPES = {
    "color": "what color",
    "count": "how many",
    "exists": "is there",
    "shape": "what shape",
    "size": "what size",
}
# Every word of the prompts beyond the caption grammar: question words, answers, the prompt's field names and the
# punctuation the tokenizer isolates.
READER_WORDS = (
    *WORDS,
    *"what color is how many objects are there shape size yes no 1 2".split(),
    *"Context Question Answer : ?".split(),
)


def question_type(question: str) -> str:
    """The type of a shapes question (a key of QUESTION_TYPES)."""
    for kind, opening in QUESTION_TYPES.items():
        if question.startswith(opening):
            return kind
    raise ValueError(f"not a shapes question: {question!r}")


def _near_misses(shape: str, position: str) -> list[tuple[str, str]]:
    """(shape, position) pairs that differ from (shape, position) in exactly one of shape, top/bottom, left/right."""
    vertical, horizontal = position.split()
    flip = {"top": "bottom", "bottom": "top", "left": "right", "right": "left"}
    return [(other, position) for other in SHAPES if other != shape] + [
        (shape, f"{flip[vertical]} {horizontal}"),
        (shape, f"{vertical} {flip[horizontal]}"),
    ]


def questions_for(scene: Scene, rng: random.Random) -> list[tuple[str, str]]:
    """(question, answer) pairs about `scene`, one per applicable type, answers exact; choices drawn from `rng`."""
    objects = scene.objects
    out = []
    shape_counts = Counter(o.shape for o in objects)
    unique_shape = [o for o in objects if shape_counts[o.shape] == 1]
    if unique_shape:  # "the circle" must name one object
        o = rng.choice(unique_shape)
        out.append((f"what color is the {o.shape}?", o.color))
    out.append(("how many objects are there?", str(len(objects))))
    if rng.random() < 0.5:
        o = rng.choice(objects)
        out.append((f"is there a {o.shape} at the {o.position}?", "yes"))
    else:
        # Half the "no"s are near misses (an object with its shape, top/bottom or left/right changed), so that a
        # reader, and a caption, must get all three right; the other half are any absent pair. Candidates that
        # happen to be in the scene are not "no"s.
        present = {(o.shape, o.position) for o in objects}
        if rng.random() < 0.5:
            candidates = {miss for o in objects for miss in _near_misses(o.shape, o.position)}
        else:
            candidates = {(s, p) for s in SHAPES for p in POSITIONS}
        shape, position = rng.choice(sorted(candidates - present))
        out.append((f"is there a {shape} at the {position}?", "no"))
    o = rng.choice(objects)
    out.append((f"what shape is at the {o.position}?", o.shape))
    look_counts = Counter((o.color, o.shape) for o in objects)
    unique_look = [o for o in objects if look_counts[o.color, o.shape] == 1]
    if unique_look:
        o = rng.choice(unique_look)
        out.append((f"what size is the {o.color} {o.shape}?", o.size))
    return out


def build_reader_tokenizer():
    """The reader's word-level tokenizer: whitespace words, with punctuation ("?", ":") split off as tokens."""
    tokenizer = build_word_tokenizer(READER_WORDS, wrap_bos_eos=False)
    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    return tokenizer


def reader_config(tokenizer, *, width: int = 128, layers: int = 2, heads: int = 4) -> Qwen2Config:
    """The reader's Qwen2 (width 128, 2 layers: ≈0.3M parameters); EOS ends an answer."""
    return Qwen2Config(
        **qwen2_arch(vocab=len(tokenizer), width=width, layers=layers, heads=heads, kv_heads=heads // 2, mlp=2 * width),
        max_position_embeddings=1024,  # room for a dozen shots
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


@contextmanager
def _one_thread():
    """Run the reader on one CPU thread: at its size intra-op threads only add synchronisation (a training step is
    20× slower with two threads on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _solved(scene: Scene, rng: random.Random) -> Shot:
    """(ground-truth caption, question, answer): one random question about `scene`, solved."""
    question, answer = rng.choice(questions_for(scene, rng))
    return scene.caption, question, answer


def _training_batch(tokenizer, prompts: list[list[Shot]]):
    """Right-padded (input_ids, labels), both (B, T), for k-shot prompts given as their solved blocks.

    A row is the prompt of its last block with the earlier blocks as shots, followed by the last answer and EOS.
    Every block's answer is a label, so one row trains the 0-shot, 1-shot, … answers at once; the tokens after an
    inner answer (the next "Context") are not, so that the reader learns to end an answer with EOS. The word-level
    tokenizer splits at whitespace, so blocks tokenize one by one exactly as the joined prompt does.
    """
    rows = []
    for blocks in prompts:
        ids, labels = [], []
        for caption, question, answer in blocks:
            prompt_ids = tokenizer(build_prompt(caption, question))["input_ids"]
            answer_ids = tokenizer(answer)["input_ids"]
            ids += prompt_ids + answer_ids
            labels += [-100] * len(prompt_ids) + answer_ids
        rows.append((ids + [tokenizer.eos_token_id], labels + [tokenizer.eos_token_id]))
    T = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), T), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), T), -100, dtype=torch.long)
    for i, (ids, lab) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(lab)] = torch.tensor(lab)
    return input_ids, labels


def train_vqa_reader(
    out_dir: str | Path,
    steps: int = 1200,
    seed: int = 0,
    *,
    batch_size: int = 32,
    blocks: int = 3,
    lr: float = 2e-3,
    width: int = 128,
    layers: int = 2,
    heads: int = 4,
) -> Path:
    """Train the reader on k-shot prompts of training-split scenes and save it (model + tokenizer, with
    `save_pretrained`) to `out_dir`, which it returns. Deterministic for a seed.

    Each row is a `blocks`-shot prompt of solved blocks (ground-truth caption, question, answer); the loss is the
    next-token loss on every block's answer and the final EOS only, so a row trains 0-shot to (blocks − 1)-shot
    answering at once, without padding.
    """
    tokenizer = build_reader_tokenizer()
    torch.manual_seed(derive_seed(seed, "vqa_reader/init"))
    lm = Qwen2ForCausalLM(reader_config(tokenizer, width=width, layers=layers, heads=heads))
    opt = torch.optim.AdamW(lm.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    rng = random.Random(derive_seed(seed, "vqa_reader/prompts"))
    lm.train()
    start = time.perf_counter()
    with _one_thread():
        for step in trange(steps, desc="VQA reader", leave=False):
            scenes = sample_scenes(batch_size * blocks, seed=derive_seed(seed, f"vqa_reader/{step}"), split="train")
            solved = [_solved(s, rng) for s in scenes]
            prompts = [solved[i * blocks : (i + 1) * blocks] for i in range(batch_size)]
            input_ids, labels = _training_batch(tokenizer, prompts)
            logits = lm(input_ids=input_ids, attention_mask=(input_ids != tokenizer.pad_token_id).long()).logits
            # Position t predicts token t + 1.
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
            opt.step()
            sched.step()
    out = Path(out_dir)
    lm.eval().save_pretrained(out)
    tokenizer.save_pretrained(out)
    recipe = dict(steps=steps, seed=seed, batch_size=batch_size, blocks=blocks, lr=lr, final_loss=loss.item())
    recipe["train_seconds"] = round(time.perf_counter() - start, 1)
    (out / "recipe.json").write_text(json.dumps(recipe, indent=2) + "\n")
    return out


def load_reader(reader_dir: str | Path):
    """(lm, tokenizer) from a directory written by `train_vqa_reader`, the model in eval mode.

    The tokenizer is read exactly as its tokenizer.json says (`PreTrainedTokenizerFast`): transformers'
    `AutoTokenizer` gives every qwen2 directory Qwen2's byte-level BPE tokenizer, which cannot hold a word vocabulary.
    """
    return AutoModelForCausalLM.from_pretrained(reader_dir).eval(), PreTrainedTokenizerFast.from_pretrained(reader_dir)


def evaluate_vqa(
    reader_dir: str | Path, scenes: list[Scene], captions: list[str], *, shots: int = 0, seed: int = 0
) -> dict:
    """VQA accuracy of the reader at `reader_dir` answering questions about `scenes` from `captions` alone.

    The questions (`questions_for`) and each question's `shots` solved examples (ground-truth captions of
    training-split scenes) depend on `scenes` and `seed` only, so captions from different captioners meet the same
    questions. Returns {"accuracy", "per_type": {type: accuracy}, "questions", "shots"}, accuracies in [0, 1].
    """
    if len(scenes) != len(captions):
        raise ValueError(f"{len(captions)} captions for {len(scenes)} scenes")
    lm, tokenizer = load_reader(reader_dir)
    question_rng = random.Random(derive_seed(seed, "vqa/questions"))
    shot_rng = random.Random(derive_seed(seed, "vqa/shots"))
    pool = sample_scenes(1000, seed=derive_seed(seed, "vqa/shot_pool"), split="train")
    items, prompts = [], []
    for scene, caption in zip(scenes, captions):
        for question, answer in questions_for(scene, question_rng):
            items.append((question_type(question), answer))
            prompts.append(
                build_prompt(caption, question, [_solved(x, shot_rng) for x in shot_rng.sample(pool, shots)])
            )
    with _one_thread():
        predictions = answer_prompts(lm, tokenizer, prompts, batch_size=64)
    per_type: dict[str, list[float]] = {kind: [] for kind in QUESTION_TYPES}
    for (kind, answer), predicted in zip(items, predictions):
        per_type[kind].append(vqa_accuracy(predicted, [answer]))
    scores = [s for values in per_type.values() for s in values]
    return {
        "accuracy": sum(scores) / len(scores),
        "per_type": {kind: sum(v) / len(v) for kind, v in per_type.items() if v},
        "questions": len(scores),
        "shots": shots,
    }
