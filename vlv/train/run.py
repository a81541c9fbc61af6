"""Training runs as users launch them: `vlv train autoencoder|captioner`, in one process or under
`accelerate launch` (DDP by default; FSDP / DeepSpeed through accelerate's own config).

A run is a list of phases (stage 1: one; stage 2: the progressive phases, or one of them), each trained by the one
loop (`vlv.train.Trainer`) on data read by `vlv.data`:

- *Data.* A folder or a latent cache is read by index (`vlv.data.indexed`): step t's global batch is fixed by t
  alone, whatever the number of processes and accumulation steps, and so is every image's noise seed. Parquet files
  and tar shards are streamed (`vlv.data.stream`), split over ranks × workers, with positions recorded per slot.
- *Precision.* Trained weights are fp32 master weights; with `--mixed-precision bf16` the forward runs under
  autocast and the weights that never train in the run are stored in bf16.
- *Checkpoints* (`vlv.train.checkpoints`) every `save_every` steps and at the end of each phase: the model as
  `save_pretrained` writes it, the optimizer and schedule position, every RNG of every process and the data
  position. `resume` continues from the newest readable one, and the result equals the uninterrupted run bit for
  bit (CPU, fixed seed). The release artifact is `OUT/final` (config.json + model.safetensors).
- *LoRA.* A phase with `lora` trains the LLM through adapters, merged into it when the phase ends, so its end
  checkpoint and OUT/final hold a plain LLM. A checkpoint mid-way through it holds the LLM's base weights in model/
  and the adapters in trainer.pt (`adapters`), which resume puts back on the base weights before the optimizer.
  Under bf16 mixed precision the adapters are fp32 master weights and the LLM's base weights bf16 frozen ones.
- *Observability.* A progress bar with loss, lr and samples/s; tensorboard events (wandb too when asked for and
  installed); OUT/loss.png and a sample grid at each save; the resolved configuration in OUT/run.json.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from vlv.captioner import LoraSettings
from vlv.data.cache import CacheRecords
from vlv.data.indexed import FolderRecords, FromStep, IndexedBatches, sample_seed
from vlv.data.readers import open_source
from vlv.data.stream import DataStream
from vlv.images import UnreadableImage, decode_image, preprocess
from vlv.model import VLV
from vlv.precision import slow_bf16_message
from vlv.train import checkpoints
from vlv.train.loop import OptimConfig, Trainer, recipe_dict, rng_state, set_rng_state
from vlv.train.observe import image_grid, loss_curve_png

log = logging.getLogger(__name__)

MIXED_PRECISION = ("no", "bf16")


@dataclass(frozen=True)
class RunConfig:
    """How a run is driven — where its data and outputs are, how often it saves — not what it learns (the recipe)."""

    out: str  # OUT/checkpoints/step_NNNNNNN, OUT/final, OUT/run.json, OUT/loss.png, OUT/samples, OUT/logs
    data: str | None = None  # a folder, parquet file(s) or tar shards (see `vlv.data.readers.open_source`)
    latents: str | None = None  # a latent cache (`vlv cache-latents`) to read instead of `data` (stage 1)
    save_every: int = 1000  # steps between checkpoints (each phase also saves at its end)
    keep: int = 3  # checkpoints kept on disk (the newest)
    accumulation: int = 1  # micro-batches per optimizer step (per process)
    mixed_precision: str = "no"  # "bf16": autocast forward, bf16 frozen weights, fp32 trained weights
    gradient_checkpointing: bool = False  # recompute UNet / LLM activations in backward
    # torch.compile the networks a step runs with this backend ("inductor"; `VLV.compile_networks`); None: eager.
    # Compiling takes minutes: it pays back on long runs only.
    compile: str | None = None
    num_workers: int = 2  # data-loading processes per training process
    log_every: int = 50  # steps between log entries (loss, lr, samples/s)
    image_column: str = "image"  # parquet columns
    caption_column: str = "caption"
    preview: int = 4  # images in the sample grid written at each save (0: none)
    # Stage 2: while the encoder is frozen, each image's conditioning is computed once and kept on the
    # device, in at most this many GiB (`vlv.compositions.Captioner.conditions`); 0: computed at every step.
    conditioning_cache_gib: float = 1.0
    wandb: bool = False  # also log to Weights & Biases (when installed)


@dataclass(frozen=True)
class PhaseSpec:
    """One phase of a run: a name, what trains, how, on batches of what size."""

    name: str
    kind: str  # "autoencoder" (images only) or "captioner" (pairs)
    trainable: tuple[str, ...]
    optim: OptimConfig
    batch_size: int  # global batch: images per optimizer step over all processes
    noises_per_image: int = 1
    timesteps: str = "uniform"  # stage 1: how each image's noisy copies draw t (`vlv.compositions.TIMESTEPS`)
    timestep_logit_normal: tuple[float, float] | None = None  # stage 1: (mean, std) of logit(t/T); None: uniform
    lora: LoraSettings | None = None  # train the LLM (when in `trainable`) through LoRA adapters; None: fully


def _composition(model: VLV, phase: PhaseSpec, run: RunConfig):
    if phase.kind == "autoencoder":
        return model.autoencoder(
            noises_per_image=phase.noises_per_image,
            timesteps=phase.timesteps,
            timestep_logit_normal=phase.timestep_logit_normal,
        )
    return model.captioner(cache_bytes=int(run.conditioning_cache_gib * 2**30))


def _records(run: RunConfig, model: VLV, kind: str):
    """The run's data: a random-access sequence of records, or a streamed source."""
    if run.latents is not None:
        if kind != "autoencoder":
            raise ValueError("a latent cache feeds stage 1 only (the captioner does not use the VAE)")
        return CacheRecords(run.latents, model.decoder)
    if run.data is None:
        raise ValueError("no training data: pass --data (or --latents for stage 1)")
    source = open_source(run.data, image_column=run.image_column, caption_column=run.caption_column)
    return FolderRecords(source.units) if source.kind == "folder" else source


class Feed:
    """This process's micro-batches, step by step, moved to the device; remembers what it skipped and where the
    data stands (for a checkpoint)."""

    def __init__(self, data, phase: PhaseSpec, run: RunConfig, accelerator, *, image_size: int, seed: int,
                 start_step: int, position: dict | None):  # fmt: skip
        self.accelerator, self.phase, self.A = accelerator, phase, run.accumulation
        world, rank = accelerator.num_processes, accelerator.process_index
        self.rank_offset = rank * self.A
        self.b = phase.batch_size // (world * self.A)
        if phase.batch_size % (world * self.A):
            raise ValueError(f"global batch {phase.batch_size} does not split into {world} processes × {self.A} "
                             "accumulation steps")  # fmt: skip
        self.seed = seed
        self.skipped: dict[str, str] = {}
        captions = phase.kind == "captioner"
        workers = run.num_workers
        if isinstance(data, (FolderRecords, CacheRecords)):
            self.streamed = False
            dataset = IndexedBatches(
                data,
                image_size=image_size,
                global_batch=phase.batch_size,
                seed=seed,
                rank=rank,
                world_size=world,
                accumulation=self.A,
                require_captions=captions,
            )
            loader = DataLoader(dataset, batch_size=None, sampler=FromStep(start_step, self.A), num_workers=workers)
        else:
            self.streamed = True
            position = position or {"slots": {}, "consumed": 0}
            self.slots, self.consumed = dict(position["slots"]), position["consumed"]
            stream = DataStream(data, image_size=image_size, batch_size=self.b, seed=seed, rank=rank,
                                world_size=world, require_captions=captions, start=self.slots,
                                first_worker=self.consumed % max(1, workers))  # fmt: skip
            loader = DataLoader(stream, batch_size=None, num_workers=workers)
        self.iterator = iter(loader)

    def __call__(self, step: int) -> list[dict]:
        micro = []
        for m in range(self.A):
            batch = next(self.iterator)
            if self.streamed:
                self.slots[batch["slot"]] = batch["position"]
                self.consumed += 1
                first = step * self.phase.batch_size + (self.rank_offset + m) * self.b
                batch["seeds"] = torch.tensor([sample_seed(self.seed, first + i) for i in range(len(batch["keys"]))])
            elif batch["step"] != step:
                raise RuntimeError(f"data for step {batch['step']} arrived at step {step}")
            for key, reason in batch["skipped"]:
                if key not in self.skipped:
                    log.warning("skipped %s: %s", key, reason)
                    self.skipped[key] = reason
            micro.append(self._to_device(batch))
        return micro

    def _to_device(self, batch: dict) -> dict:
        device = self.accelerator.device
        out = {"images": batch["images"].to(device).float() / 255}  # (b, 3, S, S) in [0, 1]
        if self.phase.kind == "captioner":
            out["captions"] = batch["captions"]
            # each image named by its record (its index in a folder, its unit and key in a stream): no other image
            # of the data shares the name, so a frozen encoder's conditioning is computed once per image
            out["keys"] = batch["records"]
        else:
            out["seeds"] = batch["seeds"]
            if "moments" in batch:
                out["moments"] = batch["moments"].to(device)
        return out

    def position(self) -> dict:
        """Where the data stands: nothing beyond the step for indexed data; per-slot positions for a stream."""
        return {"slots": self.slots, "consumed": self.consumed} if self.streamed else {}


def _previews(data, n: int, image_size: int) -> torch.Tensor | None:
    """The first n readable images of the data, (n, 3, S, S) in [0, 1], for the sample grids."""
    found = []
    records = (data[i] for i in range(len(data))) if not hasattr(data, "units") else iter(data)
    for record in records:
        if len(found) == n:
            break
        try:
            if isinstance(record.data, dict):
                found.append(record.data["images"])
            elif not record.skip:
                found.append(preprocess(decode_image(record.data), image_size))
        except UnreadableImage:
            continue
    return torch.stack(found).float() / 255 if found else None


def train(
    model: VLV,
    phases: list[PhaseSpec],
    run: RunConfig,
    accelerator,
    *,
    resume: str | bool = False,
    load_model: Callable[[str | Path], VLV],
) -> Path:
    """Train `model` through `phases`; returns OUT/final. resume: True = the newest readable checkpoint under
    OUT/checkpoints, a path = that checkpoint. load_model(dir) rebuilds a model from a checkpoint's model/."""
    return _Run(model, phases, run, accelerator, resume=resume, load_model=load_model).train()


class _Run:
    """The state of one `train` call: the model, where each phase starts, the log and the skipped inputs so far."""

    def __init__(self, model, phases, run, accelerator, *, resume, load_model):
        if run.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"unknown mixed precision '{run.mixed_precision}'; choose one of {MIXED_PRECISION}")
        if run.mixed_precision == "bf16" and (slow := slow_bf16_message(accelerator.device)):
            log.warning("--mixed-precision bf16: %s", slow)
        self.phases, self.run, self.acc = phases, run, accelerator
        self.out = Path(run.out)
        self.root = self.out / "checkpoints"
        self.rank, self.main = accelerator.process_index, accelerator.is_main_process
        self.found = None
        if resume:
            if resume is True:
                self.found, model = checkpoints.latest(self.root, self.rank, load_model)
            else:
                self.found = checkpoints.read(Path(resume), self.rank)
                model = load_model(self.found["model"])
            log.info("resuming from %s", self.found["model"].parent)
            _check_same_phases(self.found, phases)
        self.model = model
        self.first_step = [0]  # run-wide step at which each phase starts (checkpoints are named by it)
        for phase in phases:
            self.first_step.append(self.first_step[-1] + phase.optim.steps)
        self.history: list[dict] = []  # log entries of finished phases
        self.skipped: dict[str, str] = {}  # inputs skipped by finished phases
        self.image_size = model.config.teacher.image_size

    def train(self) -> Path:
        state = self.found["state"] if self.found else None
        data = None
        for index, phase in enumerate(self.phases):
            if state is not None and (index < state["phase"] or (index == state["phase"] and state["phase_done"])):
                self.history += [e for e in state["log"] if e.get("phase") == phase.name]
                self.skipped.update(state.get("skipped", {}))
                continue
            if data is None or phase.kind != self.phases[index - 1].kind:
                data = _records(self.run, self.model, phase.kind)
            resumed = state is not None and index == state["phase"]
            self.train_phase(index, data, resumed)
        self.skipped = _gather_skipped(self.skipped, self.acc)
        final = self.out / "final"
        if self.main:
            training = {"phases": [dataclasses.asdict(p) for p in self.phases], "run": dataclasses.asdict(self.run),
                        "log": self.history}  # fmt: skip
            self.model.save_pretrained(final, training=training)
            (self.out / "skipped.json").write_text(json.dumps(self.skipped, indent=2))
        self.acc.wait_for_everyone()
        self.acc.end_training()
        return final

    def train_phase(self, index: int, data, resumed: bool) -> None:
        phase, run, model = self.phases[index], self.run, self.model
        model.set_trainable(phase.trainable, lora=phase.lora)
        composition = _composition(model, phase, run)
        if run.mixed_precision == "bf16":
            # Weights that train in some phase stay fp32 master weights throughout; the others may be bf16. An LLM
            # that trains through LoRA adapters only is a frozen weight too: its base in bf16 is what fits
            # Qwen2.5-3B on a 24 GB card, and the adapters' merge lands in bf16, as a plain bf16 model's would.
            keep = {p for ph in self.phases for p in ph.trainable if not (ph.lora and p == "caption_decoder.llm")}
            model.cast_untrained(torch.bfloat16, keep=keep)
        if run.gradient_checkpointing:
            model.set_gradient_checkpointing(True)
        if run.compile is not None:
            model.compile_networks(backend=run.compile)
        trainer = Trainer(composition, phase.optim, desc=phase.name, accelerator=self.acc)
        position = None
        if resumed:
            self.skipped.update(self.found["state"].get("skipped", {}))
            if phase.lora is not None:
                # The adapters go back onto the base weights model/ held before the optimizer state refers to them.
                model.caption_decoder.load_adapter_state(self.found["trainer"]["adapters"])
            trainer.load_state_dict(self.found["trainer"])
            set_rng_state(self.found["rank"]["rng"])  # this process's own RNGs
            position = self.found["rank"]["data"]
        feed = Feed(data, phase, run, self.acc, image_size=self.image_size, seed=phase.optim.seed,
                    start_step=trainer.step, position=position)  # fmt: skip
        preview = _previews(data, run.preview, self.image_size) if self.main and run.preview else None

        def on_step() -> None:
            if trainer.step % run.save_every == 0 and trainer.step < trainer.cfg.steps:
                self.save(index, trainer, feed, preview, done=False)
                if phase.kind == "captioner":
                    composition.clear_cache()  # as a run resumed from here starts (`Captioner.clear_cache`)

        def on_log(entry: dict) -> None:
            values = {f"{phase.name}/loss": entry["loss"], f"{phase.name}/lr": entry["lr"]}
            self.acc.log(values, step=self.first_step[index] + entry["step"])

        trainer.run(feed, log_every=run.log_every, on_log=on_log, on_step=on_step, samples_per_step=phase.batch_size)
        if trainer.ema is not None:
            trainer.adopt_ema()  # the phase's result is the EMA of its weights (checkpoints before kept both)
        if phase.lora is not None:
            model.merge_lora()  # the phase's end checkpoint, and all that follow, hold a plain, trained LLM
        self.save(index, trainer, feed, preview, done=True)
        self.history += [{**e, "phase": phase.name} for e in trainer.log]
        self.skipped.update(feed.skipped)
        model.set_trainable(())

    def save(self, index: int, trainer: Trainer, feed: Feed, preview: torch.Tensor | None, *, done: bool) -> None:
        """Checkpoint the run after `trainer.step` steps of phase `index` (all processes take part)."""
        phase, acc = self.phases[index], self.acc
        step = self.first_step[index] + trainer.step
        tmp = checkpoints.temporary_dir(self.root, step)
        if self.main:
            tmp.mkdir(parents=True, exist_ok=True)
        acc.wait_for_everyone()
        torch.save({"rng": rng_state(), "data": feed.position()}, checkpoints.rank_file(tmp, self.rank))
        acc.wait_for_everyone()
        if self.main:
            self.model.save_pretrained(tmp / checkpoints.MODEL_DIR)
            trained = trainer.state_dict(weights=False)
            if phase.lora is not None and not done:
                # Mid-phase, model/ holds the LLM's base weights: its trained weights are the adapters.
                trained["adapters"] = self.model.caption_decoder.adapter_state()
            torch.save(trained, tmp / checkpoints.TRAINER_NAME)
            entries = self.history + [{**e, "phase": phase.name} for e in trainer.log]
            state = {"phase": index, "phase_name": phase.name, "step": trainer.step, "phase_done": done,
                     "log": entries, "skipped": {**self.skipped, **feed.skipped},
                     "lora": dataclasses.asdict(phase.lora) if phase.lora is not None else None,
                     "phases": _phase_records(self.phases)}  # fmt: skip
            checkpoints.publish(self.root, step, state, self.run.keep)
            loss_curve_png(entries, self.out / "loss.png")
            if preview is not None:
                _sample_grid(self.model, phase, preview, self.out / "samples" / f"step_{step:07d}.png", acc)
                trainer.model.train()  # the grid ran the model in eval mode
        acc.wait_for_everyone()


def _phase_records(phases: list[PhaseSpec]) -> list[dict]:
    """The phases as JSON data (as they read back from state.json)."""
    return [recipe_dict(p) for p in phases]


def _check_same_phases(found: dict, phases: list[PhaseSpec]) -> None:
    """A run resumes only with the recipe that wrote its checkpoint: another step count would change the schedule
    under the saved optimizer, other LoRA flags the saved adapters."""
    saved, asked = found["state"].get("phases"), _phase_records(phases)
    if saved is not None and saved != asked:
        where = next((i for i, (a, b) in enumerate(zip(saved, asked)) if a != b), min(len(saved), len(asked)))
        a = saved[where] if where < len(saved) else None
        b = asked[where] if where < len(asked) else None
        fields = sorted(k for k in {**(a or {}), **(b or {})} if (a or {}).get(k) != (b or {}).get(k))
        raise ValueError(f"{found['model'].parent} was written by another recipe (phase {where}: {fields} differ: "
                         f"saved {[(a or {}).get(k) for k in fields]}, asked {[(b or {}).get(k) for k in fields]}); "
                         "resume with the flags of the run that wrote it")  # fmt: skip


def _gather_skipped(skipped: dict[str, str], accelerator) -> dict[str, str]:
    """Every process's skipped inputs, merged (on every process)."""
    if accelerator.num_processes == 1:
        return skipped
    from accelerate.utils import gather_object

    merged = {}
    for part in gather_object([skipped]):
        merged.update(part)
    return merged


@torch.no_grad()
def _sample_grid(model: VLV, phase: PhaseSpec, images: torch.Tensor, path: Path, accelerator) -> None:
    """Originals over reconstructions (stage 1), or originals with their captions (stage 2)."""
    images = images.to(accelerator.device)
    with accelerator.autocast():
        if phase.kind == "autoencoder":
            image_grid([images, model.reconstruct(images).float()], path)
        else:
            captions = model.caption(images)
            image_grid([images], path, captions=captions)
            path.with_suffix(".json").write_text(json.dumps(captions, indent=2))
