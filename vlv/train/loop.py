"""The one training loop: stage 1, each stage-2 phase, the paired-only baseline and the shapes teacher all run here.

`Trainer` trains any module whose `forward(batch)` returns a scalar loss (the compositions of `vlv.compositions`),
over the parameters that require grad. It owns the optimizer (AdamW), the schedule (linear warmup, then cosine or
linear decay to zero over exactly the run's steps — the official release set its cosine period to 20k steps of a
200k-step run, so its learning rate cycled), gradient accumulation, gradient clipping, an optional EMA of the trained
weights, the non-finite guard and the log. Its whole state — trained weights, optimizer, EMA, step, log and every
RNG — is one `state_dict()` that `load_state_dict` restores: a run saved mid-way and continued gives the same
weights, bit for bit, as the uninterrupted run, provided the data is a function of the step (`batches(step)`).

Given an `accelerate.Accelerator`, the same loop runs under DDP (or any engine accelerate is configured for) and
mixed precision: the model and optimizer are prepared by accelerate, micro-batches before the last skip the gradient
all-reduce, and the forward runs under the accelerator's autocast while the trained weights stay fp32.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
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
    schedule: str = "cosine"  # decay after warmup: "cosine" (paper stage 1) or "linear" (paper stage 2)
    ema_decay: float | None = None  # keep an exponential moving average of the trained weights (None: no EMA)
    seed: int = 0  # seeds every RNG (torch, numpy, python) when the run starts: noise, timesteps, dropout
    # (name prefix, factor) pairs: trained parameters whose name starts with the prefix run at factor × the schedule's
    # learning rate (the first matching prefix wins; e.g. (("encoder.projection", 5.0),)). Empty: one learning rate.
    lr_scales: tuple[tuple[str, float], ...] = ()
    # "adamw", or "muon": Muon (orthogonalised momentum, its step size matched to AdamW's RMS so that `lr` carries
    # over) for the weight matrices of hidden layers, AdamW for the rest (see `muon_param`)
    optimizer: str = "adamw"

    def __post_init__(self):
        if self.ema_decay is not None and not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1) (e.g. 0.99), got {self.ema_decay}")
        # read back from JSON, the pairs are lists
        object.__setattr__(self, "lr_scales", tuple((str(prefix), float(f)) for prefix, f in self.lr_scales))
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1) (e.g. 0.9 0.99), got {self.betas}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer '{self.optimizer}'; choose one of {OPTIMIZERS}")
        bad = [(prefix, f) for prefix, f in self.lr_scales if not f > 0]
        if bad:
            raise ValueError(f"lr_scales factors must be positive, got {bad}")

    def lr_scale(self, name: str) -> float:
        """The factor on the learning rate of the parameter called `name` (1 when no prefix matches)."""
        return next((f for prefix, f in self.lr_scales if name.startswith(prefix)), 1.0)


# Fields added after records were first written, left out while unset: such a recipe reads as it did before (a
# cached run keyed by its recipe stays valid).
UNSET_OMITTED = {"lr_scales": [], "optimizer": "adamw", "empty_prompt_offset": False}
OPTIMIZERS = ("adamw", "muon")
# 2-D parameters that are tables or learned inputs, not weight matrices of a layer: AdamW trains them under Muon too
NOT_MATRICES = ("embed", "shared", "queries")


def muon_param(name: str, p: nn.Parameter) -> bool:
    """Whether Muon trains this parameter: the weight matrix of a hidden layer (2-D and not an embedding table or
    the learned queries). Biases, norms, convolutions and embeddings stay with AdamW."""
    return p.ndim == 2 and not any(part in name for part in NOT_MATRICES)


class Optimizers:
    """Several optimizers over disjoint parameters, stepped as one (their groups, state and snapshot together)."""

    def __init__(self, parts: list[torch.optim.Optimizer]):
        self.parts = parts

    @property
    def param_groups(self) -> list[dict]:
        return [group for part in self.parts for group in part.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for part in self.parts:
            part.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for part in self.parts:
            part.step()

    def state_dict(self) -> dict:
        return {"parts": [part.state_dict() for part in self.parts]}

    def load_state_dict(self, state: dict) -> None:
        if len(state.get("parts", ())) != len(self.parts):
            raise ValueError("optimizer state was saved with another optimizer (see OptimConfig.optimizer)")
        for part, saved in zip(self.parts, state["parts"], strict=True):
            part.load_state_dict(saved)


# Devices where AdamW runs as one fused kernel per parameter: on the CPU its default (one small op per update term and
# parameter) took 4.5 ms a step for the `small` preset's stage 1, the fused kernel 0.95 ms.
FUSED_ADAMW_DEVICES = ("cpu", "cuda")


def build_optimizer(params: dict[str, nn.Parameter], cfg: OptimConfig):
    """AdamW over `params` in one group per learning-rate scale, or (`cfg.optimizer == "muon"`) Muon over the hidden
    layers' weight matrices and AdamW over the rest (`Optimizers`). AdamW is the fused kernel where the parameters
    live on a device that has it (`FUSED_ADAMW_DEVICES`), the default implementation elsewhere."""
    fused = all(p.device.type in FUSED_ADAMW_DEVICES for p in params.values()) or None
    groups: dict[tuple[bool, float], list[nn.Parameter]] = {}
    for name, p in params.items():
        groups.setdefault((cfg.optimizer == "muon" and muon_param(name, p), cfg.lr_scale(name)), []).append(p)

    def part(muon: bool) -> torch.optim.Optimizer:
        chosen = [{"params": ps, "lr_scale": scale} for (m, scale), ps in groups.items() if m == muon]
        if not muon:
            return torch.optim.AdamW(chosen, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, fused=fused)
        return torch.optim.Muon(chosen, lr=cfg.lr, weight_decay=cfg.weight_decay, adjust_lr_fn="match_rms_adamw")

    if cfg.optimizer == "adamw":
        return part(False)
    return Optimizers([part(muon) for muon in (True, False) if any(m == muon for m, _ in groups)])


def recipe_dict(recipe) -> dict:
    """A recipe as JSON data (as it reads back from training.json: tuples become lists)."""

    def prune(x):
        if isinstance(x, dict):
            return {k: prune(v) for k, v in x.items() if not (k in UNSET_OMITTED and v == UNSET_OMITTED[k])}
        return [prune(v) for v in x] if isinstance(x, list) else x

    return prune(json.loads(json.dumps(dataclasses.asdict(recipe))))


SCHEDULES = ("cosine", "linear")
MAX_NONFINITE = 5  # consecutive non-finite steps before a run gives up


def warmup_cosine(step: int, total: int, warmup: int, schedule: str = "cosine") -> float:
    """Learning-rate factor: linear warmup over `warmup` steps, then cosine (or linear) decay to zero at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "linear":
        return 1.0 - progress
    if schedule != "cosine":
        raise ValueError(f"unknown learning-rate schedule '{schedule}'; choose one of {SCHEDULES}")
    return 0.5 * (1 + math.cos(math.pi * progress))


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)  # also seeds every CUDA device
    np.random.seed(seed % 2**32)
    random.seed(seed)


def rng_state() -> dict:
    """Every RNG of this process, as tensors, lists and numbers only (loadable with `torch.load(weights_only=True)`)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    """Trains `model` (forward(batch) → loss) over its parameters that require grad.

    accelerator: an `accelerate.Accelerator` to run under (DDP, mixed precision); None trains in this process as is.
    """

    def __init__(self, model: nn.Module, cfg: OptimConfig, *, desc: str = "train", accelerator=None):
        self.cfg, self.desc, self.accelerator = cfg, desc, accelerator
        self.params = {name: p for name, p in model.named_parameters() if p.requires_grad}
        if not self.params:
            raise ValueError(f"{desc}: nothing to train (no parameter requires grad; see VLV.set_trainable)")
        low = sorted(n for n, p in self.params.items() if p.dtype != torch.float32)
        if low:
            # AdamW steps at the paper's learning rates are below bf16 resolution: such weights would never move.
            raise ValueError(f"{desc}: trained weights must be float32 (master weights), got {low[:3]}; "
                             "see VLV.set_trainable, which keeps them float32")  # fmt: skip
        names = [n for n, _ in model.named_parameters()]  # a prefix may name a part frozen in this phase
        unmatched = [prefix for prefix, _ in cfg.lr_scales if not any(n.startswith(prefix) for n in names)]
        if unmatched:
            raise ValueError(f"{desc}: lr_scales prefixes {unmatched} match no parameter of the model "
                             f"(e.g. {', '.join(sorted(self.params)[:3])})")  # fmt: skip
        self.optimizer = build_optimizer(self.params, cfg)
        self.model = model
        if accelerator is not None and isinstance(self.optimizer, Optimizers):
            self.model, *self.optimizer.parts = accelerator.prepare(model, *self.optimizer.parts)
        elif accelerator is not None:
            self.model, self.optimizer = accelerator.prepare(model, self.optimizer)
        self.ema = {n: p.detach().clone() for n, p in self.params.items()} if cfg.ema_decay is not None else None
        self.step = 0
        self.log: list[dict] = []
        self.nonfinite = 0  # consecutive steps skipped for a non-finite loss or gradient
        self._running: list[float] = []  # losses since the last log entry
        self._norms: list[float] = []  # gradient norms (before clipping) of the finite steps since then
        self.grad_norm = float("nan")  # the last step's gradient norm before clipping
        self._seconds = 0.0  # training time before this process (a restored run keeps counting)
        seed_everything(cfg.seed)

    @property
    def lr(self) -> float:
        return self.cfg.lr * warmup_cosine(self.step, self.cfg.steps, self.cfg.warmup_steps, self.cfg.schedule)

    def train_step(self, batch) -> float:
        """One optimizer step on `batch` — or on a list of micro-batches whose gradients add up (each loss weighted
        by 1 / their number). Returns the loss (averaged over processes under an accelerator).

        A non-finite loss or gradient skips the update (the step still counts, so the data moves on); after
        `MAX_NONFINITE` such steps in a row the run stops with a clear error, leaving saved checkpoints as they are.
        """
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr * group.get("lr_scale", 1.0)  # a run saved before lr_scales has none
        micro = batch if isinstance(batch, list) else [batch]
        acc = self.accelerator
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=next(iter(self.params.values())).device)
        for i, mb in enumerate(micro):
            # Only the last micro-batch all-reduces gradients across processes.
            sync = i == len(micro) - 1 or acc is None
            with contextlib.nullcontext() if sync else acc.no_sync(self.model):
                loss = self.model(mb) / len(micro)
                if acc is None:
                    loss.backward()
                else:
                    acc.backward(loss)
            total += loss.detach().float()
        if acc is None:
            norm = torch.nn.utils.clip_grad_norm_(list(self.params.values()), self.cfg.grad_clip)
        else:
            total = acc.reduce(total, reduction="mean")
            norm = acc.clip_grad_norm_(list(self.params.values()), self.cfg.grad_clip)
        self.step += 1
        self.grad_norm = norm.item()
        if not (torch.isfinite(total) and torch.isfinite(norm)):
            self.optimizer.zero_grad(set_to_none=True)
            self.nonfinite += 1
            if self.nonfinite >= MAX_NONFINITE:
                raise FloatingPointError(
                    f"{self.desc}: loss or gradient non-finite for {self.nonfinite} steps in a row "
                    f"(last: loss {total.item()} at step {self.step - 1}); stopping"
                )
            return float("nan")
        self.nonfinite = 0
        self.optimizer.step()
        if self.ema is not None:
            with torch.no_grad():
                torch._foreach_lerp_(list(self.ema.values()), list(self.params.values()), 1 - self.cfg.ema_decay)
        return total.item()

    def run(
        self,
        batches: Callable[[int], object],
        *,
        until: int | None = None,
        log_every: int = 50,
        on_log: Callable[[dict], None] | None = None,
        on_step: Callable[[], None] | None = None,
        samples_per_step: int | None = None,
    ) -> list[dict]:
        """Train from the current step to `until` (default: the end of the run) on `batches(step)`.

        Every `log_every` steps (and at the last step) a log entry {step, loss (mean of the finite losses since the
        last entry), lr, seconds, grad_norm (their mean gradient norm before clipping), skipped (non-finite steps)} is
        appended; `on_log(entry)` may add to it (e.g. held-out probes). `on_step()` runs after every step (e.g. to save
        a checkpoint). samples_per_step: shown as samples/s on the progress bar. Returns the whole log.
        """
        until = self.cfg.steps if until is None else until
        start = time.perf_counter() - self._seconds
        self.model.train()
        main = self.accelerator is None or self.accelerator.is_main_process
        bar = tqdm(total=until, initial=self.step, desc=self.desc, unit="step", disable=not main)
        tick, tick_step = time.perf_counter(), self.step
        while self.step < until:
            lr = self.lr
            self._running.append(self.train_step(batches(self.step)))
            if math.isfinite(self._running[-1]):
                self._norms.append(self.grad_norm)
            bar.update(1)
            if self.step % log_every == 0 or self.step == self.cfg.steps:
                self._seconds = time.perf_counter() - start
                finite = [x for x in self._running if math.isfinite(x)]
                entry = {"step": self.step, "loss": sum(finite) / len(finite) if finite else float("nan"), "lr": lr}
                entry["seconds"] = self._seconds
                if self._norms:  # before clipping at `grad_clip`: how often, and how hard, clipping acts
                    entry["grad_norm"] = sum(self._norms) / len(self._norms)
                if len(finite) < len(self._running):
                    entry["skipped"] = len(self._running) - len(finite)
                self._running, self._norms = [], []
                if on_log is not None:
                    on_log(entry)
                    self.model.train()
                self.log.append(entry)
                postfix = {"loss": f"{entry['loss']:.4f}", "lr": f"{lr:.2e}"}
                if samples_per_step:
                    now = time.perf_counter()
                    postfix["samples/s"] = f"{samples_per_step * (self.step - tick_step) / (now - tick):.1f}"
                    tick, tick_step = now, self.step
                bar.set_postfix(postfix)
            if on_step is not None:
                on_step()
        bar.close()
        self._seconds = time.perf_counter() - start
        self.model.eval()
        return self.log

    def ema_state(self) -> dict[str, torch.Tensor]:
        """The EMA of the trained weights, by parameter name (the loop must have been built with `ema_decay`)."""
        if self.ema is None:
            raise ValueError(f"{self.desc}: no EMA is kept (OptimConfig.ema_decay is None)")
        return self.ema

    @contextlib.contextmanager
    def ema_weights(self):
        """Within the block the trained parameters hold their EMA (e.g. to probe it); restored on exit."""
        live = {n: p.detach().clone() for n, p in self.params.items()}
        self.adopt_ema()
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(list(self.params.values()), [live[n] for n in self.params])

    def adopt_ema(self) -> None:
        """The trained parameters take their EMA for good: the run's result (`OptimConfig.ema_decay`)."""
        ema = self.ema_state()
        with torch.no_grad():
            torch._foreach_copy_(list(self.params.values()), [ema[n] for n in self.params])

    def state_dict(self, *, weights: bool = True) -> dict:
        """A snapshot of the whole run (copies, safe to keep while training goes on). weights=False leaves out the
        trained weights (for a checkpoint that stores them with the model)."""
        params = {n: p.detach() for n, p in self.params.items()} if weights else None
        return copy.deepcopy(
            {
                "step": self.step,
                "params": params,
                "optimizer": self.optimizer.state_dict(),
                "ema": self.ema,
                "rng": rng_state(),
                "log": self.log,
                "running": self._running,
                "norms": self._norms,
                "seconds": self._seconds,
                "nonfinite": self.nonfinite,
            }
        )

    def load_state_dict(self, state: dict) -> None:
        """Continue the run a `state_dict()` snapshot describes (same model, same config). A snapshot without
        weights leaves the model's as they are (they were loaded with the model)."""
        if state["params"] is not None and state["params"].keys() != self.params.keys():
            missing, unexpected = (
                self.params.keys() - state["params"].keys(),
                state["params"].keys() - self.params.keys(),
            )
            raise ValueError(f"{self.desc}: training state does not match the trained parameters: "
                             f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")  # fmt: skip
        with torch.no_grad():
            for name, p in self.params.items():
                if state["params"] is not None:
                    p.copy_(state["params"][name])
        self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
        self.ema = copy.deepcopy(state["ema"])
        self.step = state["step"]
        self.log, self._running = copy.deepcopy(state["log"]), list(state["running"])
        self._norms = list(state.get("norms", []))  # a snapshot from before gradient norms were logged has none
        self._seconds = state["seconds"]
        self.nonfinite = state.get("nonfinite", 0)
        set_rng_state(state["rng"])
