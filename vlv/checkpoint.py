"""The one checkpoint format: a directory with `config.json` and `model.safetensors` (+ `tokenizer/`, `teacher/`).

    config.json         the `VLVConfig`; its `weights` field lists the parts model.safetensors holds
    model.safetensors   those parts' tensors, keyed `<part>.<module key>` (e.g. `encoder.queries`)
    tokenizer/          the caption decoder's tokenizer, when it was built
    teacher/            a teacher with no other source, in the diffusers layout
    training.json       the training recipe and log that produced the weights, when they were trained

Every part not in `weights` is built from its `source` (hub id or path; relative paths are relative to the
checkpoint directory), or from the seed when it has none. Reading is strict: a missing, unexpected or mis-shaped key
is an error naming the keys. Only safetensors are read; no pickles, no remote code.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from vlv.config import VLVConfig
from vlv.loading import untie

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TRAINING_NAME = "training.json"
TOKENIZER_DIR = "tokenizer"
TEACHER_DIR = "teacher"


def read_config(directory: Path) -> VLVConfig:
    """The config of the checkpoint at `directory`, with a clear error when it is not one."""
    if not (directory / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"{directory} is not a VLV checkpoint: no {CONFIG_NAME}")
    config = VLVConfig.from_dict(json.loads((directory / CONFIG_NAME).read_text()))
    if config.weights and not (directory / WEIGHTS_NAME).is_file():
        raise FileNotFoundError(f"{directory} is not a complete VLV checkpoint: no {WEIGHTS_NAME}")
    return config


def weight_shapes(directory: Path) -> dict[str, tuple[int, ...]]:
    """Key → shape of every tensor in the checkpoint's weights file, without reading the tensors."""
    path = directory / WEIGHTS_NAME
    if not path.is_file():
        return {}
    with safe_open(str(path), framework="pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


def read_tensors(directory: Path, prefix: str) -> dict[str, torch.Tensor]:
    """The tensors whose keys start with `prefix`, with the prefix removed."""
    with safe_open(str(directory / WEIGHTS_NAME), framework="pt") as f:
        return {k[len(prefix) :]: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}


def write_weights(directory: Path, state: dict[str, torch.Tensor]) -> None:
    """Write model.safetensors through a temporary name, so an interrupted save never leaves a truncated file."""
    # Contiguous CPU copies, each with its own storage: safetensors refuses tensors that share memory (tied LLM
    # embeddings).
    state = untie({k: v.detach().cpu().contiguous() for k, v in state.items()})
    tmp = directory / (WEIGHTS_NAME + ".tmp")
    save_file(state, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, directory / WEIGHTS_NAME)


def write_json(path: Path, content: dict | str) -> None:
    """Write a JSON file through a temporary name."""
    text = content if isinstance(content, str) else json.dumps(content, indent=1)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text.rstrip("\n") + "\n")
    os.replace(tmp, path)


def read_training(directory: str | os.PathLike) -> dict | None:
    """The training record saved beside a checkpoint's weights (recipe, time, log), or None."""
    path = Path(directory) / TRAINING_NAME
    return json.loads(path.read_text()) if path.is_file() else None


def pipeline_index(conditioner, decoder) -> dict:
    """model_index.json of the saved teacher folder, so that diffusers' `StableDiffusionPipeline.from_pretrained`
    loads it (and takes `vlv embed`'s prompt_embeds); it has no safety checker."""
    import diffusers

    return {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "text_encoder": ["transformers", type(conditioner.text_encoder).__name__],
        "tokenizer": ["transformers", type(conditioner.tokenizer).__name__],
        "unet": ["diffusers", type(decoder.unet).__name__],
        "vae": ["diffusers", type(decoder.vae).__name__],
        "scheduler": ["diffusers", type(decoder.scheduler).__name__],
        "safety_checker": [None, None],
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "requires_safety_checker": False,
    }
