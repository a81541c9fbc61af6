"""`vlv serve`: the web demo (`vlv.serve`) for a saved model or a preset, on loopback unless told otherwise."""

from __future__ import annotations

import argparse
import sys

from vlv.cli import dtype_flags, load_model, source_flags


def add_commands(sub) -> None:
    p = sub.add_parser(
        "serve",
        parents=[source_flags(), dtype_flags()],
        help="web demo: caption, reconstruction and composition of uploaded images (needs the `serve` extra)",
    )
    p.add_argument("--model", required=True, help="checkpoint directory or preset name")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    # Loopback by default: the app has no authentication, so exposing it is a choice (--host 0.0.0.0).
    p.add_argument("--host", default="127.0.0.1", help="address to bind")
    p.add_argument("--port", type=int, default=7860, help="port to bind")
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="largest accepted upload, in MiB")
    p.set_defaults(func=serve)


def serve(args: argparse.Namespace) -> int:
    if args.max_upload_mb <= 0:
        raise ValueError(f"--max-upload-mb must be positive, got {args.max_upload_mb}")
    try:
        # Imported here: Gradio is an optional dependency, and the other commands must not pay for its import.
        from vlv.serve import serve as serve_app
    except ModuleNotFoundError as e:
        print(f"vlv serve: error: {e.name} is not installed; pip install 'vlv[serve]'", file=sys.stderr)
        return 2
    model = load_model(args)
    serve_app(model, host=args.host, port=args.port, max_upload_mb=args.max_upload_mb)
    return 0
