"""The caption decoder (paper §3.2): c → ψ → 77-token prefix of a causal LLM → caption.

ψ = Linear(d_clip, hidden)–GELU–Linear(hidden, d_llm). Training feeds [prefix ; caption tokens ; EOS] and scores
the caption tokens and the EOS only; generation feeds the prefix alone and stops at EOS, so captions end by
themselves (the official release trains no EOS and cuts text after the fact).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

from vlv.config import CaptionerConfig, GenerateOptions
from vlv.loading import load_hf_strict
from vlv.tokenizer import build_word_tokenizer

# The caption decoder's parts that can train, each with the state-dict prefixes it owns.
SUBPARTS = {"projector": ("projector.",), "llm": ("llm.",)}


class CaptionDecoder(nn.Module):
    """ψ and the causal LLM with its tokenizer. Built frozen: a training phase says what trains."""

    def __init__(self, cfg: CaptionerConfig, clip_dim: int, llm: nn.Module, tokenizer):
        super().__init__()
        self.cfg = cfg
        self.llm = llm
        self.tokenizer = tokenizer  # None only in an architecture-only build of a pretrained source
        if tokenizer is not None and tokenizer.eos_token_id is None:
            raise ValueError("the caption tokenizer has no EOS token; captions could not stop")
        d_llm = self.llm.config.hidden_size
        self.projector = nn.Sequential(
            nn.Linear(clip_dim, cfg.projector_hidden), nn.GELU(), nn.Linear(cfg.projector_hidden, d_llm)
        )
        self.set_trainable(())

    def set_trainable(self, parts: tuple[str, ...] | list[str]) -> None:
        """Choose which of `projector` (ψ) and `llm` get gradients; the others are frozen. Progressive unfreezing:
        phase 1 trains ψ only, phase 2 also the LLM."""
        unknown = set(parts) - set(SUBPARTS)
        if unknown:
            raise ValueError(f"unknown caption decoder parts {sorted(unknown)}; choose from {tuple(SUBPARTS)}")
        self.projector.requires_grad_("projector" in parts)
        self.llm.requires_grad_("llm" in parts)

    def train(self, mode: bool = True) -> CaptionDecoder:
        super().train(mode)
        if not any(p.requires_grad for p in self.llm.parameters()):
            # A frozen LLM (progressive phase 1) stays in eval mode: no dropout noise while ψ learns from it.
            self.llm.eval()
        return self

    @property
    def pad_id(self) -> int:
        tok = self.tokenizer
        return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def prefix(self, c: torch.Tensor) -> torch.Tensor:
        """c: (B, 77, d_clip) → prefix embeddings (B, 77, d_llm) in the LLM's dtype."""
        return self.projector(c.to(self.projector[0].weight.dtype)).to(self.llm.dtype)

    def tokenize(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Captions → (ids, mask) of [caption tokens ; EOS], right-padded. ids, mask: (B, L)."""
        eos = self.tokenizer.eos_token_id
        limit = self.cfg.max_caption_tokens
        seqs = [self.tokenizer(text, add_special_tokens=False).input_ids[:limit] + [eos] for text in captions]
        L = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), L), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), L), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        return ids, mask

    def loss(self, c: torch.Tensor, captions: list[str]) -> torch.Tensor:
        """Next-token cross-entropy on caption tokens and EOS, given the prefix. c: (B, 77, d_clip)."""
        prefix = self.prefix(c)  # (B, P, d)
        B, P, _ = prefix.shape
        ids, mask = (t.to(prefix.device) for t in self.tokenize(captions))  # (B, L)
        tokens = self.llm.get_input_embeddings()(ids)  # (B, L, d)
        inputs = torch.cat([prefix, tokens], dim=1)  # (B, P+L, d)
        attention = torch.cat([torch.ones((B, P), dtype=mask.dtype, device=mask.device), mask], dim=1)
        logits = self.llm(inputs_embeds=inputs, attention_mask=attention).logits  # (B, P+L, V)
        # Position P-1+i predicts caption token i; pads are ignored.
        pred = logits[:, P - 1 : -1].float()  # (B, L, V)
        labels = ids.masked_fill(mask == 0, -100)
        return F.cross_entropy(pred.reshape(-1, pred.shape[-1]), labels.reshape(-1), ignore_index=-100)

    @torch.no_grad()
    def generate(self, c: torch.Tensor, options: GenerateOptions) -> list[str]:
        """Captions for c: (B, 77, d_clip), decoded from the prefix alone; each stops at its first EOS."""
        prefix = self.prefix(c)
        out = self.llm.generate(
            inputs_embeds=prefix,
            attention_mask=torch.ones(prefix.shape[:2], dtype=torch.long, device=prefix.device),
            max_new_tokens=options.max_new_tokens,
            num_beams=options.num_beams,
            repetition_penalty=options.repetition_penalty,
            no_repeat_ngram_size=options.no_repeat_ngram_size,
            do_sample=False,
            eos_token_id=self.tokenizer.eos_token_id,
            pad_token_id=self.pad_id,
        )  # (B, new tokens): with inputs_embeds only, generate returns the new tokens alone
        return [self.decode(row) for row in out.tolist()]

    def decode(self, ids: list[int]) -> str:
        eos = self.tokenizer.eos_token_id
        if eos in ids:
            ids = ids[: ids.index(eos)]
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()


def build_caption_decoder(cfg: CaptionerConfig, clip_dim: int, *, pretrained: bool, tokenizer=None) -> CaptionDecoder:
    """The LLM from `cfg.source` when `pretrained` (strict), else random init from `cfg.arch`; ψ is always new.

    tokenizer: one saved with a checkpoint; by default the source's tokenizer, or a word-level one over
    `cfg.vocabulary` when there is no source.
    """
    if pretrained and cfg.source is not None:
        llm = load_hf_strict(AutoModelForCausalLM, cfg.source, revision=cfg.revision)
    else:
        llm = Qwen2ForCausalLM(Qwen2Config(**cfg.arch))
    if tokenizer is None and cfg.source is None:
        tokenizer = build_word_tokenizer(cfg.vocabulary, wrap_bos_eos=False)
    elif tokenizer is None and pretrained:
        tokenizer = AutoTokenizer.from_pretrained(cfg.source, revision=cfg.revision)
    return CaptionDecoder(cfg, clip_dim, llm, tokenizer)
