"""`vlv convert official`: the authors' released captioner (`model.pt`) → a vlv checkpoint (see `vlv.convert`)."""

from __future__ import annotations

import argparse

from vlv.cli import source_flags, sources
from vlv.convert import DTYPES, convert_official
from vlv.parts import with_sources
from vlv.presets import preset


def add_commands(sub) -> None:
    p = sub.add_parser("convert", help="convert released weights into a vlv checkpoint")
    kinds = p.add_subparsers(dest="kind", required=True)
    q = kinds.add_parser(
        "official",
        parents=[source_flags()],
        help="the authors' released captioner (Vision-Language-Vision-Captioner-Qwen2.5-3B model.pt)",
    )
    q.add_argument("model_pt", help="the released model.pt (a pickled state dict; read with weights_only)")
    q.add_argument("--out", required=True, help="folder for the vlv checkpoint (config.json + model.safetensors)")
    q.add_argument(
        "--preset", default="paper", help="the architecture the file was trained with (paper; tiny for tests)"
    )
    q.add_argument(
        "--dtype", choices=["keep", *DTYPES], default="keep", help="stored weights: the file's own (bf16) or cast"
    )
    q.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = with_sources(preset(args.preset), **sources(args))
    report = convert_official(args.model_pt, args.out, config=config, dtype=args.dtype)
    print(report.format())
    print(f"wrote {args.out} (captions; reconstruct needs a stage-1 encoder: vlv reconstruct --stage1 DIR)")
    return 0
