"""`vlv caption` and `vlv reconstruct`: inference with a saved model (or a preset) on image files."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import vlv
from vlv.cli import source_flags, sources
from vlv.images import to_pil


def model_flags() -> argparse.ArgumentParser:
    """Flags shared by the inference commands: the model, the device, the images."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--model", required=True, help="checkpoint directory or preset name")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    return p


def sample_flags() -> argparse.ArgumentParser:
    """The fields of `vlv.SampleOptions` (default: the model's own), and the seed."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--steps", type=int, default=None, help="sampling steps")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale")
    p.add_argument("--sampler", choices=["dpm++", "ddpm"], default=None, help="sampling scheduler")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    return p


def generate_flags() -> argparse.ArgumentParser:
    """The fields of `vlv.GenerateOptions` (default: the model's own)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--max-new-tokens", type=int, default=None, help="caption length limit")
    p.add_argument("--num-beams", type=int, default=None, help="beam width (1 = greedy)")
    p.add_argument("--repetition-penalty", type=float, default=None, help="> 1 discourages repeated tokens")
    p.add_argument("--no-repeat-ngram-size", type=int, default=None, help="> 0 forbids repeating n-grams")
    return p


def add_commands(sub) -> None:
    p = sub.add_parser(
        "caption", parents=[model_flags(), source_flags(), generate_flags()], help="caption images (JSON lines)"
    )
    p.set_defaults(func=caption)
    p = sub.add_parser(
        "reconstruct",
        parents=[model_flags(), source_flags(), sample_flags()],
        help="reconstruct images through the frozen teacher",
    )
    p.add_argument("--out", required=True, help="folder for the reconstructed PNGs")
    p.add_argument("--stage1", default=None, help="stage-1 checkpoint whose encoder embeds (for a converted captioner)")
    p.set_defaults(func=reconstruct)


def caption(args: argparse.Namespace) -> int:
    model = vlv.load(args.model, device=args.device, **sources(args))
    captions = model.caption(
        args.images,
        max_new_tokens=args.max_new_tokens,
        num_beams=args.num_beams,
        repetition_penalty=args.repetition_penalty,
        no_repeat_ngram_size=args.no_repeat_ngram_size,
    )
    for path, text in zip(args.images, captions):
        print(json.dumps({"image": str(path), "caption": text}))
    return 0


def reconstruct(args: argparse.Namespace) -> int:
    model = vlv.load(args.model, device=args.device, stage1=args.stage1, **sources(args))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    images = model.reconstruct(
        args.images, steps=args.steps, guidance=args.guidance, sampler=args.sampler, seed=args.seed
    )
    for path, im in zip(args.images, to_pil(images)):
        target = out / (Path(path).stem + ".png")
        im.save(target)
        print(target)
    return 0
