"""Caption embedding z → conditioning c through the frozen CLIP text encoder (paper §3.1).

z takes the place of CLIP's token embeddings: the text encoder adds its own position embeddings, runs its causal
transformer and final LayerNorm, and the result is the UNet's `encoder_hidden_states`. `CLIPTextModel.forward`
only accepts `input_ids`, so this is a thin function over the model's own submodules; it equals
`CLIPTextModel(input_ids).last_hidden_state` when z is that model's token embeddings of `input_ids`.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModel
from transformers.masking_utils import create_causal_mask

from vlv.config import TeacherConfig
from vlv.loading import load_hf_strict
from vlv.tokenizer import build_word_tokenizer


def encode_embeddings(text_encoder: CLIPTextModel, z: torch.Tensor) -> torch.Tensor:
    """z: (B, L, D) token embeddings (L ≤ 77) → c: (B, L, D), the text encoder's last hidden state."""
    hidden = text_encoder.embeddings(inputs_embeds=z)  # (B, L, D) + position embeddings
    mask = create_causal_mask(config=text_encoder.config, inputs_embeds=hidden, attention_mask=None, cache=None)
    hidden = text_encoder.encoder(inputs_embeds=hidden, attention_mask=mask, is_causal=True).last_hidden_state
    return text_encoder.final_layer_norm(hidden)  # (B, L, D)


def encode_token_ids(text_encoder: CLIPTextModel, input_ids: torch.Tensor) -> torch.Tensor:
    """input_ids: (B, L) → c: (B, L, D), through the same path as `encode_embeddings`."""
    return encode_embeddings(text_encoder, text_encoder.embeddings.token_embedding(input_ids))


class TextConditioner(nn.Module):
    """The teacher's frozen CLIP text encoder with its tokenizer: z → c for VLV, prompts → c for the teacher.

    Frozen and in eval mode for good: gradients flow *through* it into z, never into its weights.
    """

    def __init__(self, text_encoder: CLIPTextModel, tokenizer):
        super().__init__()
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer  # None only in an architecture-only build of a pretrained teacher
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> TextConditioner:
        return super().train(False)

    @property
    def width(self) -> int:
        return self.text_encoder.config.hidden_size

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z: (B, 77, D) caption embeddings → c: (B, 77, D) UNet conditioning."""
        return encode_embeddings(self.text_encoder, z.to(self.text_encoder.dtype))

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """Text prompts → c: (B, 77, D), padded to the text encoder's length as the teacher was trained."""
        return encode_embeddings(self.text_encoder, self.prompt_embeddings(prompts))

    def prompt_embeddings(self, prompts: list[str]) -> torch.Tensor:
        """Text prompts → their token embeddings (B, 77, D), what z stands in for, padded as the teacher was trained."""
        length = self.text_encoder.config.max_position_embeddings
        ids = self.tokenizer(prompts, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
        return self.text_encoder.embeddings.token_embedding(ids.input_ids.to(self.text_encoder.device))

    def save_pretrained(self, directory: str) -> None:
        """Write `text_encoder/` and `tokenizer/` of a diffusers pipeline folder."""
        self.text_encoder.save_pretrained(f"{directory}/text_encoder")
        self.tokenizer.save_pretrained(f"{directory}/tokenizer")


def build_text_conditioner(cfg: TeacherConfig, *, pretrained: bool) -> TextConditioner:
    """From the teacher's pipeline folder (`text_encoder/`, `tokenizer/`) when `pretrained`, else random init."""
    if pretrained and cfg.source is not None:
        src, rev = cfg.source, cfg.revision
        model = load_hf_strict(CLIPTextModel, src, revision=rev, subfolder="text_encoder")
        return TextConditioner(model, AutoTokenizer.from_pretrained(src, revision=rev, subfolder="tokenizer"))
    # Random init: a word-level tokenizer over `vocabulary`. An architecture-only build of a pretrained teacher with
    # no vocabulary (SD) has no tokenizer; it is never used to encode prompts.
    tokenizer = build_word_tokenizer(cfg.vocabulary, wrap_bos_eos=True) if cfg.vocabulary else None
    return TextConditioner(CLIPTextModel(CLIPTextConfig(**cfg.text_encoder_arch)), tokenizer)
