"""Strict weight loading: every missing, unexpected or mis-shaped key is an error that names the keys.

Pretrained third-party parts load through their own `from_pretrained` (safetensors only, no remote code); our
trained weights load from one `model.safetensors` (see `vlv.checkpoint`), checked key by key with `check_state_dict`.
"""

from __future__ import annotations

import os

import torch


class CheckpointMismatchError(ValueError):
    """A checkpoint whose keys or shapes do not match the model it is loaded into."""


class SourceUnavailableError(OSError):
    """A pretrained part's source (hub id or local directory) that cannot be read: one message naming the part, the
    source tried and how to point at a local copy, instead of the hub's and the loaders' stack of errors."""


def source_unavailable(component: str, source: str, option: str, cause: BaseException) -> SourceUnavailableError:
    """The error for `component` (e.g. "the encoder's Florence-2") whose `source` could not be loaded; `option` is
    the keyword of `vlv.load` (and `--option` the CLI flag) that takes a local copy instead."""
    # The loaders' messages run over several lines and name the hub even for a local path: keep their first line.
    reason = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    if os.path.isdir(source):
        where = f"{source} does not hold it in the layout of its hub repository ({reason})"
        fetch = "download the repository into it with `hf download REPO_ID --local-dir DIR`"
    elif os.path.isabs(source) or source.startswith((".", "~")):
        where = f"there is no directory {source}"
        fetch = "download the repository with `hf download REPO_ID --local-dir DIR`"
    else:
        where = f"'{source}' could not be loaded from the Hugging Face hub (offline, not cached, or no such repository)"
        fetch = f"download it once with `hf download {source} --local-dir DIR`"
    return SourceUnavailableError(
        f"{component} is unavailable: {where}; {fetch}, then pass {option}=DIR (CLI: --{option} DIR)"
    )


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


def load_hf_strict(cls, source: str, *, revision: str | None = None, subfolder: str = "", dtype=torch.float32):
    """`cls.from_pretrained(source)` for a transformers class that fails on any missing/unexpected/mis-shaped key.

    The dtype is always explicit: transformers 5 otherwise loads in the checkpoint's own dtype ("auto"), so a bf16
    Qwen2.5 would arrive in bf16 beside fp32 parts and train in bf16 unannounced."""
    model, info = cls.from_pretrained(
        source, revision=revision, subfolder=subfolder, use_safetensors=True, output_loading_info=True, dtype=dtype
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
