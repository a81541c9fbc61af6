"""The parts a VLV model is made of, the sub-parts that can train, and which tensors a checkpoint holds of each.

A part (`encoder`, `conditioner`, `decoder`, `caption_decoder`) is built as a whole; a sub-part (`encoder.queries`,
`caption_decoder.llm`, ...) is what `VLV.set_trainable` switches on and what a checkpoint's `weights` lists. Each
sub-part owns some prefixes of its part's state dict (`TRAINABLE`); a save writes the tensors under those prefixes,
each tied tensor once.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from vlv import captioner, encoder
from vlv.captioner import CaptionDecoder
from vlv.config import VLVConfig

# The parts a model is made of, in the order a save lists them.
PARTS = ("encoder", "conditioner", "decoder", "caption_decoder")
# Trainable parts: "<part>.<sub-part>" → the part's state-dict prefixes that sub-part owns.
TRAINABLE = {
    **{f"encoder.{name}": prefixes for name, prefixes in encoder.SUBPARTS.items()},
    **{f"caption_decoder.{name}": prefixes for name, prefixes in captioner.SUBPARTS.items()},
}
# The frozen copy of a stage-1 encoder that the model keeps for reconstruction, and the sub-parts a save can hold
# of it (the encoder's, under this prefix).
STAGE1 = "stage1_encoder"
STAGE1_SUBPARTS = tuple(f"{STAGE1}.{name}" for name in encoder.SUBPARTS)
# Which config section gives each sourced sub-part its pretrained weights; the others (queries, φ, ψ) are VLV's own.
SOURCED = {"encoder.vision": "encoder", "encoder.language_model": "encoder", "caption_decoder.llm": "captioner"}
# Where each part's pretrained weights come from: its config section, how an error names it, and the keyword of
# `load` (and CLI flag) that points it at a local copy.
SOURCES = {
    "encoder": ("encoder", "the encoder's Florence-2", "florence"),
    "conditioner": ("teacher", "the teacher's text encoder (a diffusers Stable Diffusion pipeline)", "teacher"),
    "decoder": ("teacher", "the teacher's UNet and VAE (a diffusers Stable Diffusion pipeline)", "teacher"),
    "caption_decoder": ("captioner", "the caption decoder's LLM", "llm"),
}


def subparts_of(part: str, subparts) -> list[str]:
    """The sub-parts (e.g. `encoder.queries`) among `subparts` that belong to `part` (e.g. `encoder`)."""
    return [s for s in subparts if s.split(".")[0] == part]


def with_sources(
    config: VLVConfig, *, florence: str | None = None, teacher: str | None = None, llm: str | None = None
) -> VLVConfig:
    """`config` with the sources that are given (a local directory or hub id) in place of its own: `florence` for
    the encoder, `teacher` for the diffusers pipeline, `llm` for the caption decoder."""
    given = {"encoder": florence, "teacher": teacher, "captioner": llm}
    changes = {
        section: dataclasses.replace(getattr(config, section), source=str(source))
        for section, source in given.items()
        if source is not None
    }
    return dataclasses.replace(config, **changes)


def tied_aliases(module: nn.Module) -> set[str]:
    """Names under which a parameter is reached a second time (tied weights: Qwen's `lm_head` is its input
    embedding, BART's encoder and decoder `embed_tokens` are its `shared`). A checkpoint stores each tensor once,
    under its first name; loading the first name fills the others, since they are the same parameter."""
    every = {name for name, _ in module.named_parameters(remove_duplicate=False)}
    return every - {name for name, _ in module.named_parameters()}


def subpart_state(module: nn.Module, subparts: list[str]) -> dict[str, torch.Tensor]:
    """The entries of a part's state dict that belong to the given sub-parts, each tied tensor once."""
    prefixes = tuple(p for s in subparts for p in TRAINABLE[s])
    # An LLM with LoRA adapters is saved without them, under its plain keys: the format stays that of a plain model.
    state = module.base_state_dict() if isinstance(module, CaptionDecoder) else module.state_dict()
    aliases = tied_aliases(module)
    return {k: v for k, v in state.items() if k.startswith(prefixes) and k not in aliases}
