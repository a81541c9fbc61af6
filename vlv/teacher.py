"""Training a small text-to-image teacher from scratch: the stand-in for a pretrained Stable Diffusion.

In the offline shapes world no pretrained diffusion model exists, so the project trains one once on (image,
caption) pairs — the same classes as SD (`CLIPTextModel` + `UNet2DConditionModel`), jointly from random init,
with caption dropout so that the empty prompt is a real unconditional branch for classifier-free guidance — and
then freezes and ships it in the diffusers layout, exactly as users download SD rather than train it.
"""

from __future__ import annotations

import copy
import json
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from vlv.diffusion import DiffusionDecoder
from vlv.train import warmup_cosine


@dataclass(frozen=True)
class TeacherTrainConfig:
    samples: int = 192_000  # training images seen in total (steps = samples / batch_size)
    batch_size: int = 32
    lr: float = 2e-3  # peak AdamW learning rate, reached after `warmup_steps`, then cosine decay to 0
    warmup_steps: int = 500
    weight_decay: float = 0.01
    caption_dropout: float = 0.1  # fraction of captions replaced by "" (the unconditional branch for CFG)
    ema_decay: float = 0.999  # the EMA weights are the ones saved and sampled from
    snapshot_every: int = 24_000  # samples between EMA snapshots under OUT/snapshots/
    seed: int = 0


def train_teacher(
    decoder: DiffusionDecoder,
    batches: Callable[[int], tuple[torch.Tensor, list[str]]],
    cfg: TeacherTrainConfig,
    out: Path,
    *,
    on_snapshot: Callable[[DiffusionDecoder, int], dict] | None = None,
) -> DiffusionDecoder:
    """Train `decoder`'s text encoder and UNet jointly; return the EMA copy, also saved to `out/`.

    batches(step) → (images (B, 3, S, S) in [0, 1], captions): the data, drawn by the caller.
    on_snapshot(ema_decoder, samples) → metrics, logged beside each snapshot (e.g. held-out quality).
    """
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    parts = [decoder.text_encoder, decoder.unet]
    for m in parts:
        m.requires_grad_(True).train()
    params = [p for m in parts for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay)
    ema = copy.deepcopy(decoder).requires_grad_(False)
    ema_params = [p for m in (ema.text_encoder, ema.unet) for p in m.parameters()]
    total = cfg.samples // cfg.batch_size
    log = []
    start = time.perf_counter()
    bar = tqdm(range(total), desc="teacher", unit="step")
    for step in bar:
        images, captions = batches(step)
        captions = ["" if rng.random() < cfg.caption_dropout else c for c in captions]
        latents = decoder.encode_images(images.to(decoder.device))
        loss = decoder.denoising_loss(latents, decoder.encode_prompts(captions))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"teacher loss is {loss.item()} at step {step}; last snapshot is kept in {out}")
        for g in opt.param_groups:
            g["lr"] = cfg.lr * warmup_cosine(step, total, cfg.warmup_steps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, params, 1 - cfg.ema_decay)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
        samples = (step + 1) * cfg.batch_size
        if samples % cfg.snapshot_every < cfg.batch_size or step == total - 1:
            entry = {"samples": samples, "seconds": time.perf_counter() - start, "loss": loss.item()}
            if on_snapshot is not None:
                entry.update(on_snapshot(ema, samples))
            ema.save_pretrained(str(out / "snapshots" / f"samples_{samples:07d}"))
            log.append(entry)
            (out / "log.json").write_text(json.dumps({"config": asdict(cfg), "log": log}, indent=2) + "\n")
            tqdm.write(json.dumps(entry))
    for m in parts:
        m.requires_grad_(False).eval()
    ema.save_pretrained(str(out / "final"))
    return ema
