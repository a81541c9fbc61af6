"""`vlv train autoencoder|captioner` and `vlv cache-latents`: training from the command line.

Run in one process as `vlv train …`, or in many as `accelerate launch [--num_processes N] -m vlv train …` (DDP by
default; FSDP / DeepSpeed through `accelerate config`). Defaults come from the preset (`vlv.train.recipes`); every
flag left out keeps the preset's value. See `vlv.train.run` for checkpoints, resume and what a run writes.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import logging
from pathlib import Path

import torch

import vlv
from vlv.captioner import LORA_EXTRA, LoraSettings
from vlv.cli import source_flags, sources
from vlv.compositions import TIMESTEPS
from vlv.config import derive_seed
from vlv.train.loop import OPTIMIZERS
from vlv.train.recipes import PHASE_PARTS, preset_recipes
from vlv.train.run import MIXED_PRECISION, PhaseSpec, RunConfig, train


def add_commands(sub) -> None:
    p = sub.add_parser("train", help="train stage 1 (autoencoder) or stage 2 (captioner)")
    stages = p.add_subparsers(dest="stage", required=True)
    common = _common_flags()
    a = stages.add_parser("autoencoder", parents=[common], help="stage 1: the encoder against the frozen teacher")
    a.add_argument("--latents", default=None, help="a latent cache written by `vlv cache-latents` (instead of --data)")
    a.add_argument("--noises-per-image", type=int, default=None, help="noisy copies of each image per encoder pass")
    a.add_argument("--timesteps", choices=TIMESTEPS, default=None,
                   help="how each image's noisy copies draw t: uniform (the paper) or stratified")  # fmt: skip
    a.add_argument("--timestep-logit-normal", type=float, nargs=2, default=None, metavar=("MEAN", "STD"),
                   help="draw t/T from a logit-normal density (e.g. -0.5 1: more low-noise draws) instead of a "
                        "uniform one")  # fmt: skip
    a.add_argument("--empty-prompt-offset", action="store_true",
                   help="a new encoder's z starts at the teacher's empty prompt: z = φ(...) + its token embeddings "
                        "(with --preset)")  # fmt: skip
    a.add_argument("--steps", type=int, default=None, help="optimizer steps")
    a.set_defaults(func=run_autoencoder)
    c = stages.add_parser("captioner", parents=[common], help="stage 2: ψ + LLM (+ BART) on image-caption pairs")
    c.add_argument("--phase", choices=[*PHASE_PARTS, "all"], default="all",
                   help="one progressive phase, or all three in order (default)")  # fmt: skip
    c.add_argument("--steps", default=None, help="steps per phase: N, or N1,N2,N3 for the three phases of --phase all")
    # LoRA (default: the LLM trains fully, as in the paper)
    c.add_argument("--lora-rank", type=int, default=None,
                   help="train the LLM through LoRA adapters of this rank in phases llm and encoder, merged into it "
                   "at each phase end (needs peft)")  # fmt: skip
    c.add_argument("--lora-alpha", type=float, default=None, help="LoRA update scale: alpha / rank (default 2 × rank)")
    c.add_argument("--lora-dropout", type=float, default=None, help="dropout on the LoRA adapters' input (default 0)")
    c.add_argument("--conditioning-cache-gib", type=float, default=RunConfig.conditioning_cache_gib,
                   help="while the encoder is frozen (phases mlp, llm), keep each image's "
                   "conditioning on the device in at most this many GiB, not computed every step (0: off)")  # fmt: skip
    c.set_defaults(func=run_captioner, latents=None)

    cache = sub.add_parser(
        "cache-latents", parents=[source_flags()], help="encode training images once with the frozen VAE (stage 1)"
    )
    cache.add_argument("--preset", default=None, help="preset whose teacher encodes (tiny, shapes, paper)")
    cache.add_argument("--model", default=None, help="or a checkpoint directory")
    cache.add_argument("--data", required=True, help="images: a folder, parquet file(s) or tar shards")
    cache.add_argument("--out", required=True, help="cache directory")
    cache.add_argument("--batch-size", type=int, default=32, help="images per VAE pass")
    cache.add_argument("--shard-size", type=int, default=1000, help="images per cache shard")
    cache.add_argument("--device", default="cpu", help="torch device")
    cache.add_argument("--image-column", default="image", help="parquet image column")
    cache.add_argument("--caption-column", default="caption", help="parquet caption column")
    cache.set_defaults(func=run_cache)


def _common_flags() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False, parents=[source_flags()])
    # what to start from (and --florence / --teacher / --llm: local copies of the pretrained parts)
    p.add_argument("--preset", default=None, help="start from a preset (tiny, shapes, paper): its model and recipe")
    p.add_argument("--init", default=None, help="start from a checkpoint directory (stage 2: the stage-1 model)")
    # data and outputs
    p.add_argument(
        "--data", default=None, help="a folder, a parquet file or glob, or tar shards DIR/{00000..00009}.tar"
    )
    p.add_argument("--image-column", default="image", help="parquet: column of image structs {bytes, path}")
    p.add_argument("--caption-column", default="caption", help="parquet: caption column")
    p.add_argument("--out", required=True, help="run directory: checkpoints/, final/, run.json, loss.png, samples/")
    # optimisation (default: the preset's recipe)
    p.add_argument("--batch-size", type=int, default=None, help="global batch: images per step over all processes")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate")
    p.add_argument("--warmup-steps", type=int, default=None, help="linear warmup steps")
    p.add_argument("--weight-decay", type=float, default=None, help="AdamW weight decay")
    p.add_argument("--grad-clip", type=float, default=None, help="gradient norm clip")
    p.add_argument("--adam-betas", type=float, nargs=2, default=None, metavar=("BETA1", "BETA2"),
                   help="AdamW's betas (default 0.9 0.99, the paper's)")  # fmt: skip
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=None,
                   help="adamw (default), or muon: Muon for the hidden layers' weight matrices at AdamW's step RMS, "
                        "AdamW for the rest")  # fmt: skip
    p.add_argument("--lr-scale", nargs=2, action="append", default=None, metavar=("PREFIX", "FACTOR"),
                   help="parameters whose name starts with PREFIX (e.g. encoder.projection) train at FACTOR × the "
                        "learning rate; repeatable")  # fmt: skip
    p.add_argument("--ema-decay", type=float, default=None,
                   help="keep an EMA of the trained weights (e.g. 0.99); each phase ends with it")  # fmt: skip
    p.add_argument("--seed", type=int, default=None, help="seed of data order, noise and dropout")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per step on each process")
    # performance
    p.add_argument("--mixed-precision", choices=MIXED_PRECISION, default="no",
                   help="bf16: autocast forward, bf16 frozen weights, fp32 trained weights (GPU)")  # fmt: skip
    p.add_argument("--gradient-checkpointing", action="store_true", help="recompute UNet / LLM activations")
    p.add_argument("--compile", nargs="?", const="inductor", default=None, metavar="BACKEND",
                   help="torch.compile the encoder, text encoder, UNet and LLM (backend: inductor); the first steps "
                   "pay minutes of compilation, so it helps long runs only")  # fmt: skip
    p.add_argument("--num-workers", type=int, default=2, help="data-loading processes per training process")
    # checkpoints and logging
    p.add_argument("--save-every", type=int, default=1000, help="steps between checkpoints")
    p.add_argument("--keep", type=int, default=3, help="checkpoints kept (the newest)")
    p.add_argument("--resume", nargs="?", const=True, default=False,
                   help="continue from the newest readable checkpoint under OUT (or from the one given)")  # fmt: skip
    p.add_argument("--log-every", type=int, default=50, help="steps between log entries")
    p.add_argument("--preview", type=int, default=4, help="images in the sample grid at each save (0: none)")
    p.add_argument("--wandb", action="store_true", help="also log to Weights & Biases (when installed)")
    return p


def _optim(optim, args, **extra):
    changes = {"lr": args.lr, "warmup_steps": args.warmup_steps, "weight_decay": args.weight_decay,
               "grad_clip": args.grad_clip, "ema_decay": args.ema_decay,
               "betas": tuple(args.adam_betas) if args.adam_betas else None,
               "lr_scales": args.lr_scale,  # [[PREFIX, FACTOR], ...]: OptimConfig makes them (str, float) pairs
               "optimizer": args.optimizer,
               **extra}  # fmt: skip
    return dataclasses.replace(optim, **{k: v for k, v in changes.items() if v is not None})


def _run_config(args) -> RunConfig:
    return RunConfig(
        out=args.out, data=args.data, latents=args.latents, save_every=args.save_every, keep=args.keep,
        accumulation=args.grad_accum, mixed_precision=args.mixed_precision,
        gradient_checkpointing=args.gradient_checkpointing, compile=args.compile, num_workers=args.num_workers,
        log_every=args.log_every,
        image_column=args.image_column, caption_column=args.caption_column, preview=args.preview, wandb=args.wandb,
        conditioning_cache_gib=getattr(args, "conditioning_cache_gib", RunConfig.conditioning_cache_gib),
    )  # fmt: skip


def _start(args):
    """The accelerator, the model to start from, and the preset whose recipes give the defaults."""
    from accelerate import Accelerator
    from accelerate.utils import is_wandb_available

    if (args.preset is None) == (args.init is None):
        raise ValueError("give exactly one of --preset NAME and --init DIR")
    trackers = ["tensorboard"] + (["wandb"] if args.wandb and is_wandb_available() else [])
    # cpu=True without CUDA: several processes then form a gloo (MULTI_CPU) group instead of each running alone.
    acc = Accelerator(
        mixed_precision=args.mixed_precision, log_with=trackers, project_dir=str(Path(args.out) / "logs"),
        cpu=not torch.cuda.is_available(),
    )  # fmt: skip
    logging.basicConfig(
        level=logging.INFO if acc.is_main_process else logging.ERROR, format="%(levelname)s %(message)s"
    )
    model = vlv.load(args.preset or args.init, device=acc.device, **sources(args)).train()
    name = args.preset or model.config.name
    return acc, model, name


def _launch(args, acc, model, phases: list[PhaseSpec]) -> int:
    run = _run_config(args)
    resolved = {"model": model.config.to_dict(), "phases": [dataclasses.asdict(p) for p in phases],
                "run": dataclasses.asdict(run), "processes": acc.num_processes}  # fmt: skip
    resume = args.resume
    if resume is True and not any((Path(args.out) / "checkpoints").glob("step_*")):
        resume = False
        if acc.is_main_process:
            print(f"no checkpoint under {args.out}/checkpoints yet: starting from step 0")
    if acc.is_main_process:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "run.json").write_text(json.dumps(resolved, indent=2))
        print("resolved configuration:\n" + json.dumps({k: resolved[k] for k in ("phases", "run", "processes")}))
    acc.init_trackers("vlv", config={"phases": ",".join(p.name for p in phases), "processes": acc.num_processes})

    def load_model(directory):
        return vlv.load(directory, device=acc.device, **sources(args)).train()

    final = train(model, phases, run, acc, resume=resume, load_model=load_model)
    skipped = json.loads((Path(args.out) / "skipped.json").read_text()) if acc.is_main_process else {}
    if acc.is_main_process:
        print(f"release artifact: {final}")
        print(f"skipped {len(skipped)} unreadable inputs (listed in {Path(args.out) / 'skipped.json'})")
    return 0


def run_autoencoder(args) -> int:
    if args.empty_prompt_offset and args.init is not None:
        raise ValueError("--empty-prompt-offset shapes a new encoder: use it with --preset, not --init")
    acc, model, name = _start(args)
    if args.empty_prompt_offset:  # before the encoder is built (parts are built when first used)
        encoder = dataclasses.replace(model.config.encoder, empty_prompt_offset=True)
        model.config = dataclasses.replace(model.config, encoder=encoder)
    recipe, _ = preset_recipes(name)
    steps = args.steps if args.steps is not None else recipe.optim.steps
    seed = args.seed if args.seed is not None else recipe.optim.seed
    phase = PhaseSpec(
        "autoencoder", "autoencoder", tuple(recipe.trainable), _optim(recipe.optim, args, steps=steps, seed=seed),
        args.batch_size or recipe.batch_size, args.noises_per_image or recipe.noises_per_image,
        args.timesteps or recipe.timesteps,
        tuple(args.timestep_logit_normal) if args.timestep_logit_normal else recipe.timestep_logit_normal,
    )  # fmt: skip
    return _launch(args, acc, model, [phase])


def _lora(args) -> LoraSettings | None:
    """The --lora-* flags as settings (None without --lora-rank), checked before any model is built."""
    if args.lora_rank is None:
        if args.lora_alpha is not None or args.lora_dropout is not None:
            raise ValueError("--lora-alpha and --lora-dropout apply with --lora-rank only")
        return None
    if args.lora_rank < 1:
        raise ValueError(f"--lora-rank must be a positive integer, got {args.lora_rank}")
    if importlib.util.find_spec("peft") is None:
        raise ValueError(f"--lora-rank needs the peft library, which is not installed: {LORA_EXTRA}")
    alpha = args.lora_alpha if args.lora_alpha is not None else 2.0 * args.lora_rank
    return LoraSettings(args.lora_rank, alpha, args.lora_dropout or 0.0)


def run_captioner(args) -> int:
    lora = _lora(args)
    acc, model, name = _start(args)
    _, recipe = preset_recipes(name)
    chosen = [p for p in recipe.phases if args.phase in ("all", p.name)]
    steps = [p.optim.steps for p in chosen]
    if args.steps is not None:
        given = [int(s) for s in str(args.steps).split(",")]
        if len(given) not in (1, len(chosen)):
            raise ValueError(f"--steps takes one number or {len(chosen)} comma-separated numbers, got {args.steps}")
        steps = given * len(chosen) if len(given) == 1 else given
    if lora is not None and not any("caption_decoder.llm" in p.trainable for p in chosen):
        raise ValueError(f"--lora-rank: phase {args.phase} does not train the LLM; LoRA applies to phases llm, encoder")
    phases = []
    for p, n in zip(chosen, steps):
        seed = derive_seed(args.seed, p.name) if args.seed is not None else p.optim.seed
        optim = _optim(p.optim, args, steps=n, seed=seed)
        on_llm = lora if "caption_decoder.llm" in p.trainable else None  # ψ-only phases have no LLM to adapt
        phases.append(PhaseSpec(p.name, "captioner", tuple(p.trainable), optim, args.batch_size or recipe.batch_size,
                                lora=on_llm))  # fmt: skip
    return _launch(args, acc, model, phases)


def run_cache(args) -> int:
    from vlv.data.cache import write_cache
    from vlv.data.readers import open_source

    if (args.preset is None) == (args.model is None):
        raise ValueError("give exactly one of --preset NAME and --model DIR")
    model = vlv.load(args.preset or args.model, device=args.device, **sources(args))
    source = open_source(args.data, image_column=args.image_column, caption_column=args.caption_column)
    summary = write_cache(model.decoder, source, args.out, batch_size=args.batch_size, shard_size=args.shard_size)
    print(f"cached {summary['count']} images in {len(summary['shards'])} shards at {args.out}")
    print(f"skipped {len(summary['skipped'])} unreadable inputs")
    return 0
