"""`vlv caption`, `vlv reconstruct`, `vlv compose` and `vlv embed`: inference with a saved model (or a preset) on
image files. Parsing only; the work is `vlv.infer`'s.

`vlv caption` also runs in several processes, `accelerate launch [--multi_gpu] --num_processes N -m vlv caption …`,
the inputs split across them and their captions merged into the one --out file; the other commands run in one.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

from vlv import infer
from vlv.cli import dtype_flags, load_model, source_flags

INPUTS_HELP = "image files, folders (searched recursively) or list files (.txt / .lst: one path a line)"


def model_flags() -> argparse.ArgumentParser:
    """Flags shared by the inference commands: the model, the device, the images."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("images", nargs="+", help=INPUTS_HELP)
    p.add_argument("--model", required=True, help="checkpoint directory or preset name")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (under accelerate: its own)")
    return p


def batch_flags() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--batch-size", type=int, default=16, help="images per model call")
    return p


def stage1_flags() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--stage1", default=None, help="stage-1 checkpoint whose encoder embeds (for a converted captioner)")
    return p


def sample_flags() -> argparse.ArgumentParser:
    """The fields of `vlv.SampleOptions` (default: the model's own), and the seed."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--steps", type=int, default=None, help="sampling steps")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale")
    p.add_argument("--sampler", choices=["dpm++", "ddpm"], default=None, help="sampling scheduler")
    p.add_argument("--guidance-interval", type=float, default=None,
                   help="guide the first fraction of the steps only, e.g. 0.7 (default 1: every step)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="sampling seed (of each batch's noise)")
    return p


def sample_options(args: argparse.Namespace) -> dict:
    """The `sample_flags` given, as `SampleOptions` overrides (None: the model's own)."""
    names = ("steps", "guidance", "sampler", "guidance_interval")
    return {name: getattr(args, name) for name in names}


def generate_flags() -> argparse.ArgumentParser:
    """The fields of `vlv.GenerateOptions` (default: the model's own)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--max-new-tokens", type=int, default=None, help="caption length limit")
    p.add_argument("--num-beams", type=int, default=None, help="beam width (1 = greedy)")
    p.add_argument("--repetition-penalty", type=float, default=None, help="> 1 discourages repeated tokens")
    p.add_argument("--no-repeat-ngram-size", type=int, default=None, help="> 0 forbids repeating n-grams")
    return p


def add_commands(sub) -> None:
    common = [model_flags(), source_flags(), dtype_flags(), batch_flags()]
    p = sub.add_parser(
        "caption", parents=[*common, generate_flags()], help="caption images into JSON lines (resumable)"
    )
    p.add_argument("--out", default=None, help="JSON-lines file, resumed if it exists (default: stdout, not resumed)")
    p.set_defaults(func=caption)

    p = sub.add_parser(
        "reconstruct", parents=[*common, stage1_flags(), sample_flags()],
        help="reconstruct images through the frozen teacher: PNGs + contact sheet",
    )  # fmt: skip
    p.add_argument("--out", required=True, help=f"folder for the PNGs and {infer.SHEET_NAME}")
    p.set_defaults(func=reconstruct)

    p = sub.add_parser(
        "compose", parents=[source_flags(), dtype_flags(), stage1_flags(), sample_flags()],
        help="one image from several: their z spliced, decoded by the teacher",
    )  # fmt: skip
    p.add_argument("images", nargs="+", help="two or more image files, in splice order")
    p.add_argument("--model", required=True, help="checkpoint directory or preset name")
    p.add_argument("--device", default="cpu", help="torch device")
    p.add_argument("--splits", default=None, help="z tokens from each image, e.g. 39,38 (sum 77; default: equal)")
    p.add_argument("--out", required=True, help="PNG file")
    p.set_defaults(func=compose)

    p = sub.add_parser(
        "embed", parents=[*common, stage1_flags()],
        help="caption embeddings (z, and the UNet conditioning as prompt_embeds) to a safetensors file",
    )  # fmt: skip
    p.add_argument("--out", required=True, help="safetensors file")
    p.set_defaults(func=embed)


def _launched_world() -> int:
    """The number of processes this one was started among (`accelerate launch` / torchrun set WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def _one_process(command: str) -> None:
    if _launched_world() > 1:
        raise ValueError(f"{command} runs in one process: start it without accelerate launch")


def _report_skipped(command: str, failed: dict[str, str]) -> None:
    for path, reason in failed.items():
        print(f"vlv {command}: skipped {path}: {reason}", file=sys.stderr)


def caption(args: argparse.Namespace) -> int:
    accelerator, device = None, args.device
    if _launched_world() > 1:
        from accelerate import Accelerator

        # cpu=True without CUDA: the processes then form a gloo (MULTI_CPU) group instead of each running alone.
        accelerator = Accelerator(cpu=not torch.cuda.is_available())
        device = accelerator.device
    paths = infer.list_inputs(args.images)
    model = load_model(args, device)
    options = dict(
        max_new_tokens=args.max_new_tokens,
        num_beams=args.num_beams,
        repetition_penalty=args.repetition_penalty,
        no_repeat_ngram_size=args.no_repeat_ngram_size,
    )
    summary = infer.caption_files(
        model, paths, args.out, batch_size=args.batch_size, options=options, accelerator=accelerator
    )
    if accelerator is not None and not accelerator.is_main_process:
        # Rank 0 reports for all: a rank exiting non-zero first would make the launcher stop rank 0 mid-report.
        return 0
    where = f" (error records in {args.out})" if args.out else ""
    print(
        f"vlv caption: {summary.inputs} inputs: {summary.captioned} captioned, {summary.failed} unreadable{where}; "
        f"{summary.done_before} were done by an earlier run",
        file=sys.stderr,
    )
    return 1 if summary.failed else 0


def reconstruct(args: argparse.Namespace) -> int:
    _one_process("reconstruct")
    paths = infer.list_inputs(args.images)
    model = load_model(args)
    options = sample_options(args)
    failed = infer.reconstruct_files(
        model, paths, args.out, batch_size=args.batch_size, seed=args.seed, options=options
    )
    _report_skipped("reconstruct", failed)
    if len(failed) < len(paths):
        print(f"wrote {len(paths) - len(failed)} reconstructions and {infer.SHEET_NAME} to {args.out}")
    return 1 if failed else 0


def compose(args: argparse.Namespace) -> int:
    _one_process("compose")
    splits = None
    if args.splits is not None:
        try:
            splits = [int(s) for s in args.splits.split(",")]
        except ValueError:
            raise ValueError(f"--splits takes comma-separated integers, got {args.splits!r}") from None
    model = load_model(args)
    options = sample_options(args)
    infer.compose_files(model, args.images, args.out, splits=splits, seed=args.seed, options=options)
    print(args.out)
    return 0


def embed(args: argparse.Namespace) -> int:
    _one_process("embed")
    paths = infer.list_inputs(args.images)
    model = load_model(args)
    failed = infer.embed_files(model, paths, args.out, batch_size=args.batch_size)
    _report_skipped("embed", failed)
    if len(failed) == len(paths):
        print(f"vlv embed: no input could be read; {args.out} not written", file=sys.stderr)
    else:
        print(f"wrote the embeddings of {len(paths) - len(failed)} images to {args.out}")
    return 1 if failed else 0
