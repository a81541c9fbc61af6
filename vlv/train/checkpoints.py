"""Training checkpoints on disk: written atomically, the last K kept, the newest readable one found on resume.

    OUT/checkpoints/step_0001000/
        model/          the model as `VLV.save_pretrained` writes it (config.json + model.safetensors, …): loadable
                        on its own with `vlv.load`
        trainer.pt      optimizer, EMA, step, log (`Trainer.state_dict` less the weights, which model/ holds);
                        mid-way through a LoRA phase also the LLM's adapters (`adapters`: model/ holds its base)
        rank_00000.pt   this process's RNG states and data position (one file per process)
        state.json      run progress (phase, step) — written last: a directory without it is incomplete

A checkpoint is assembled in a hidden temporary directory and renamed into place only when complete, so a run
killed while saving leaves the previous checkpoints as they were. Every file is read back with
`torch.load(weights_only=True)`: nothing in a checkpoint can run code.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import torch

log = logging.getLogger(__name__)

STATE_NAME = "state.json"
MODEL_DIR = "model"
TRAINER_NAME = "trainer.pt"


def step_dir(root: Path, step: int) -> Path:
    return root / f"step_{step:07d}"


def rank_file(directory: Path, rank: int) -> Path:
    return directory / f"rank_{rank:05d}.pt"


def temporary_dir(root: Path, step: int) -> Path:
    """Where checkpoint `step` is assembled before `publish` renames it into place."""
    return root / f".tmp-step_{step:07d}"


def publish(root: Path, step: int, state: dict, keep: int) -> Path:
    """Finish a checkpoint assembled in `temporary_dir(root, step)`: write state.json, rename it into place, and
    delete all but the newest `keep` checkpoints. Main process only."""
    tmp, final = temporary_dir(root, step), step_dir(root, step)
    (tmp / STATE_NAME).write_text(json.dumps(state, indent=2))
    if final.exists():  # a checkpoint of the same step from an earlier attempt of this run
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in listed(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def listed(root: Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest first."""
    if not root.is_dir():
        return []
    found = [d for d in root.glob("step_*") if d.is_dir() and (d / STATE_NAME).is_file()]
    return sorted(found, key=lambda d: d.name)


def read(directory: Path, rank: int) -> dict:
    """Everything a process needs to continue from `directory`; raises on any unreadable or missing piece."""
    state = json.loads((directory / STATE_NAME).read_text())
    trainer = torch.load(directory / TRAINER_NAME, map_location="cpu", weights_only=True)
    mine = torch.load(rank_file(directory, rank), map_location="cpu", weights_only=True)
    if not (directory / MODEL_DIR / "config.json").is_file():
        raise FileNotFoundError(f"{directory / MODEL_DIR} holds no model")
    return {"state": state, "trainer": trainer, "rank": mine, "model": directory / MODEL_DIR}


def latest(root: Path, rank: int, load_model) -> tuple[dict, object]:
    """The newest checkpoint under `root` that reads back whole, with its model (`load_model(dir)`); a corrupt
    newer one is skipped with a warning. Raises FileNotFoundError when none is usable."""
    for directory in reversed(listed(root)):
        try:
            found = read(directory, rank)
            return found, load_model(found["model"])
        except Exception as e:  # any damage (truncated file, bad JSON, mismatched weights): try the one before
            log.warning("checkpoint %s is unreadable (%s: %s); falling back to the previous one", directory,
                        type(e).__name__, e)  # fmt: skip
    raise FileNotFoundError(f"no readable checkpoint under {root}")
