"""The evaluation protocols over a trained VLV, each a function that returns numbers, and the report writer.

    reconstruction FID     image ─► z ─► frozen decoder ─► image′;  Fréchet(features(image′), features(image))
    caption → T2I FID      image ─► caption ─► any text-to-image model ─► image′;  Fréchet(...)   (paper §4.1)
    caption metrics        BLEU, CIDEr, ROUGE-L, METEOR of the captions against reference captions
    CLIPScore              the captions against their images, through a local CLIP
    text-only VQA          caption + question ─► a text-only causal LM ─► answer ─► VQAv2 accuracy  (paper §4.3)

The feature network of a Fréchet distance is any `nn.Module` mapping images in [0, 1] to vectors: FID's InceptionV3
with the standard weights (`vlv.eval.inception`) for numbers comparable with published ones, or a world's own reader
(shapes). The metrics are pure functions in `metrics`, `clip_score` and `vqa`; this module only runs models.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from vlv.eval.metrics import features, frechet_distance
from vlv.eval.vqa import Shot, answer_questions, vqa_accuracy
from vlv.model import VLV

# prompts, seed → images (B, 3, H, W) in [0, 1]: a text-to-image model under evaluation.
TextToImage = Callable[[list[str], int], torch.Tensor]


def caption_images(model: VLV, images: torch.Tensor, *, batch_size: int = 64, **options) -> list[str]:
    """Captions of images (N, 3, H, W) in [0, 1], `batch_size` at a time; options: `GenerateOptions` fields."""
    captions = []
    for i in tqdm(range(0, len(images), batch_size), desc="captioning", leave=False):
        captions += model.caption(images[i : i + batch_size], **options)
    return captions


def reconstruct_images(model: VLV, images: torch.Tensor, *, seed: int = 0, batch_size: int = 50, **options):
    """Reconstructions (N, 3, S, S) in [0, 1]; the batch starting at image i samples with seed `seed + i`."""
    out = []
    for i in tqdm(range(0, len(images), batch_size), desc="reconstructing", leave=False):
        out.append(model.reconstruct(images[i : i + batch_size], seed=seed + i, **options).cpu())
    return torch.cat(out)


def frechet(network: nn.Module, generated: torch.Tensor, reference: torch.Tensor, *, batch_size: int = 50) -> float:
    """The Fréchet distance between the feature distributions of two image sets under `network`."""
    return frechet_distance(features(network, generated, batch_size), features(network, reference, batch_size))


def reconstruction_fid(
    model: VLV, images: torch.Tensor, network: nn.Module, *, seed: int = 0, batch_size: int = 50, **options
) -> tuple[dict, torch.Tensor]:
    """Reconstruction FID: each image through z and the frozen decoder, against the originals at the model's
    resolution. Returns ({"fid", "images"}, the reconstructions)."""
    originals = model.preprocess(images).cpu()
    recon = reconstruct_images(model, images, seed=seed, batch_size=batch_size, **options)
    return {"fid": frechet(network, recon, originals), "images": len(images)}, recon


def text_to_image_fid(
    captions: Sequence[str],
    reference: torch.Tensor,
    text_to_image: TextToImage,
    network: nn.Module,
    *,
    seed: int = 0,
    batch_size: int = 50,
) -> tuple[dict, torch.Tensor]:
    """The paper's caption metric: each caption drawn by a text-to-image model, the samples' FID against the
    reference images (their originals). Returns ({"fid", "images"}, the samples)."""
    samples = []
    for i in tqdm(range(0, len(captions), batch_size), desc="text to image", leave=False):
        samples.append(text_to_image(list(captions[i : i + batch_size]), seed + i).cpu())
    samples = torch.cat(samples)
    return {"fid": frechet(network, samples, reference), "images": len(samples)}, samples


class DiffusersTextToImage:
    """Any diffusers text-to-image pipeline in a local directory (SD 2.1, SD3.5, FLUX, …) as a `TextToImage`.

    steps, guidance: the pipeline's `num_inference_steps` and `guidance_scale` (the paper: CFG 2 for SD3.5-Medium);
    None keeps the pipeline's defaults. Samples come back at `size` × `size`, the resolution they are compared at.
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
        steps: int | None = None,
        guidance: float | None = None,
        size: int | None = None,
    ):
        from diffusers import DiffusionPipeline  # only this protocol needs a whole pipeline

        self.pipeline = DiffusionPipeline.from_pretrained(str(directory), torch_dtype=dtype).to(device)
        self.pipeline.set_progress_bar_config(disable=True)
        self.device, self.steps, self.guidance, self.size = device, steps, guidance, size

    def __call__(self, prompts: list[str], seed: int) -> torch.Tensor:
        options = {"num_inference_steps": self.steps, "guidance_scale": self.guidance}
        options = {k: v for k, v in options.items() if v is not None}
        if self.size is not None:
            options |= {"height": self.size, "width": self.size}
        generator = torch.Generator(self.device).manual_seed(seed)
        images = self.pipeline(prompt=prompts, generator=generator, output_type="pt", **options).images
        return images.float().clamp(0, 1)  # (B, 3, H, W)


def vqa_scores(
    lm: nn.Module,
    tokenizer,
    captions: Sequence[str],
    questions: Sequence[str],
    answers: Sequence[Sequence[str]],
    *,
    shots: Sequence[Shot] = (),
    batch_size: int = 32,
) -> dict:
    """Text-only VQA: each question answered by the LM from its image's caption alone (k-shot with `shots`), scored
    with the VQAv2 accuracy against that question's human answers. Returns {"accuracy", "questions", "shots"}."""
    predictions = answer_questions(lm, tokenizer, captions, questions, shots=shots, batch_size=batch_size)
    scores = [vqa_accuracy(p, list(a)) for p, a in zip(predictions, answers)]
    return {"accuracy": sum(scores) / len(scores), "questions": len(scores), "shots": len(shots)}


def write_results(out: str | Path, results: dict, *, title: str) -> tuple[Path, Path]:
    """results.json (everything) and results.md (a table of every number, nested keys joined by '/') in `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    rows = [f"# {title}", "", "| metric | value |", "|---|---|"]
    rows += [f"| {key} | {_format(value)} |" for key, value in _flatten(results)]
    (out / "results.md").write_text("\n".join(rows) + "\n")
    return out / "results.json", out / "results.md"


def _flatten(d: dict, prefix: str = ""):
    """(key path, number) pairs of a nested dict, numbers only (lists and strings stay in the JSON)."""
    for key, value in d.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _flatten(value, path + " / ")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield path, value


def _format(value: float) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
