"""`vlv.load`: a model from a preset name or a checkpoint directory, on a device and in a dtype."""

from __future__ import annotations

import os
import warnings

import torch

from vlv.model import VLV
from vlv.parts import with_sources
from vlv.precision import slow_bf16_message
from vlv.presets import preset


def load(
    name_or_directory: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    florence: str | None = None,
    teacher: str | None = None,
    llm: str | None = None,
    stage1: str | os.PathLike | None = None,
) -> VLV:
    """A VLV model from a preset name (`tiny`, `shapes`, `paper`) or a checkpoint directory.

    Presets load each part's pretrained `source` (random init where there is none); a directory loads the weights
    saved by `save_pretrained`. Parts are built the first time a method needs them, on `device` and in `dtype`.

    florence, teacher, llm: a local directory (or another hub id) to use instead of the config's source of the
    encoder's Florence-2, the diffusers teacher pipeline, the caption decoder's LLM — e.g. a copy made with
    `hf download florence-community/Florence-2-large --local-dir DIR`. A source that cannot be read raises
    `SourceUnavailableError` (an OSError) when the part is first built.
    stage1: a stage-1 checkpoint whose encoder embeds for reconstruction (see `VLV.use_stage1`).
    """
    sources = dict(florence=florence, teacher=teacher, llm=llm)
    if os.path.isdir(name_or_directory):
        model = VLV.from_pretrained(name_or_directory, **sources)
    elif isinstance(name_or_directory, str) and "/" not in name_or_directory and os.sep not in name_or_directory:
        model = VLV(with_sources(preset(name_or_directory), **sources))
    else:
        raise FileNotFoundError(f"no VLV checkpoint directory at {name_or_directory}")
    if stage1 is not None:
        model.use_stage1(stage1)
    if dtype == torch.bfloat16 and (slow := slow_bf16_message(device)):
        warnings.warn(slow, stacklevel=2)
    return model.to(device=device, dtype=dtype).eval()
