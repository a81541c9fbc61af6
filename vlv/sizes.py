"""Parameter counts of a preset per component, built on the meta device (no memory, no download)."""

from __future__ import annotations

import torch

from vlv.model import VLV
from vlv.presets import preset, stage1_parts
from vlv.train.recipes import PHASE_PARTS


def parameter_counts(preset_name: str) -> dict:
    """Total parameters per component, and how many train in stage 1 (the preset's recipe) and in stage 2 (the
    progressive phases together). Shared tensors (tied embeddings) are counted once."""
    with torch.device("meta"):
        model = VLV(preset(preset_name), pretrained=False)
        components = {
            "encoder": model.encoder,
            "text_encoder": model.conditioner,
            "unet": model.decoder.unet,
            "vae": model.decoder.vae,
            "projector": model.caption_decoder.projector,
            "llm": model.caption_decoder.llm,
        }
    out = {}
    for stage, parts in (("stage1", stage1_parts(preset_name)), ("stage2", PHASE_PARTS["encoder"])):
        model.set_trainable(parts)
        for name, module in components.items():
            params = {id(p): p for p in module.parameters()}.values() if module is not None else []
            out.setdefault(name, {"params": sum(p.numel() for p in params)})
            out[name][stage] = sum(p.numel() for p in params if p.requires_grad)
    return {"preset": preset_name, "components": out}
