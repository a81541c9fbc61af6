"""`vlv info`: parameters per component of a preset, built on the meta device (no memory, no download)."""

from __future__ import annotations

import argparse
import json

from vlv.sizes import parameter_counts


def add_commands(sub) -> None:
    p = sub.add_parser("info", help="parameter counts per component of a preset (built on the meta device)")
    p.add_argument("--preset", required=True, help="preset name: tiny, shapes or paper")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
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
    return 0
