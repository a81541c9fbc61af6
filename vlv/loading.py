"""Strict weight loading: every missing, unexpected or mis-shaped key is an error that names the keys.

Pretrained third-party parts load through their own `from_pretrained` (safetensors only, no remote code); our
trained weights load from one `model.safetensors` (see `vlv.checkpoint`), checked key by key with `check_state_dict`.
"""

from __future__ import annotations

import torch


class CheckpointMismatchError(ValueError):
    """A checkpoint whose keys or shapes do not match the model it is loaded into."""


def _describe(keys, limit: int = 8) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", … ({len(keys) - limit} more)" if len(keys) > limit else "")


def check_state_dict(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], where: str) -> None:
    """Raise `CheckpointMismatchError` naming every key that is missing, unexpected or of the wrong shape."""
    missing = expected.keys() - found.keys()
    unexpected = found.keys() - expected.keys()
    mis_shaped = [
        f"{k} (checkpoint {tuple(found[k].shape)}, model {tuple(expected[k].shape)})"
        for k in expected.keys() & found.keys()
        if found[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_describe(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_describe(unexpected)}")
    if mis_shaped:
        problems.append(f"mis-shaped keys: {_describe(mis_shaped)}")
    if problems:
        raise CheckpointMismatchError(f"{where} does not match the model: " + "; ".join(problems))


def load_hf_strict(cls, source: str, *, revision: str | None = None, subfolder: str = ""):
    """`cls.from_pretrained(source)` for a transformers class that fails on any missing/unexpected/mis-shaped key."""
    model, info = cls.from_pretrained(
        source, revision=revision, subfolder=subfolder, use_safetensors=True, output_loading_info=True
    )
    problems = {k: v for k, v in info.items() if k != "error_msgs" and v}
    if problems or info.get("error_msgs"):
        where = f"{source}/{subfolder}" if subfolder else source
        raise CheckpointMismatchError(f"{where} does not match {cls.__name__}: {problems or info['error_msgs']}")
    return model


def untie(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors sharing memory (tied LLM embeddings): give each its own storage."""
    seen, out = set(), {}
    for k, v in state.items():
        ptr = v.untyped_storage().data_ptr()
        out[k] = v.clone() if ptr in seen else v
        seen.add(ptr)
    return out
