"""The VLV encoder: image → caption embedding z (77 × d), paper §3.1.

Built on transformers' native Florence-2 (`Florence2Model`): the DaViT vision tower with its image projection and
LayerNorm (frozen) turns the image into visual tokens; those tokens followed by the embeddings of the task prompt
run through Florence's BART encoder; Florence's BART decoder takes `num_queries` learnable query embeddings as its
input sequence and cross-attends to the encoder output; φ = Linear–GELU–Linear maps the decoder output to z.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoTokenizer, Florence2Config, Florence2Model

from vlv.config import EncoderConfig
from vlv.images import bicubic_resize
from vlv.loading import load_hf_strict

# The encoder's parts that can train, each with the state-dict prefixes it owns. The paper's stage 1 trains BART
# (`language_model`), the queries and φ, and keeps the pretrained DaViT tower with its image projection frozen.
SUBPARTS = {
    "vision": ("florence.vision_tower.", "florence.multi_modal_projector."),
    "language_model": ("florence.language_model.",),
    "queries": ("queries",),
    "projection": ("projection.",),
}


def build_florence(cfg: EncoderConfig, *, pretrained: bool) -> Florence2Model:
    """Florence-2 from `cfg.source` when `pretrained` (strict), otherwise randomly initialised from `cfg.arch`."""
    if pretrained and cfg.source is not None:
        return load_hf_strict(Florence2Model, cfg.source, revision=cfg.revision)
    florence = Florence2Model(Florence2Config(**cfg.arch))
    if cfg.open_cross_attention:
        open_cross_attention(florence)
    return florence


def open_cross_attention(florence: Florence2Model) -> None:
    """Re-draw the BART decoder's cross-attention value and output projections at std d_model^-1/2 (random init only).

    At BART's own init (std 0.02) the decoder's output, hence z, barely depends on the image: on the shapes preset the
    across-image share of z is 0.006 at step 0 (0.65 once trained), and stage 1 first spends hundreds of steps growing
    it, for a time that varies widely with the seed. At d_model^-1/2 the image reaches the queries from step 0 (share
    ≈ 0.1). A pretrained Florence-2 has trained cross-attention and is left as it is.
    """
    std = florence.config.text_config.d_model**-0.5
    with torch.no_grad():
        for layer in florence.language_model.get_decoder().layers:
            for projection in (layer.encoder_attn.v_proj, layer.encoder_attn.out_proj):
                projection.weight.normal_(0.0, std)


def resolve_prompt_ids(cfg: EncoderConfig) -> tuple[int, ...]:
    """Token ids of the task prompt: from the config, or tokenized with the Florence source's own tokenizer."""
    if cfg.prompt_token_ids is not None:
        return tuple(cfg.prompt_token_ids)
    if cfg.source is None:
        raise ValueError("encoder config needs `prompt_token_ids` when it has no `source` tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(cfg.source, revision=cfg.revision)
    return tuple(tokenizer(cfg.task_prompt).input_ids)


class PromptOffset(nn.Module):
    """Adds fixed token embeddings to z: those of the teacher's empty prompt (`EncoderConfig.empty_prompt_offset`),
    set once by `start_at`; a buffer saved with φ, so that a checkpoint needs no teacher to embed."""

    def __init__(self, num_queries: int, z_dim: int):
        super().__init__()
        self.register_buffer("offset", torch.zeros(num_queries, z_dim))

    def start_at(self, embeddings: torch.Tensor) -> None:
        """embeddings: (≥ num_queries, z_dim) token embeddings; z starts at their first num_queries."""
        self.offset.copy_(embeddings[: len(self.offset)])

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z + self.offset


class VLVEncoder(nn.Module):
    def __init__(self, cfg: EncoderConfig, florence: Florence2Model, prompt_ids: tuple[int, ...]):
        super().__init__()
        self.cfg = cfg
        self.florence = florence
        d_model = florence.config.text_config.d_model
        # Why 0.02: BART's own initializer range, so the queries look like ordinary decoder inputs at step 0.
        self.queries = nn.Parameter(torch.randn(cfg.num_queries, d_model) * 0.02)
        self.projection = nn.Sequential(nn.Linear(d_model, cfg.z_dim), nn.GELU(), nn.Linear(cfg.z_dim, cfg.z_dim))
        if cfg.empty_prompt_offset:
            self.projection.append(PromptOffset(cfg.num_queries, cfg.z_dim))  # projection.3.offset
        self.register_buffer("prompt_ids", torch.tensor(prompt_ids, dtype=torch.long), persistent=False)
        self.register_buffer("image_mean", torch.tensor(cfg.image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(cfg.image_std).view(1, 3, 1, 1), persistent=False)
        self.set_trainable(())  # built frozen: a training recipe says what trains

    def set_trainable(self, parts: tuple[str, ...] | list[str]) -> None:
        """Choose which of `vision` (DaViT + image projection), `language_model` (BART), `queries`, `projection`
        get gradients; the others are frozen. The paper keeps the pretrained vision side frozen."""
        unknown = set(parts) - set(SUBPARTS)
        if unknown:
            raise ValueError(f"unknown encoder parts {sorted(unknown)}; choose from {tuple(SUBPARTS)}")
        self.set_vision_trainable("vision" in parts)
        self.florence.language_model.requires_grad_("language_model" in parts)
        self.queries.requires_grad_("queries" in parts)
        self.projection.requires_grad_("projection" in parts)

    def set_vision_trainable(self, trainable: bool) -> None:
        """Whether the vision side (DaViT + image projection) gets gradients; frozen, it runs without a backward and
        in eval mode in training. The other parts keep their state."""
        self.vision_trainable = trainable
        self.florence.vision_tower.requires_grad_(trainable)
        self.florence.multi_modal_projector.requires_grad_(trainable)

    def train(self, mode: bool = True) -> VLVEncoder:
        super().train(mode)
        if not self.vision_trainable:
            # A frozen vision side stays in eval mode (no drop-path noise) whatever the caller does.
            self.florence.vision_tower.eval()
            self.florence.multi_modal_projector.eval()
        if not any(p.requires_grad for p in self.florence.language_model.parameters()):
            # A frozen BART likewise: its dropout (0.1 in Florence-2-large) would only add noise to what trains.
            self.florence.language_model.eval()
        return self

    def visual_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """images: (B, 3, H, W) in [0, 1] → the vision side's output tokens (B, Nv, D), what BART reads."""
        x = bicubic_resize(images, (self.cfg.image_size,) * 2)
        x = (x.clamp(0, 1) - self.image_mean) / self.image_std
        with torch.set_grad_enabled(self.vision_trainable and torch.is_grad_enabled()):
            return self.florence.get_image_features(x.to(self.queries.dtype)).pooler_output

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images: (B, 3, H, W) in [0, 1] → z: (B, num_queries, z_dim)."""
        B = images.shape[0]
        visual = self.visual_tokens(images)  # (B, Nv, D)
        prompt = self.florence.get_input_embeddings()(self.prompt_ids).expand(B, -1, -1)  # (B, Np, D)
        bart = self.florence.language_model
        memory = bart.encoder(inputs_embeds=torch.cat([visual, prompt], dim=1)).last_hidden_state  # (B, Nv+Np, D)
        queries = self.queries.unsqueeze(0).expand(B, -1, -1)  # (B, Nq, D)
        hidden = bart.decoder(
            inputs_embeds=queries, encoder_hidden_states=memory, use_cache=False
        ).last_hidden_state  # (B, Nq, D)
        return self.projection(hidden)  # (B, Nq, z_dim)
