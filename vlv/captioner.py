"""The caption decoder (paper §3.2): c → ψ → 77-token prefix of a causal LLM → caption.

ψ = Linear(d_clip, hidden)–GELU–Linear(hidden, d_llm). Training feeds [prefix ; caption tokens ; EOS] and scores
the caption tokens and the EOS only; generation feeds the prefix alone and stops at EOS, so captions end by
themselves (the official release trains no EOS and cuts text after the fact).

The LLM trains fully (as in the paper) or through LoRA adapters (Hu et al. 2021, via `peft`, optional): `add_lora`
wraps each attention and MLP projection in place, and `merge_lora` folds the adapters back in (W ← W + s·B·A) and
restores the plain `Qwen2ForCausalLM` modules, so that what is saved after a LoRA phase is an ordinary LLM.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

from vlv.config import CaptionerConfig, GenerateOptions
from vlv.loading import check_state_dict, load_hf_strict
from vlv.tokenizer import build_word_tokenizer

# The caption decoder's parts that can train, each with the state-dict prefixes it owns.
SUBPARTS = {"projector": ("projector.",), "llm": ("llm.",)}
# The Qwen2 layers that carry LoRA adapters: every attention and MLP projection (embeddings and head stay as they are).
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LORA_EXTRA = "pip install 'vlv[lora]'"  # how to get peft, the optional library LoRA needs


@dataclass(frozen=True)
class LoraSettings:
    """LoRA adapters on the LLM: each target y = W x becomes W x + (alpha / rank)·B A x, A: (rank, in) random,
    B: (out, rank) zero, so a phase starts from the LLM exactly as it was."""

    rank: int
    alpha: float  # the update's scale is alpha / rank (the CLI's default alpha = 2 × rank: scale 2)
    dropout: float = 0.0  # dropout on the adapters' input (training mode only)


def is_adapter_key(key: str) -> bool:
    """Whether a state-dict key or parameter name belongs to a LoRA adapter (peft's `…lora_A.default.weight`)."""
    return ".lora_A." in key or ".lora_B." in key


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
        self.lora: LoraSettings | None = None  # the adapters the LLM carries now (None: a plain LLM)
        self.set_trainable(())

    def set_trainable(self, parts: tuple[str, ...] | list[str]) -> None:
        """Choose which of `projector` (ψ) and `llm` get gradients; the others are frozen. Progressive unfreezing:
        phase 1 trains ψ only, phase 2 also the LLM. An LLM with LoRA adapters trains through them alone."""
        unknown = set(parts) - set(SUBPARTS)
        if unknown:
            raise ValueError(f"unknown caption decoder parts {sorted(unknown)}; choose from {tuple(SUBPARTS)}")
        self.projector.requires_grad_("projector" in parts)
        for name, p in self.llm.named_parameters():
            p.requires_grad_("llm" in parts and (self.lora is None or is_adapter_key(name)))

    # ----- LoRA ------------------------------------------------------------------------------------------------

    def add_lora(self, settings: LoraSettings) -> None:
        """Wrap the LLM's `LORA_TARGETS` in peft LoRA layers (in place: the LLM stays a Qwen2ForCausalLM). The
        adapters' random A is drawn from the global torch RNG: seed it to make them reproducible."""
        if self.lora is not None:
            raise ValueError(f"the LLM already carries LoRA adapters ({self.lora}); merge them first")
        try:
            from peft import LoraConfig, inject_adapter_in_model
        except ImportError as e:
            raise ImportError(f"LoRA on the LLM needs the peft library: {LORA_EXTRA}") from e
        config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                            target_modules=list(LORA_TARGETS))  # fmt: skip
        inject_adapter_in_model(config, self.llm)
        self.lora = settings

    def adapter_state(self) -> dict[str, torch.Tensor]:
        """The adapters' tensors, by the LLM's (peft) parameter names."""
        return {k: v for k, v in self.llm.state_dict().items() if is_adapter_key(k)}

    def load_adapter_state(self, tensors: dict[str, torch.Tensor]) -> None:
        """Load tensors saved by `adapter_state` into the adapters `add_lora` made (strictly: same names, shapes)."""
        check_state_dict(self.adapter_state(), tensors, "the saved LoRA adapters")
        self.llm.load_state_dict(tensors, strict=False)  # strict=False: the base weights are not in `tensors`

    def merge_lora(self) -> None:
        """Fold each adapter into its layer's weight (W ← W + (alpha / rank)·B·A) and put the plain layer back."""
        if self.lora is None:
            raise ValueError("the LLM carries no LoRA adapters to merge (see add_lora)")
        from peft.tuners.tuners_utils import BaseTunerLayer

        wrapped = [(name, m) for name, m in self.llm.named_modules() if isinstance(m, BaseTunerLayer)]
        for name, module in wrapped:
            module.merge()
            parent, child = name.rsplit(".", 1)
            setattr(self.llm.get_submodule(parent), child, module.get_base_layer())
        del self.llm.peft_config  # set by peft's injection: a plain LLM has none
        self.lora = None

    def base_state_dict(self) -> dict[str, torch.Tensor]:
        """The state dict with the LLM as it is without its adapters, under the plain Qwen2 keys: adapter entries
        left out, peft's `….base_layer.weight` read as `….weight`. These are the LLM's weights at the start of
        a LoRA phase, since its base weights do not train."""
        return {k.replace(".base_layer.", "."): v for k, v in self.state_dict().items() if not is_adapter_key(k)}

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
        logits = self.llm(inputs_embeds=inputs, attention_mask=attention, use_cache=False).logits  # (B, P+L, V)
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
