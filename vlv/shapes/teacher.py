"""Training the shapes teacher from scratch: the stand-in for a pretrained Stable Diffusion.

In the offline shapes world no pretrained diffusion model exists, so the project trains one once on (image,
caption) pairs — the same classes as SD (`CLIPTextModel` + `UNet2DConditionModel`), jointly from random init,
with caption dropout so that the empty prompt is a real unconditional branch for classifier-free guidance — and
then freezes and ships it in the diffusers layout (`assets/shapes_teacher`), exactly as users download SD rather
than train it. It trains through the same loop as VLV (`vlv.train.Trainer`), with an EMA of the weights.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from vlv.conditioning import TextConditioner, build_text_conditioner
from vlv.config import TeacherConfig, derive_seed
from vlv.diffusion import DiffusionDecoder, build_diffusion_decoder
from vlv.eval.probe import prompt_losses
from vlv.shapes import preset
from vlv.shapes.world import render_batch, sample_scenes
from vlv.train.loop import OptimConfig, Trainer


@dataclass(frozen=True)
class TeacherRecipe:
    """The committed teacher's recipe: 192k samples = 6,000 steps of 32."""

    optim: OptimConfig = OptimConfig(
        steps=6000,
        lr=2e-3,
        warmup_steps=500,
        betas=(0.9, 0.999),
        ema_decay=0.999,  # the EMA is what is saved
    )
    batch_size: int = 32
    caption_dropout: float = 0.1  # fraction of captions replaced by "" (the unconditional branch for CFG)
    snapshot_every: int = 750  # steps between EMA snapshots under OUT/snapshots/ (24k samples)


class TextToImage(nn.Module):
    """The teacher as a composition: text encoder and UNet trained jointly; forward(batch) → denoising loss."""

    def __init__(self, conditioner: TextConditioner, decoder: DiffusionDecoder, caption_dropout: float):
        super().__init__()
        self.conditioner, self.decoder, self.caption_dropout = conditioner, decoder, caption_dropout
        # Both wrappers are built frozen for VLV; here their networks are what trains.
        self.conditioner.text_encoder.requires_grad_(True)
        self.decoder.unet.requires_grad_(True)

    def train(self, mode: bool = True) -> TextToImage:
        # Bypass the wrappers' always-eval: their networks train here.
        self.training = mode
        self.conditioner.text_encoder.train(mode)
        self.decoder.unet.train(mode)
        return self

    def forward(self, batch: dict) -> torch.Tensor:
        captions = batch["captions"]
        dropped = torch.rand(len(captions)) < self.caption_dropout  # global RNG, saved with the training state
        captions = ["" if d else c for d, c in zip(dropped.tolist(), captions)]
        latents = self.decoder.encode_images(batch["images"].to(self.decoder.device))
        return self.decoder.denoising_loss(latents, self.conditioner.encode_prompts(captions))


def teacher_batches(batch_size: int, seed: int, size: int):
    """batches(step) → {images (B, 3, size, size) in [0, 1], captions} of training-split scenes, seeded per step."""

    def batches(step: int) -> dict:
        scenes = sample_scenes(batch_size, seed=derive_seed(seed, f"teacher/{step}"), split="train")
        return {"images": torch.from_numpy(render_batch(scenes, size)), "captions": [s.caption for s in scenes]}

    return batches


def teacher_gap(conditioner: TextConditioner, decoder: DiffusionDecoder, n: int = 256, seed: int = 12345) -> dict:
    """Held-out denoising loss with the true caption vs the empty prompt, same noise and timesteps."""
    scenes = sample_scenes(n, seed=seed, split="heldout")
    images = torch.from_numpy(render_batch(scenes, decoder.cfg.image_size))
    losses = prompt_losses(conditioner, decoder, images, [s.caption for s in scenes], noises=1, seed=seed)
    cond, uncond = losses["loss_caption"], losses["loss_empty"]
    return {"heldout_loss_caption": cond, "heldout_loss_empty": uncond, "heldout_gap": 1 - cond / uncond}


def train_teacher(out: Path, recipe: TeacherRecipe, *, config: TeacherConfig | None = None, seed: int = 0) -> Path:
    """`vlv shapes train-teacher`: train a teacher from random init; EMA snapshots under out/snapshots/, the log in
    out/log.json, the final EMA teacher in out/final (a diffusers folder). Returns out/final."""
    config = config or preset.config(teacher=None).teacher
    out.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "teacher"))
        model = TextToImage(
            build_text_conditioner(config, pretrained=False),
            build_diffusion_decoder(config, pretrained=False),
            recipe.caption_dropout,
        )
    trainer = Trainer(model, dataclasses.replace(recipe.optim, seed=seed), desc="teacher")
    snapshots = []

    def ema_teacher() -> TextToImage:
        ema = copy.deepcopy(model).eval()
        with torch.no_grad():
            for name, p in ema.named_parameters():
                p.copy_(trainer.ema_state()[name])
        return ema

    def on_log(entry: dict) -> None:
        ema = ema_teacher()
        entry.update(samples=entry["step"] * recipe.batch_size, **teacher_gap(ema.conditioner, ema.decoder))
        folder = out / "snapshots" / f"samples_{entry['samples']:07d}"
        ema.conditioner.save_pretrained(str(folder))
        ema.decoder.save_pretrained(str(folder))
        snapshots.append(entry)
        record = {"recipe": json.loads(json.dumps(asdict(recipe))), "seed": seed, "log": snapshots}
        (out / "log.json").write_text(json.dumps(record, indent=2) + "\n")
        tqdm.write(json.dumps(entry))

    batches = teacher_batches(recipe.batch_size, seed, config.image_size)
    trainer.run(batches, log_every=recipe.snapshot_every, on_log=on_log)
    final = ema_teacher()
    final.conditioner.save_pretrained(str(out / "final"))
    final.decoder.save_pretrained(str(out / "final"))
    return out / "final"
