"""The `vlv` command: argument parsing → library calls, nothing else.

vlv info --preset paper --json        parameter counts per component (built on the meta device)
vlv caption --model DIR IMAGE...      caption images with a saved model (or a preset name)
vlv reconstruct --model DIR --out DIR IMAGE...
vlv demo                              the embedded default job
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch


def count_parameters(preset_name: str) -> dict:
    """Total and trainable parameters per component, for a preset built on the meta device (no memory, no
    download). Shared tensors (tied embeddings) are counted once."""
    from vlv.config import preset
    from vlv.model import VLV

    with torch.device("meta"):
        model = VLV(preset(preset_name), pretrained=False)
    components = {
        "encoder": model.encoder,
        "text_encoder": model.diffusion.text_encoder,
        "unet": model.diffusion.unet,
        "vae": model.diffusion.vae,
        "projector": model.captioner.projector,
        "llm": model.captioner.llm,
    }
    out = {}
    for name, module in components.items():
        params = {id(p): p for p in module.parameters()}.values() if module is not None else []
        out[name] = {
            "params": sum(p.numel() for p in params),
            "trainable": sum(p.numel() for p in params if p.requires_grad),
        }
    return {"preset": preset_name, "components": out}


def cmd_info(args: argparse.Namespace) -> int:
    info = count_parameters(args.preset)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"preset {info['preset']}")
    print(f"{'component':<14}{'params':>16}{'trainable':>16}")
    for name, c in info["components"].items():
        print(f"{name:<14}{c['params']:>16,}{c['trainable']:>16,}")
    total = sum(c["params"] for c in info["components"].values())
    trainable = sum(c["trainable"] for c in info["components"].values())
    print(f"{'total':<14}{total:>16,}{trainable:>16,}")
    return 0


def _load_model(args: argparse.Namespace):
    import vlv

    return vlv.load(args.model, device=args.device)


def cmd_caption(args: argparse.Namespace) -> int:
    model = _load_model(args)
    captions = model.caption(args.images, num_beams=args.num_beams, max_new_tokens=args.max_new_tokens)
    for path, text in zip(args.images, captions):
        print(json.dumps({"image": str(path), "caption": text}))
    return 0


def cmd_reconstruct(args: argparse.Namespace) -> int:
    from vlv.images import to_pil

    model = _load_model(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    images = model.reconstruct(args.images, steps=args.steps, guidance=args.guidance, seed=args.seed)
    for path, im in zip(args.images, to_pil(images)):
        target = out / (Path(path).stem + ".png")
        im.save(target)
        print(target)
    return 0


def cmd_shapes_render(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from vlv.data.shapes import render, sample_scenes

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    scenes = sample_scenes(args.n, args.seed, split=args.split)
    width = max(5, len(str(args.n - 1)))
    # Images first, the index last (written to a temporary name): scenes.jsonl never names a missing file.
    records = []
    for i, scene in enumerate(tqdm(scenes, desc="rendering", disable=args.n < 1000)):
        name = f"{i:0{width}d}.png"
        render(scene, args.size).save(out / name)
        records.append(json.dumps({"image": name, "caption": scene.caption, "scene": scene.to_dict()}))
    tmp = out / "scenes.jsonl.tmp"
    tmp.write_text("\n".join(records) + "\n")
    tmp.replace(out / "scenes.jsonl")
    print(f"wrote {len(scenes)} images and {out / 'scenes.jsonl'}")
    return 0


def cmd_shapes_train_teacher(args: argparse.Namespace) -> int:
    from vlv.shapes_demo import train_shapes_teacher
    from vlv.teacher import TeacherTrainConfig

    cfg = TeacherTrainConfig(samples=args.samples, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    train_shapes_teacher(Path(args.out), cfg)
    return 0


def cmd_shapes_train_encoder(args: argparse.Namespace) -> int:
    import dataclasses

    import torch

    from vlv.config import SHAPES_TEACHER, preset
    from vlv.model import VLV
    from vlv.shapes_demo import STAGE1_COMMITTED as recipe
    from vlv.shapes_demo import train_stage1

    teacher = args.teacher or SHAPES_TEACHER
    cfg = dataclasses.replace(
        recipe,
        train=dataclasses.replace(recipe.train, steps=args.steps),
        compose=dataclasses.replace(recipe.compose, steps=args.compose_steps) if args.compose_steps else None,
        composition_pairs=args.composition_pairs,
        seed=args.seed,
    )
    config = preset("shapes")
    diffusion = dataclasses.replace(config.diffusion, source=teacher)
    config = dataclasses.replace(config, diffusion=diffusion, seed=args.seed)
    torch.manual_seed(args.seed)
    record = train_stage1(VLV(config), cfg, Path(args.out), teacher)
    last = record["log"][-1]
    print(
        f"stage 1: {cfg.steps} steps in {record['seconds']:.0f} s; held-out recovered {last['recovered']:.3f}, "
        f"composition recovered {last['composition_recovered']:.3f}; wrote {args.out}"
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from vlv.config import SHAPES_TEACHER
    from vlv.shapes_demo import DemoConfig, run_shapes_demo

    out = Path(args.out)
    teacher = args.teacher
    if args.train_teacher:
        from vlv.shapes_demo import train_shapes_teacher

        train_shapes_teacher(out / "teacher")
        teacher = str(out / "teacher" / "final")
    teacher = teacher or SHAPES_TEACHER
    if not Path(teacher, "unet").is_dir():
        raise FileNotFoundError(f"no shapes teacher at {teacher}; run `vlv demo --train-teacher` to train one")
    cfg = DemoConfig.quick() if args.quick else DemoConfig.full(from_scratch=args.from_scratch)
    metrics = run_shapes_demo(out, cfg, teacher=teacher, ablations=args.ablations)
    print(json.dumps({k: v for k, v in metrics.items() if k != "details"}, indent=2))
    print(f"wrote {out / 'report.html'}, {out / 'metrics.json'} and the model at {out / 'model'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlv", description="Vision-Language-Vision auto-encoder")
    sub = parser.add_subparsers(dest="command", required=True)

    # info
    p = sub.add_parser("info", help="parameter counts per component of a preset (built on the meta device)")
    p.add_argument("--preset", required=True, help="preset name: tiny, shapes or paper")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_info)

    # inference
    for name, func, help_text in (
        ("caption", cmd_caption, "caption images (one JSON line per image)"),
        ("reconstruct", cmd_reconstruct, "reconstruct images through the frozen diffusion model"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("images", nargs="+", help="image files")
        p.add_argument("--model", required=True, help="checkpoint directory or preset name")
        p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
        if name == "caption":
            p.add_argument("--num-beams", type=int, default=None, help="beam width (default from the model config)")
            p.add_argument("--max-new-tokens", type=int, default=None, help="caption length limit")
        else:
            p.add_argument("--out", required=True, help="folder for the reconstructed PNGs")
            p.add_argument("--steps", type=int, default=None, help="sampling steps (default from the config)")
            p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale")
            p.add_argument("--seed", type=int, default=0, help="sampling seed")
        p.set_defaults(func=func)

    # shapes world
    shapes = sub.add_parser("shapes", help="the offline shapes world").add_subparsers(
        dest="shapes_command", required=True
    )
    p = shapes.add_parser("render", help="render seeded scenes: DIR/*.png + DIR/scenes.jsonl")
    p.add_argument("--n", type=int, required=True, help="number of scenes")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--size", type=int, default=16, help="image side in pixels")
    p.add_argument("--split", default="train", choices=["train", "heldout", "all"], help="which scenes to draw from")
    p.set_defaults(func=cmd_shapes_render)

    p = shapes.add_parser("train-teacher", help="train the shapes text-to-image teacher from scratch")
    p.add_argument("--out", default="runs/shapes_teacher", help="output folder (final/ holds the teacher)")
    p.add_argument("--samples", type=int, default=192_000, help="training images in total")
    p.add_argument("--batch-size", type=int, default=32, help="images per step")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (warmup, then cosine decay)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initialisation, data and noise")
    p.set_defaults(func=cmd_shapes_train_teacher)

    p = shapes.add_parser("train-encoder", help="train the demo's stage-1 encoder on renders only (no captions)")
    p.add_argument("--out", default="runs/shapes_encoder", help="output folder (encoder.safetensors, stage1.json)")
    p.add_argument("--steps", type=int, default=2000, help="steps on renders only (32 per step)")
    p.add_argument(
        "--compose-steps",
        type=int,
        default=3500,
        help="then steps with the composition term (24 renders + the composite triples each); 0 = none",
    )
    p.add_argument("--composition-pairs", type=int, default=12, help="composite triples (a, b, a ∪ b) per step")
    p.add_argument("--seed", type=int, default=0, help="seed of the initialisation, data and noise")
    p.add_argument("--teacher", default=None, help="diffusers folder of a shapes teacher (default: the committed one)")
    p.set_defaults(func=cmd_shapes_train_encoder)

    # demo
    p = sub.add_parser("demo", help="the shapes demo: teacher → stage 1 → stage 2 → evaluation, with a report")
    p.add_argument("--out", default="runs/demo", help="output folder (stage-1 cache, model, metrics, report)")
    p.add_argument("--quick", action="store_true", help="a smoke-sized run (< 2 minutes)")
    p.add_argument("--teacher", default=None, help="diffusers folder of a shapes teacher (default: the committed one)")
    p.add_argument("--train-teacher", action="store_true", help="train the teacher from scratch first (≈ 25 min)")
    p.add_argument(
        "--ablations", action="store_true", help="also run the ablations (stage-1 amount, phases, N); up to an hour"
    )
    p.add_argument(
        "--from-scratch", action="store_true", help="train stage 1 here instead of starting from the committed encoder"
    )
    p.set_defaults(func=cmd_demo)
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
