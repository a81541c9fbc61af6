"""Word-level tokenizers for small worlds (the tiny preset, the shapes world).

They are ordinary `PreTrainedTokenizerFast` objects (built with the `tokenizers` library), so they save, load and
pad like any hub tokenizer. Ids 0–3 are the special tokens <pad>, <bos>, <eos>, <unk>; words follow in order.
"""

from __future__ import annotations

from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")


def build_word_tokenizer(words: tuple[str, ...] | list[str], *, wrap_bos_eos: bool) -> PreTrainedTokenizerFast:
    """A whitespace word-level tokenizer over `words`.

    wrap_bos_eos: add <bos> … <eos> around every text (what a CLIP text encoder expects); a caption tokenizer
    for an LLM leaves them out, the caption decoder appends EOS itself.
    """
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if wrap_bos_eos:
        tok.post_processor = processors.TemplateProcessing(
            single="<bos> $A <eos>", special_tokens=[("<bos>", 1), ("<eos>", 2)]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", unk_token="<unk>"
    )
