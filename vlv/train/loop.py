"""The one training loop: stage 1, each stage-2 phase, the paired-only baseline and the shapes teacher all run here.

`Trainer` trains any module whose `forward(batch)` returns a scalar loss (the compositions of `vlv.compositions`),
over the parameters that require grad. It owns the optimizer (AdamW), the schedule (linear warmup, then cosine
decay to zero over exactly the run's steps — the official release set its cosine period to 20k steps of a 200k-step
run, so its learning rate cycled), gradient clipping, an optional EMA of the trained weights, the NaN guard and the
log. Its whole state — trained weights, optimizer, EMA, step, log and every RNG — is one `state_dict()` that
`load_state_dict` restores: a run saved mid-way and continued gives the same weights, bit for bit, as the
uninterrupted run, provided the data is a function of the step (`batches(step)`).
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm


@dataclass(frozen=True)
class OptimConfig:
    """How one run optimises: AdamW with warmup + cosine decay over `steps` (paper: β = (0.9, 0.99), wd 0.01,
    gradient clip 1.0)."""

    steps: int
    lr: float = 5e-5  # peak learning rate, reached after `warmup_steps`
    warmup_steps: int = 0
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float = 1.0
    ema_decay: float | None = None  # keep an exponential moving average of the trained weights (None: no EMA)
    seed: int = 0  # seeds every RNG (torch, numpy, python) when the run starts: noise, timesteps, dropout


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """Learning-rate factor: linear warmup over `warmup` steps, then cosine decay to zero at step `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)  # also seeds every CUDA device
    np.random.seed(seed % 2**32)
    random.seed(seed)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    """Trains `model` (forward(batch) → loss) over its parameters that require grad."""

    def __init__(self, model: nn.Module, cfg: OptimConfig, *, desc: str = "train"):
        self.model, self.cfg, self.desc = model, cfg, desc
        self.params = {name: p for name, p in model.named_parameters() if p.requires_grad}
        if not self.params:
            raise ValueError(f"{desc}: nothing to train (no parameter requires grad; see VLV.set_trainable)")
        self.optimizer = torch.optim.AdamW(
            self.params.values(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay
        )
        self.ema = {n: p.detach().clone() for n, p in self.params.items()} if cfg.ema_decay is not None else None
        self.step = 0
        self.log: list[dict] = []
        self._running: list[float] = []  # losses since the last log entry
        self._seconds = 0.0  # training time before this process (a restored run keeps counting)
        seed_everything(cfg.seed)

    @property
    def lr(self) -> float:
        return self.cfg.lr * warmup_cosine(self.step, self.cfg.steps, self.cfg.warmup_steps)

    def train_step(self, batch) -> float:
        """One optimizer step on `batch`; returns the loss. A non-finite loss stops the run with a clear error."""
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr
        loss = self.model(batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{self.desc}: loss is {loss.item()} at step {self.step}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(self.params.values()), self.cfg.grad_clip)
        self.optimizer.step()
        if self.ema is not None:
            with torch.no_grad():
                torch._foreach_lerp_(list(self.ema.values()), list(self.params.values()), 1 - self.cfg.ema_decay)
        self.step += 1
        return loss.item()

    def run(
        self,
        batches: Callable[[int], object],
        *,
        until: int | None = None,
        log_every: int = 50,
        on_log: Callable[[dict], None] | None = None,
    ) -> list[dict]:
        """Train from the current step to `until` (default: the end of the run) on `batches(step)`.

        Every `log_every` steps (and at the last step) a log entry {step, loss (mean since the last entry), lr,
        seconds} is appended; `on_log(entry)` may add to it (e.g. held-out probes). Returns the whole log.
        """
        until = self.cfg.steps if until is None else until
        start = time.perf_counter() - self._seconds
        self.model.train()
        bar = tqdm(total=until, initial=self.step, desc=self.desc, unit="step")
        while self.step < until:
            lr = self.lr
            self._running.append(self.train_step(batches(self.step)))
            bar.update(1)
            if self.step % log_every == 0 or self.step == self.cfg.steps:
                self._seconds = time.perf_counter() - start
                entry = {"step": self.step, "loss": sum(self._running) / len(self._running), "lr": lr}
                entry["seconds"] = self._seconds
                self._running = []
                if on_log is not None:
                    on_log(entry)
                    self.model.train()
                self.log.append(entry)
                bar.set_postfix(loss=f"{entry['loss']:.4f}")
        bar.close()
        self._seconds = time.perf_counter() - start
        self.model.eval()
        return self.log

    def ema_state(self) -> dict[str, torch.Tensor]:
        """The EMA of the trained weights, by parameter name (the loop must have been built with `ema_decay`)."""
        if self.ema is None:
            raise ValueError(f"{self.desc}: no EMA is kept (OptimConfig.ema_decay is None)")
        return self.ema

    def state_dict(self) -> dict:
        """A snapshot of the whole run (copies, safe to keep while training goes on)."""
        return copy.deepcopy(
            {
                "step": self.step,
                "params": {n: p.detach() for n, p in self.params.items()},
                "optimizer": self.optimizer.state_dict(),
                "ema": self.ema,
                "rng": rng_state(),
                "log": self.log,
                "running": self._running,
                "seconds": self._seconds,
            }
        )

    def load_state_dict(self, state: dict) -> None:
        """Continue the run a `state_dict()` snapshot describes (same model, same config)."""
        if state["params"].keys() != self.params.keys():
            missing, unexpected = (
                self.params.keys() - state["params"].keys(),
                state["params"].keys() - self.params.keys(),
            )
            raise ValueError(f"{self.desc}: training state does not match the trained parameters: "
                             f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")  # fmt: skip
        with torch.no_grad():
            for name, p in self.params.items():
                p.copy_(state["params"][name])
        self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
        self.ema = copy.deepcopy(state["ema"])
        self.step = state["step"]
        self.log, self._running = copy.deepcopy(state["log"]), list(state["running"])
        self._seconds = state["seconds"]
        set_rng_state(state["rng"])
