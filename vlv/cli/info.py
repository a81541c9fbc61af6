"""`vlv info`: parameters per component of a preset, or its training memory per GPU (`--memory`), built on the
meta device (no memory, no download)."""

from __future__ import annotations

import argparse
import json

import torch

from vlv.sizes import memory_estimate, parameter_counts

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
MEMORY_COLUMNS = {  # JSON key → table heading
    "weights": "weights",
    "grads": "grads",
    "optimizer": "optimizer",
    "activations": "activations",
    "activations_checkpointed": "act. ckpt",
    "total": "total",
    "total_checkpointed": "total ckpt",
}


def add_commands(sub) -> None:
    p = sub.add_parser("info", help="parameter counts per component of a preset, or its training memory (--memory)")
    p.add_argument("--preset", required=True, help="preset name: tiny, shapes or paper")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    # training memory
    p.add_argument(
        "--memory",
        action="store_true",
        help="training memory per GPU of stage 1 and each stage-2 phase (activations measured on fake tensors)",
    )
    p.add_argument(
        "--batch-size", type=int, help="with --memory: images per GPU (default: the paper's, 64 stage 1, 8 stage 2)"
    )
    p.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        default="bf16",
        help="with --memory: frozen weights and autocast dtype (fp32: no autocast); trained weights stay fp32",
    )
    p.add_argument("--lora-rank", type=int, help="with --memory: also the LLM phases trained through LoRA of this rank")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not args.memory and (args.batch_size is not None or args.dtype != "bf16" or args.lora_rank is not None):
        raise ValueError("--batch-size, --dtype and --lora-rank apply to --memory only")
    if args.memory:
        if args.batch_size is not None and args.batch_size < 1:
            raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
        estimate = memory_estimate(
            args.preset, batch_size=args.batch_size, dtype=DTYPES[args.dtype], lora_rank=args.lora_rank
        )
        print_memory(estimate, args.json)
        return 0
    info = parameter_counts(args.preset)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    columns = ("params", "stage1", "stage2")
    print(f"preset {info['preset']}")
    print(f"{'component':<14}" + "".join(f"{c:>16}" for c in columns))
    for name, counts in info["components"].items():
        print(f"{name:<14}" + "".join(f"{counts[c]:>16,}" for c in columns))
    totals = {c: sum(counts[c] for counts in info["components"].values()) for c in columns}
    print(f"{'total':<14}" + "".join(f"{totals[c]:>16,}" for c in columns))
    for option, source in info["sources"].items():
        print(f"--{option:<9} {source or '(random init)'}")
    return 0


def print_memory(estimate: dict, as_json: bool) -> None:
    """The estimate as JSON (bytes) or as a table (GiB), one row per training run."""
    if as_json:
        print(json.dumps(estimate, indent=2))
        return
    dtype = estimate["dtype"]
    forward = "in float32" if dtype == "float32" else f"under {dtype} autocast"
    print(
        f"preset {estimate['preset']}: training memory per GPU, GiB (trained weights float32, frozen weights {dtype}, "
        f"forward {forward}; stage-2 captions {estimate['caption_tokens']} tokens)"
    )
    print(f"{'run':<26}{'batch':>6}" + "".join(f"{h:>13}" for h in MEMORY_COLUMNS.values()))
    for stage, row in estimate["rows"].items():
        name = stage if stage == "stage1" else f"stage2 {stage}"
        if row.get("lora_rank"):
            name = name.replace("+lora", f" LoRA r={row['lora_rank']}")
        print(f"{name:<26}{row['batch_size']:>6}" + "".join(f"{row[k] / 2**30:>13.2f}" for k in MEMORY_COLUMNS))
    print(
        "activations: measured forward at this batch, kept until backward; backward adds transients "
        "(activation gradients, one recomputed segment). Not counted: EMA, DDP buckets, CUDA context."
    )
