"""`vlv eval …`: the evaluation protocols (`vlv.eval.protocols`) on a user's data, results as JSON + Markdown.

    vlv eval captions       --model M --data D [--clip DIR]             BLEU / CIDEr / ROUGE-L / METEOR (+ CLIPScore)
    vlv eval reconstruction --model M --data D --inception FILE         reconstruction FID
    vlv eval text-to-image  --model M --data D --pipeline DIR --inception FILE    caption → T2I → FID
    vlv eval vqa            --model M --questions Q.jsonl --lm DIR      text-only VQA accuracy
    vlv eval shapes         --model runs/demo/model [--baseline …]     all of them in the shapes world

D is any data source `vlv train` reads (a folder with NAME.txt captions, parquet, tar shards); its images are
evaluated at the model's resolution, its captions are the references.
"""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path

import torch

from vlv.cli import dtype_flags, load_model, source_flags
from vlv.data.readers import open_source
from vlv.data.stream import load_record
from vlv.eval.protocols import write_results

# World evaluations, registered by module name: imported only when asked for.
WORLDS = {"shapes": "vlv.shapes.cli"}


def add_commands(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a model: caption metrics, FIDs, CLIPScore, text-only VQA")
    evals = p.add_subparsers(dest="protocol", required=True)

    common = argparse.ArgumentParser(add_help=False, parents=[source_flags(), dtype_flags()])
    common.add_argument("--model", required=True, help="checkpoint directory (or preset name)")
    common.add_argument("--out", default="runs/eval", help="folder for results.json and results.md")
    common.add_argument("--device", default="cpu", help="torch device")
    common.add_argument("--seed", type=int, default=0, help="sampling seed")
    data = argparse.ArgumentParser(add_help=False)
    data.add_argument("--data", required=True, help="images with reference captions (any `vlv train --data` source)")
    data.add_argument("--limit", type=int, default=None, help="evaluate the first N usable images only")
    inception = argparse.ArgumentParser(add_help=False)
    inception.add_argument(
        "--inception", required=True, help="FID weights file pt_inception-2015-12-05-6726825d.pth (pytorch-fid's)"
    )

    q = evals.add_parser("captions", parents=[common, data], help="caption metrics against the data's captions")
    q.add_argument("--clip", default=None, help="local CLIP model directory: also report CLIPScore")
    q.set_defaults(func=captions)
    q = evals.add_parser("reconstruction", parents=[common, data, inception], help="reconstruction FID")
    q.add_argument("--stage1", default=None, help="stage-1 checkpoint whose encoder embeds (a converted captioner)")
    q.set_defaults(func=reconstruction)
    q = evals.add_parser("text-to-image", parents=[common, data, inception], help="caption → text-to-image → FID")
    q.add_argument("--pipeline", required=True, help="local diffusers text-to-image pipeline directory")
    q.add_argument("--steps", type=int, default=None, help="the pipeline's inference steps")
    q.add_argument("--guidance", type=float, default=2.0, help="the pipeline's guidance scale (paper: 2)")
    q.set_defaults(func=text_to_image)
    q = evals.add_parser("vqa", parents=[common], help="text-only VQA from the model's captions")
    q.add_argument("--questions", required=True, help='JSON lines {"image": path, "question": …, "answers": [...]}')
    q.add_argument("--lm", required=True, help="local causal LM directory (transformers, with its tokenizer)")
    q.add_argument("--shots", type=int, default=0, help="solved examples before each question (the first K rows)")
    q.set_defaults(func=vqa)
    for world, module in WORLDS.items():
        importlib.import_module(module).add_eval_command(evals, world, common)


def load_dataset(spec: str, image_size: int, *, limit: int | None = None) -> tuple[torch.Tensor, list[str]]:
    """The usable images of a data source at `image_size` ((N, 3, S, S) in [0, 1]) and their captions; records
    without an image or a caption are skipped, with a count on stderr."""
    images, captions, skipped = [], [], 0
    for record in open_source(spec):
        tensors, reason = load_record(record, image_size, require_captions=True)
        if tensors is None:
            skipped += 1
            continue
        images.append(tensors["images"])
        captions.append(record.caption.strip())
        if limit is not None and len(images) == limit:
            break
    if not images:
        raise ValueError(f"no usable image with a caption in {spec}")
    if skipped:
        print(f"skipped {skipped} records without a usable image or caption")
    return torch.stack(images).float() / 255, captions


def _finish(args, results: dict, title: str) -> int:
    json_path, md_path = write_results(args.out, results, title=title)
    print(md_path.read_text())
    print(f"wrote {json_path} and {md_path}")
    return 0


def captions(args: argparse.Namespace) -> int:
    from vlv.eval.metrics import caption_metrics
    from vlv.eval.protocols import caption_images

    model = load_model(args)
    images, references = load_dataset(args.data, model.config.teacher.image_size, limit=args.limit)
    predicted = caption_images(model, images)
    results = {"images": len(images), **caption_metrics(predicted, [[r] for r in references])}
    if args.clip is not None:
        from vlv.eval.clip_score import clip_score, load_clip

        results["CLIPScore"] = clip_score(*load_clip(args.clip), images, predicted)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    with open(Path(args.out) / "captions.jsonl", "w") as f:
        f.writelines(json.dumps({"caption": p, "reference": r}) + "\n" for p, r in zip(predicted, references))
    return _finish(args, results, f"captions of {args.model} on {args.data}")


def reconstruction(args: argparse.Namespace) -> int:
    from vlv.eval.inception import InceptionFeatures
    from vlv.eval.protocols import reconstruction_fid

    model = load_model(args)
    images, _ = load_dataset(args.data, model.config.teacher.image_size, limit=args.limit)
    network = InceptionFeatures.from_file(args.inception).to(args.device)
    results, _ = reconstruction_fid(model, images, network, seed=args.seed)
    return _finish(args, {"reconstruction": results}, f"reconstruction of {args.data} by {args.model}")


def text_to_image(args: argparse.Namespace) -> int:
    from vlv.eval.inception import InceptionFeatures
    from vlv.eval.protocols import DiffusersTextToImage, caption_images, text_to_image_fid

    model = load_model(args)
    images, _ = load_dataset(args.data, model.config.teacher.image_size, limit=args.limit)
    predicted = caption_images(model, images)
    pipeline = DiffusersTextToImage(args.pipeline, device=args.device, steps=args.steps, guidance=args.guidance)
    network = InceptionFeatures.from_file(args.inception).to(args.device)
    results, _ = text_to_image_fid(predicted, images, pipeline, network, seed=args.seed)
    return _finish(args, {"caption_to_image": results}, f"{args.model}'s captions drawn by {args.pipeline}")


def vqa(args: argparse.Namespace) -> int:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from vlv.eval.protocols import caption_images, vqa_scores

    rows = [json.loads(line) for line in Path(args.questions).read_text().splitlines() if line.strip()]
    if not rows:
        raise ValueError(f"no questions in {args.questions}")
    base = Path(args.questions).parent
    model = load_model(args)
    paths = [str(base / r["image"]) if not Path(r["image"]).is_absolute() else r["image"] for r in rows]
    captions = caption_images(model, model.preprocess(paths))
    lm = AutoModelForCausalLM.from_pretrained(args.lm, torch_dtype=torch.float32).to(args.device).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.lm)
    shots = [(c, r["question"], r["answers"][0]) for c, r in zip(captions[: args.shots], rows[: args.shots])]
    k = args.shots
    results = vqa_scores(
        lm, tokenizer, captions[k:], [r["question"] for r in rows[k:]], [r["answers"] for r in rows[k:]], shots=shots
    )
    return _finish(args, {"vqa": results}, f"text-only VQA from {args.model}'s captions, {args.lm} answering")
