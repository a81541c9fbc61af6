"""The shapes world's commands: `vlv demo` (the embedded default job) and `vlv shapes render|train-teacher|
train-encoder|train-reader` (the commands that produced the committed assets)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from vlv.shapes import preset


def add_commands(sub) -> None:
    shapes = sub.add_parser("shapes", help="the offline shapes world").add_subparsers(
        dest="shapes_command", required=True
    )
    p = shapes.add_parser(
        "render", help="render seeded scenes: DIR/*.png, a caption NAME.txt beside each, DIR/scenes.jsonl"
    )
    p.add_argument("--n", type=int, required=True, help="number of scenes")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--size", type=int, default=16, help="image side in pixels")
    p.add_argument("--split", default="train", choices=["train", "heldout", "all"], help="which scenes to draw from")
    p.set_defaults(func=render)

    p = shapes.add_parser("train-teacher", help="train the shapes text-to-image teacher from scratch")
    p.add_argument("--out", default="runs/shapes_teacher", help="output folder (final/ holds the teacher)")
    p.add_argument("--samples", type=int, default=192_000, help="training images in total")
    p.add_argument("--batch-size", type=int, default=32, help="images per step")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (warmup, then cosine decay)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initialisation, data and noise")
    p.set_defaults(func=train_teacher)

    p = shapes.add_parser("train-encoder", help="train the demo's stage-1 encoder on renders only (no captions)")
    p.add_argument("--out", default="runs/shapes_encoder", help="output folder (a VLV checkpoint)")
    p.add_argument(
        "--recipe",
        choices=("committed", "from-scratch"),
        default="committed",
        help="committed: the committed encoder's (2,000 + 3,500 steps); from-scratch: `vlv demo --from-scratch`'s "
        "(400 + 1,200 steps with the stage-1 efficiency case's tuned optimizer settings)",
    )
    p.add_argument("--steps", type=int, default=None, help="steps on renders only (32 per step; default: the recipe's)")
    p.add_argument(
        "--compose-steps",
        type=int,
        default=None,
        help="then steps with the composition term (24 renders + the composite triples each); 0 = none "
        "(default: the recipe's)",
    )
    p.add_argument(
        "--composition-pairs",
        type=int,
        default=None,
        help="composite triples (a, b, a ∪ b) per step; 0 = the second segment without the composition term "
        "(default: the recipe's)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the initialisation, data and noise")
    p.add_argument("--teacher", default=None, help="diffusers folder of a shapes teacher (default: the committed one)")
    p.set_defaults(func=train_encoder)

    p = shapes.add_parser("train-reader", help="train the attribute reader that scores images (a CNN, ~1 minute)")
    p.add_argument("--out", default="runs/shapes_reader", help="output folder (config.json + model.safetensors)")
    p.add_argument("--steps", type=int, default=800, help="steps of 128 augmented training-split renders")
    p.add_argument("--seed", type=int, default=0, help="seed of the initialisation, scenes and augmentation")
    p.set_defaults(func=train_reader)

    p = shapes.add_parser(
        "controls",
        help="the demo under controls: seeds, the baseline at equal total compute, composition without its term",
    )
    p.add_argument("--out", default="runs/controls", help="output folder (cells/, controls.json, controls.md)")
    p.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2], help="training seeds of stage 2 and baseline")
    p.add_argument("--pairs", type=int, nargs="*", default=[100, 1000, 10_000], help="values of N (seed 0)")
    p.add_argument("--stage1-runs", nargs="*", default=[], metavar="DIR", help="stage-1 checkpoints to compose with")
    p.add_argument("--quick", action="store_true", help="around the quick demo (a smoke-sized run)")
    p.add_argument("--teacher", default=None, help="diffusers folder of a shapes teacher (default: the committed one)")
    p.set_defaults(func=controls)

    p = sub.add_parser("demo", help="the shapes demo: teacher → stage 1 → stage 2 → evaluation, with a report")
    p.add_argument("--out", default="runs/demo", help="output folder (stage-1 cache, model, metrics, report)")
    p.add_argument("--quick", action="store_true", help="a smoke-sized run (2–3 minutes on 2 cores)")
    p.add_argument("--teacher", default=None, help="diffusers folder of a shapes teacher (default: the committed one)")
    p.add_argument("--train-teacher", action="store_true", help="train the teacher from scratch first (≈ 25 min)")
    p.add_argument(
        "--ablations", action="store_true", help="also run the ablations (stage-1 amount, phases, N); up to an hour"
    )
    p.add_argument(
        "--from-scratch", action="store_true", help="train stage 1 here instead of starting from the committed encoder"
    )
    p.add_argument(
        "--phase3-denoising",
        type=float,
        default=0.0,
        metavar="W",
        help="add W × the stage-1 denoising loss in progressive phase 3 (one encoder for captions and reconstruction)",
    )
    p.set_defaults(func=demo)


def render(args: argparse.Namespace) -> int:
    from vlv.shapes.world import write_scenes

    index = write_scenes(Path(args.out), args.n, args.seed, size=args.size, split=args.split)
    print(f"wrote {args.n} images and {index}")
    return 0


def train_teacher(args: argparse.Namespace) -> int:
    from vlv.shapes.teacher import TeacherRecipe
    from vlv.shapes.teacher import train_teacher as train

    recipe = TeacherRecipe()
    optim = dataclasses.replace(recipe.optim, steps=args.samples // args.batch_size, lr=args.lr)
    final = train(Path(args.out), dataclasses.replace(recipe, optim=optim, batch_size=args.batch_size), seed=args.seed)
    print(f"wrote the teacher to {final}")
    return 0


def train_encoder(args: argparse.Namespace) -> int:
    from vlv.shapes.stage1 import STAGE1_COMMITTED, STAGE1_FROM_SCRATCH, with_optim
    from vlv.shapes.stage1 import train_encoder as train

    def steps(seg, n: int | None):
        return seg if n is None else with_optim(seg, steps=n)

    base = STAGE1_FROM_SCRATCH if args.recipe == "from-scratch" else STAGE1_COMMITTED
    pairs = base.composition_pairs if args.composition_pairs is None else args.composition_pairs
    compose = steps(base.compose, args.compose_steps)
    plain = steps(base.plain, args.steps)
    compose = compose if compose.optim.steps else None
    recipe = dataclasses.replace(base, plain=plain, compose=compose, composition_pairs=pairs, seed=args.seed)
    config = preset.config(teacher=args.teacher or preset.TEACHER, seed=args.seed)
    record = train(recipe.fresh_model(config), recipe, Path(args.out))
    last = record["log"][-1]
    print(
        f"stage 1: {recipe.steps} steps in {record['seconds']:.0f} s; held-out recovered {last['recovered']:.3f}, "
        f"composition recovered {last['composition_recovered']:.3f}; wrote {args.out}"
    )
    return 0


def train_reader(args: argparse.Namespace) -> int:
    from vlv.shapes.demo import DemoConfig, heldout_scenes
    from vlv.shapes.reader import reading_of, save_reader, score
    from vlv.shapes.reader import train_reader as train
    from vlv.shapes.stage1 import renders

    reader = train(steps=args.steps, seed=args.seed)
    save_reader(reader, args.out)
    heldout = heldout_scenes(DemoConfig.full())
    check = score(reader.read(renders(heldout)), [reading_of(s) for s in heldout])
    print(
        f"attribute reader: {args.steps} steps; on {len(heldout)} clean held-out renders exact {check['exact']:.3f}, "
        f"attributes {check['attribute_accuracy']:.3f}; wrote {args.out}"
    )
    return 0


def controls(args: argparse.Namespace) -> int:
    from vlv.shapes.controls import Controls, run_controls
    from vlv.shapes.demo import DemoConfig

    cfg = DemoConfig.quick() if args.quick else DemoConfig.full()
    plan = Controls(cfg, seeds=tuple(args.seeds), pairs=tuple(args.pairs), stage1_runs=tuple(args.stage1_runs))
    out = Path(args.out)
    run_controls(out, plan, teacher=args.teacher or preset.TEACHER)
    print((out / "controls.md").read_text())
    print(f"wrote {out / 'controls.json'} and {out / 'controls.md'}")
    return 0


def demo(args: argparse.Namespace) -> int:
    from vlv.shapes.demo import DemoConfig, run_shapes_demo

    out = Path(args.out)
    teacher = args.teacher or preset.TEACHER
    if args.train_teacher:
        from vlv.shapes.teacher import TeacherRecipe
        from vlv.shapes.teacher import train_teacher as train

        teacher = str(train(out / "teacher", TeacherRecipe()))
    if not Path(teacher, "unet").is_dir():
        raise FileNotFoundError(f"no shapes teacher at {teacher}; run `vlv demo --train-teacher` to train one")
    cfg = DemoConfig.quick() if args.quick else DemoConfig.full(from_scratch=args.from_scratch)
    cfg = dataclasses.replace(cfg, phase3_denoising=args.phase3_denoising)
    metrics = run_shapes_demo(out, cfg, teacher=teacher, ablations=args.ablations)
    print(json.dumps({k: v for k, v in metrics.items() if k != "details"}, indent=2))
    print(f"wrote {out / 'report.html'}, {out / 'metrics.json'} and the model at {out / 'model'}")
    return 0


def add_eval_command(evals, name: str, common) -> None:
    """`vlv eval shapes`: every evaluation protocol in the shapes world (registered by `vlv.cli.eval`)."""
    p = evals.add_parser(name, parents=[common], help="all protocols on held-out shapes scenes, against ground truth")
    p.add_argument("--baseline", default=None, help="a second model to score beside it (the demo's OUT/baseline)")
    p.add_argument("--scenes", type=int, default=200, help="held-out scenes")
    p.add_argument("--vqa-reader", default=None, help="a trained VQA reader (default: train one into OUT/vqa_reader)")
    p.add_argument("--reader", default=preset.READER, help="attribute reader folder (default: the committed one)")
    p.set_defaults(func=evaluate)


def evaluate(args: argparse.Namespace) -> int:
    import vlv
    from vlv.cli import INFERENCE_DTYPES, load_model
    from vlv.eval.protocols import write_results
    from vlv.shapes.demo import DemoConfig, heldout_scenes
    from vlv.shapes.evaluate import evaluate_suite
    from vlv.shapes.reader import load_reader
    from vlv.shapes.vqa import train_vqa_reader

    out = Path(args.out)
    model = load_model(args)
    dtype = INFERENCE_DTYPES[args.dtype]
    baseline = vlv.load(args.baseline, device=args.device, dtype=dtype) if args.baseline else None
    cfg = DemoConfig.full()
    scenes = heldout_scenes(dataclasses.replace(cfg, eval_scenes=args.scenes))
    reader = load_reader(args.reader)
    vqa_reader = args.vqa_reader
    if vqa_reader is None:
        vqa_reader = out / "vqa_reader"
        if not (vqa_reader / "config.json").is_file():
            train_vqa_reader(vqa_reader, seed=args.seed)
    results = evaluate_suite(model, scenes, reader, vqa_reader, baseline=baseline, seed=args.seed)
    results["model"], results["baseline"] = str(args.model), args.baseline
    json_path, md_path = write_results(out, results, title=f"shapes evaluation of {args.model}")
    print(md_path.read_text())
    print(f"wrote {json_path} and {md_path}")
    return 0
