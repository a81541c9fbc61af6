"""`vlv demo`: the embedded default job.

Until the offline shapes world lands, this is a smoke run of the whole model on the `tiny` preset: a few
stage-1 steps on random images (the encoder learns against the frozen random teacher), then caption,
reconstruct and compose, save the model and reload it. It shows that every path runs; it does not show learning
of anything meaningful — the tiny teacher is untrained.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from tqdm import trange

from vlv.config import preset
from vlv.images import to_pil
from vlv.model import VLV, load


def run_demo(out: Path, *, seed: int = 0, steps: int = 60) -> dict:
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    print("vlv demo: tiny-preset smoke run (the shapes demo replaces it; the tiny teacher is untrained)")
    torch.manual_seed(seed)
    model = VLV(preset("tiny"))
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=3e-3, betas=(0.9, 0.99), weight_decay=0.01)
    generator = torch.Generator().manual_seed(seed)

    def held_out_loss() -> float:
        # The same noise and timesteps before and after training, so the two numbers are comparable.
        with torch.no_grad():
            return model.autoencoder_loss(images, torch.Generator().manual_seed(seed + 1)).item()

    loss_before = held_out_loss()
    losses = []
    model.train()
    for _ in trange(steps, desc="stage-1 steps"):
        loss = model.autoencoder_loss(images, generator)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
    model.eval()
    loss_after = held_out_loss()
    model.save_pretrained(out / "model")
    reloaded = load(out / "model")
    captions = reloaded.caption(images)
    recon = reloaded.reconstruct(images, seed=seed)
    composed = reloaded.compose(images[:2], seed=seed)
    for i, im in enumerate(to_pil(torch.cat([recon, composed]))):
        im.save(out / f"sample_{i}.png")
    summary = {
        "preset": "tiny",
        "stage1_fixed_noise_loss_before": loss_before,
        "stage1_fixed_noise_loss_after": loss_after,
        "stage1_train_losses": losses,
        "captions": captions,
        "seconds_total": time.perf_counter() - start,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "stage1_train_losses"}, indent=2))
    print(f"wrote {out}/model, {out}/summary.json and sample PNGs")
    return summary


# ----------------------------------------------------------------------------------------------------------------
# The shapes teacher


def shapes_batches(batch_size: int, seed: int, size: int):
    """batches(step) → (images (B, 3, size, size) in [0, 1], captions) of training-split scenes, seeded per step."""
    from vlv.data.shapes import render_batch, sample_scenes

    def batches(step: int):
        scenes = sample_scenes(batch_size, seed=seed * 1_000_003 + step, split="train")
        return torch.from_numpy(render_batch(scenes, size)), [s.caption for s in scenes]

    return batches


def teacher_gap(decoder, n: int = 256, seed: int = 12345) -> dict:
    """Held-out denoising loss with the true caption vs the empty prompt, same noise and timesteps."""
    from vlv.data.shapes import render_batch, sample_scenes

    scenes = sample_scenes(n, seed=seed, split="heldout")
    images = torch.from_numpy(render_batch(scenes, decoder.cfg.image_size))
    with torch.no_grad():
        latents = decoder.encode_images(images)
        cond = decoder.denoising_loss(
            latents, decoder.encode_prompts([s.caption for s in scenes]), torch.Generator().manual_seed(seed)
        )
        uncond = decoder.denoising_loss(latents, decoder.encode_prompts([""] * n), torch.Generator().manual_seed(seed))
    return {
        "heldout_loss_caption": cond.item(),
        "heldout_loss_empty": uncond.item(),
        "heldout_gap": 1 - cond.item() / uncond.item(),
    }


def train_shapes_teacher(out: Path, cfg=None) -> None:
    """`vlv shapes train-teacher`: train the shapes teacher from scratch and save it (diffusers layout)."""
    from vlv.diffusion import DiffusionDecoder
    from vlv.teacher import TeacherTrainConfig, train_teacher

    cfg = cfg or TeacherTrainConfig()
    dcfg = preset("shapes").diffusion
    decoder = DiffusionDecoder(dcfg, pretrained=False)
    batches = shapes_batches(cfg.batch_size, cfg.seed, dcfg.image_size)
    train_teacher(decoder, batches, cfg, out, on_snapshot=lambda ema, samples: teacher_gap(ema))
