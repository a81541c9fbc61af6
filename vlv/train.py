"""Training loops: stage 1 (the auto-encoder, images only) and stage 2 (the captioner, progressive phases).

Both are plain loops over a `batches(step)` callable supplied by the caller (the data pipeline lives elsewhere):
AdamW, linear warmup then cosine decay over exactly the run's steps (the official release set its cosine
period to 20k steps of a 200k-step run), gradient clipping, a NaN guard that stops with a clear error.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm import trange

from vlv.model import VLV


@dataclass(frozen=True)
class OptimConfig:
    steps: int
    batch_size: int = 32
    lr: float = 5e-5  # paper, both stages use small rates; small presets use larger ones
    head_lr_scale: float = 1.0  # learning-rate multiplier for the freshly initialised queries, φ and ψ
    warmup_steps: int = 0
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float = 1.0
    seed: int = 0


@dataclass(frozen=True)
class AutoencoderTrainConfig(OptimConfig):
    noises_per_image: int = 1  # K noisy copies of each image per encoder pass
    t_min: int = 0  # timesteps drawn from U{t_min..T-1}


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """Learning-rate factor: linear warmup over `warmup` steps, then cosine decay to zero at step `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def lr_factor(step: int, cfg: OptimConfig) -> float:
    """`warmup_cosine` over exactly the run's steps."""
    return warmup_cosine(step, cfg.steps, cfg.warmup_steps)


def make_optimizer(model: VLV, cfg: OptimConfig) -> tuple[torch.optim.Optimizer, list[torch.nn.Parameter]]:
    """AdamW over the parameters that require grad; fresh heads (queries, φ, ψ) get `head_lr_scale`."""
    head_ids = {id(model.encoder.queries)}
    head_ids |= {id(p) for m in (model.encoder.projection, model.captioner.projector) for p in m.parameters()}
    params = [p for p in model.parameters() if p.requires_grad]
    heads = [p for p in params if id(p) in head_ids]
    body = [p for p in params if id(p) not in head_ids]
    groups = [
        g for g in ({"params": body, "lr": cfg.lr}, {"params": heads, "lr": cfg.lr * cfg.head_lr_scale}) if g["params"]
    ]
    for g in groups:
        g["base_lr"] = g["lr"]
    opt = torch.optim.AdamW(groups, betas=cfg.betas, weight_decay=cfg.weight_decay)
    return opt, params


def run_steps(
    model: VLV,
    cfg: OptimConfig,
    loss_fn: Callable[[int], torch.Tensor],
    *,
    desc: str,
    log_every: int = 50,
    on_log: Callable[[dict], None] | None = None,
) -> list[dict]:
    """The shared loop: `loss_fn(step)` → loss; returns the log (step, loss, lr, seconds)."""
    opt, params = make_optimizer(model, cfg)
    model.train()
    log, start, running = [], time.perf_counter(), []
    bar = trange(cfg.steps, desc=desc, unit="step")
    for step in bar:
        factor = lr_factor(step, cfg)
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * factor
        loss = loss_fn(step)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{desc}: loss is {loss.item()} at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        running.append(loss.item())
        if (step + 1) % log_every == 0 or step == cfg.steps - 1:
            entry = {"step": step + 1, "loss": sum(running) / len(running), "lr": cfg.lr * factor}
            entry["seconds"] = time.perf_counter() - start
            running = []
            if on_log is not None:
                on_log(entry)
            log.append(entry)
            bar.set_postfix(loss=f"{entry['loss']:.4f}")
    model.eval()
    return log


def train_autoencoder(
    model: VLV,
    batches: Callable[[int], torch.Tensor | tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]],
    cfg: AutoencoderTrainConfig,
    **kwargs,
) -> list[dict]:
    """Stage 1: train the encoder's trainable parts against the frozen teacher on images alone.

    batches(step) → images (B, 3, H, W) in [0, 1] on the model's device, or (images, compositions) with
    compositions = (sources (P, 2, 3, H, W), composites (P, 3, H, W)) for the composition term of
    `VLV.autoencoder_loss`.
    """
    torch.manual_seed(cfg.seed)
    gen = torch.Generator(model.device).manual_seed(cfg.seed)

    def loss_fn(step: int) -> torch.Tensor:
        batch = batches(step)
        images, compositions = batch if isinstance(batch, tuple) else (batch, None)
        return model.autoencoder_loss(
            images, gen, noises_per_image=cfg.noises_per_image, t_min=cfg.t_min, compositions=compositions
        )

    return run_steps(model, cfg, loss_fn, desc="stage 1", **kwargs)


def train_captioner(
    model: VLV,
    batches: Callable[[int], tuple[torch.Tensor, list[str]]],
    cfg: OptimConfig,
    **kwargs,
) -> list[dict]:
    """Stage 2 (one progressive phase): next-token loss of captions given ψ(CLIP(z)).

    Which parts train is set on the model before the call (`captioner.set_trainable`, `encoder.set_trainable`).
    batches(step) → (images (B, 3, H, W) in [0, 1], captions).
    """
    torch.manual_seed(cfg.seed)

    def loss_fn(step: int) -> torch.Tensor:
        images, captions = batches(step)
        return model.captioner_loss(images, captions)

    return run_steps(model, cfg, loss_fn, desc="stage 2", **kwargs)
