"""The one checkpoint format: a directory with `config.json` and `model.safetensors` (+ `tokenizer/`, `teacher/`).

    config.json         the `VLVConfig`; its `weights` field lists the parts model.safetensors holds
    model.safetensors   those parts' tensors, keyed `<part>.<module key>` (e.g. `encoder.queries`)
    tokenizer/          the caption decoder's tokenizer, when it was built
    teacher/            a teacher with no other source, in the diffusers layout
    training.json       the training recipe and log that produced the weights, when they were trained

Every part not in `weights` is built from its `source` (hub id or path; relative paths are relative to the
checkpoint directory), or from the seed when it has none. Reading is strict: a missing, unexpected or mis-shaped key
is an error naming the keys. Only safetensors are read; no pickles, no remote code. `VLV.save_pretrained` writes
through `save`, `VLV.from_pretrained` checks through `check_weights` before anything is built.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from vlv import encoder
from vlv.config import VLVConfig
from vlv.loading import CheckpointMismatchError, check_state_dict, untie
from vlv.parts import PARTS, STAGE1, STAGE1_SUBPARTS, TRAINABLE, subpart_state, subparts_of, tied_aliases

if TYPE_CHECKING:
    from vlv.model import VLV

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


# ----- a model's checkpoint ------------------------------------------------------------------------------------


def save(model: VLV, out: Path, *, training: dict | None = None) -> None:
    """`VLV.save_pretrained`: config.json with every source made absolute, model.safetensors with the sub-parts
    `model.stored_parts()` names (and the stage-1 copy's that differ), the tokenizer, the teacher when it has no
    other source, and `training` as training.json."""
    out.mkdir(parents=True, exist_ok=True)
    config, loaded_from = model.config, model.directory
    for section in ("encoder", "teacher", "captioner"):  # paths relative to the old directory become absolute
        source = model.resolved_source(section)
        config = dataclasses.replace(config, **{section: dataclasses.replace(getattr(config, section), source=source)})
    teacher = config.teacher.source
    if teacher is None or (loaded_from is not None and Path(teacher) == (loaded_from / TEACHER_DIR).resolve()):
        # A teacher with no other source travels inside the checkpoint, in the diffusers layout.
        model.conditioner.save_pretrained(str(out / TEACHER_DIR))
        model.decoder.save_pretrained(str(out / TEACHER_DIR))
        if model.decoder.vae is not None:  # a latent teacher is a Stable Diffusion pipeline: say so to diffusers
            write_json(out / TEACHER_DIR / "model_index.json", pipeline_index(model.conditioner, model.decoder))
        config = dataclasses.replace(config, teacher=dataclasses.replace(config.teacher, source=TEACHER_DIR))
    if "caption_decoder" in model.parts:
        model.caption_decoder.tokenizer.save_pretrained(out / TOKENIZER_DIR)
    elif loaded_from is not None and (loaded_from / TOKENIZER_DIR).is_dir():
        if out.resolve() != loaded_from.resolve():  # (saving over its own checkpoint: already there)
            shutil.copytree(loaded_from / TOKENIZER_DIR, out / TOKENIZER_DIR, dirs_exist_ok=True)
    stage1_names, state = _stage1_state(model)
    stored = model.stored_parts() + stage1_names
    for part in PARTS:
        subs = subparts_of(part, stored)
        if not subs:
            continue
        if part in model.parts:
            tensors = subpart_state(model.parts[part], subs)
        else:  # stored by the checkpoint this model came from and never built here: copy them over
            tensors = read_tensors(loaded_from, part + ".")
        state.update({f"{part}.{k}": v for k, v in tensors.items()})
    write_weights(out, state)
    write_json(out / CONFIG_NAME, dataclasses.replace(config, weights=tuple(stored)).to_json())
    if training is not None:
        write_json(out / TRAINING_NAME, training)


def _stage1_state(model: VLV) -> tuple[list[str], dict[str, torch.Tensor]]:
    """What a save holds of the model's stage-1 copy: the names (in `STAGE1_SUBPARTS`) of its sub-parts that differ
    from the encoder's, and their tensors (keys under `STAGE1.`)."""
    stored = [s for s in model.config.weights if s in STAGE1_SUBPARTS]
    if model.stage1_encoder is None and stored and "encoder" not in model.parts:  # never built: copy it over
        tensors = read_tensors(model.directory, STAGE1 + ".")
        return stored, {f"{STAGE1}.{k}": v for k, v in tensors.items()}
    kept = model.reconstruction_encoder()
    names, state = [], {}
    if kept is model.encoder:
        return names, state
    for sub in encoder.SUBPARTS:
        mine, theirs = subpart_state(kept, [f"encoder.{sub}"]), subpart_state(model.encoder, [f"encoder.{sub}"])
        if any(not torch.equal(mine[k], theirs[k]) for k in mine):
            names.append(f"{STAGE1}.{sub}")
            state.update({f"{STAGE1}.{k}": v for k, v in mine.items()})
    return names, state


def check_weights(config: VLVConfig, directory: Path, probe: VLV) -> None:
    """Compare the weights file with the parts `config` lists, strictly (names and shapes). probe: a model of
    `config` on the meta device, whose parts give the expected shapes without allocating anything."""
    unknown = set(config.weights) - set(TRAINABLE) - set(STAGE1_SUBPARTS)
    if unknown:
        raise CheckpointMismatchError(f"{directory}: config lists unknown parts {sorted(unknown)}")
    expected, aliases = {}, set()
    for part in (*PARTS, STAGE1):
        subs = subparts_of(part, config.weights)
        if subs:
            module = probe.part("encoder" if part == STAGE1 else part)  # the stage-1 copy has the encoder's shape
            subs = [f"encoder.{s.split('.', 1)[1]}" for s in subs] if part == STAGE1 else subs
            expected.update({f"{part}.{k}": v for k, v in subpart_state(module, subs).items()})
            aliases |= {f"{part}.{k}" for k in tied_aliases(module)}
    found = {k: torch.empty(shape, device="meta") for k, shape in weight_shapes(directory).items() if k not in aliases}
    check_state_dict(expected, found, str(directory / WEIGHTS_NAME))
