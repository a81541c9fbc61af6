"""Caption embedding z → conditioning c through the frozen CLIP text encoder (paper §3.1).

z takes the place of CLIP's token embeddings: the text encoder adds its own position embeddings, runs its causal
transformer and final LayerNorm, and the result is the UNet's `encoder_hidden_states`. `CLIPTextModel.forward`
only accepts `input_ids`, so this is a thin function over the model's own submodules; it equals
`CLIPTextModel(input_ids).last_hidden_state` when z is that model's token embeddings of `input_ids`.
"""

from __future__ import annotations

import torch
from transformers import CLIPTextModel
from transformers.masking_utils import create_causal_mask


def encode_embeddings(text_encoder: CLIPTextModel, z: torch.Tensor) -> torch.Tensor:
    """z: (B, L, D) token embeddings (L ≤ 77) → c: (B, L, D), the text encoder's last hidden state."""
    hidden = text_encoder.embeddings(inputs_embeds=z)  # (B, L, D) + position embeddings
    mask = create_causal_mask(config=text_encoder.config, inputs_embeds=hidden, attention_mask=None, cache=None)
    hidden = text_encoder.encoder(inputs_embeds=hidden, attention_mask=mask, is_causal=True).last_hidden_state
    return text_encoder.final_layer_norm(hidden)  # (B, L, D)


def encode_token_ids(text_encoder: CLIPTextModel, input_ids: torch.Tensor) -> torch.Tensor:
    """input_ids: (B, L) → c: (B, L, D), through the same path as `encode_embeddings`."""
    return encode_embeddings(text_encoder, text_encoder.embeddings.token_embedding(input_ids))
