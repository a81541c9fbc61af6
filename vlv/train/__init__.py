"""Training: the one loop (`Trainer`) and the stage recipes that drive it."""

from vlv.train.loop import OptimConfig, Trainer, warmup_cosine
from vlv.train.recipes import (
    AutoencoderRecipe,
    CaptionerRecipe,
    Phase,
    paired_only,
    progressive,
    train_autoencoder,
    train_captioner,
)

__all__ = [
    "AutoencoderRecipe",
    "CaptionerRecipe",
    "OptimConfig",
    "Phase",
    "Trainer",
    "paired_only",
    "progressive",
    "train_autoencoder",
    "train_captioner",
    "warmup_cosine",
]
