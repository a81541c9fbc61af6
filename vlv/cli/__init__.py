"""The `vlv` command: one module per command group; each command parses arguments and calls the library.

vlv info --preset paper [--json]        parameters per component (built on the meta device)
vlv info --preset paper --memory        training memory per GPU of each stage and phase [--lora-rank R]
vlv caption --model DIR IMAGE...        caption images with a saved model (or a preset name)
                                        [--florence DIR --teacher DIR --llm DIR: local copies of the parts]
                                        [--dtype bf16: the model in bf16, also for reconstruct ... serve, eval]
vlv caption --model DIR --out F.jsonl INPUTS...  resumable JSON lines; INPUTS: files, folders, .txt/.lst lists
vlv reconstruct --model DIR --out DIR INPUTS...  one PNG per input + contact_sheet.png
vlv compose --model DIR --out F.png A B [C...]   one image from the spliced z of several
vlv embed --model DIR --out F.safetensors INPUTS...  z and prompt_embeds for a diffusers pipeline
vlv train autoencoder|captioner ...     stage 1 / stage 2 (also under `accelerate launch -m vlv train ...`)
vlv cache-latents --data D --out DIR    encode training images once with the frozen VAE
vlv eval captions|reconstruction|text-to-image|vqa|shapes --model DIR ...   results.json + results.md
vlv serve --model DIR [--port 7860]     the web demo: caption, reconstruct, compose uploads (loopback only)
vlv demo                                the embedded default job (the shapes world)
vlv shapes render|train-teacher|train-encoder
"""

from __future__ import annotations

import argparse
import importlib
import sys

import torch

from vlv.api import load
from vlv.model import VLV

# Command groups: module → adds its subcommands to the parser. The shapes world lives in its own package and is
# imported here only to register its commands.
GROUPS = (
    "vlv.cli.info",
    "vlv.cli.infer",
    "vlv.cli.train",
    "vlv.cli.convert",
    "vlv.cli.serve",
    "vlv.cli.eval",
    "vlv.shapes.cli",
)


def source_flags() -> argparse.ArgumentParser:
    """Flags of every command that loads a model: a local copy (or another hub id) of each pretrained part, in place
    of the preset's or checkpoint's source (see `vlv.load`)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--florence", default=None, help="Florence-2 directory (transformers-native layout) for the encoder")
    p.add_argument("--teacher", default=None, help="diffusers Stable Diffusion pipeline directory for the teacher")
    p.add_argument("--llm", default=None, help="causal LM directory (with its tokenizer) for the caption decoder")
    return p


def sources(args: argparse.Namespace) -> dict:
    """The `vlv.load` keywords given by `source_flags`."""
    return dict(florence=args.florence, teacher=args.teacher, llm=args.llm)


# The dtypes a model runs in for the commands that use a trained one (`--dtype`: caption, reconstruct, compose,
# embed, serve, eval).
INFERENCE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def dtype_flags() -> argparse.ArgumentParser:
    """`--dtype`: the dtype the model's weights and activations run in (every part, as `vlv.load(dtype=...)`)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--dtype", choices=list(INFERENCE_DTYPES), default="fp32",
                   help="weights and activations: fp32 (default) or bf16 (half the weights' memory; its speed "
                        "depends on the device and batch, see the README's Performance; on a CPU without native "
                        "bf16 kernels, e.g. AVX2 only, several times slower, with a warning)")  # fmt: skip
    return p


def load_model(args: argparse.Namespace, device: str | torch.device | None = None) -> VLV:
    """The model an inference command's flags name (--model, the sources, --dtype, --stage1 where the command has
    it), on `device` (default: --device)."""
    return load(
        args.model,
        device=args.device if device is None else device,
        dtype=INFERENCE_DTYPES[args.dtype],
        stage1=getattr(args, "stage1", None),
        **sources(args),
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlv", description="Vision-Language-Vision auto-encoder")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in GROUPS:
        importlib.import_module(module).add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (OSError, ValueError) as e:
        # A user mistake (wrong path, bad image, mismatched checkpoint) gets one clear line, not a traceback.
        print(f"vlv {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
