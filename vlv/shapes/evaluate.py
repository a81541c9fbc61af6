"""Scoring a VLV model in the shapes world against ground truth: captions, reconstructions, teacher samples and
compositions, each read back by the attribute reader (`vlv.shapes.reader`) or parsed by the caption grammar; and
`evaluate_suite`, the general evaluation protocols (`vlv.eval.protocols`) run in this world."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from vlv.eval.metrics import frechet_distance
from vlv.model import VLV
from vlv.shapes.reader import AttributeReader, reading_of, score
from vlv.shapes.stage1 import renders
from vlv.shapes.world import Scene, parse_caption, sample_scenes


def evaluate_captions(model: VLV, scenes: list[Scene], batch_size: int = 64) -> tuple[dict, list[str]]:
    """Caption each scene's render; score the parsed captions against the scenes."""
    images = renders(scenes)
    captions = []
    for i in range(0, len(scenes), batch_size):
        captions += model.caption(images[i : i + batch_size])
    readings = [reading_of(parse_caption(c)) for c in captions]
    return score(readings, [reading_of(s) for s in scenes]), captions


DECODE_BATCH = 100  # images sampled by the teacher per call


def decode_in_batches(decode, n: int) -> torch.Tensor:
    """torch.cat of decode(i, j) over [i, j) batches of `DECODE_BATCH` covering range(n); each batch seeded by i."""
    return torch.cat([decode(i, min(i + DECODE_BATCH, n)) for i in range(0, n, DECODE_BATCH)])


def evaluate_reconstruction(model: VLV, reader: AttributeReader, scenes: list[Scene]) -> tuple[dict, torch.Tensor]:
    """Reconstruct each render; the reader's agreement between original and reconstruction, and shapes-FID."""
    images = renders(scenes)
    recon = decode_in_batches(lambda i, j: model.reconstruct(images[i:j], seed=i), len(scenes))
    agreement = score(reader.read(recon), reader.read(images))
    with torch.no_grad():
        fid = frechet_distance(reader.features(recon).numpy(), reader.features(images).numpy())
    return {**agreement, "shapes_fid": fid}, recon


def evaluate_teacher(model: VLV, reader: AttributeReader, scenes: list[Scene]) -> tuple[dict, torch.Tensor]:
    """Teacher samples for held-out captions, read back: is the frozen teacher any good?"""
    captions = [s.caption for s in scenes]
    samples = decode_in_batches(
        lambda i, j: model.sample(model.conditioner.encode_prompts(captions[i:j]), seed=i), len(scenes)
    )
    return score(reader.read(samples), [reading_of(s) for s in scenes]), samples


def evaluate_composition(model: VLV, reader: AttributeReader, n: int, seed: int) -> tuple[dict, list]:
    """Two single-object images in different quadrants, z spliced (equal split), decoded: are both objects there?

    An object is present when the reader finds it, with its size, color and shape, in its quadrant. Also returned:
    how often the first image's object (leading tokens) and the second's (trailing tokens) are present alone.
    """
    rng = np.random.default_rng(seed)
    singles = [s for s in sample_scenes(20 * n, seed=seed, split="all") if len(s.objects) == 1]
    pairs = []
    for _ in range(n):
        a = singles[rng.integers(len(singles))]
        b = next(
            s for s in singles[rng.integers(len(singles)) :] + singles if s.objects[0].position != a.objects[0].position
        )
        pairs.append((a, b))
    sources = renders([s for pair in pairs for s in pair]).unflatten(0, (n, 2))  # (n, 2, 3, S, S)
    composed = decode_in_batches(lambda i, j: model.compose(sources[i:j], seed=i), n)
    readings = reader.read(composed)
    present = np.array(
        [[reading[s.objects[0].position] == s.objects[0] for s in pair] for pair, reading in zip(pairs, readings)]
    )
    examples = [(a, b, composed[k], bool(present[k].all())) for k, (a, b) in enumerate(pairs[:8])]
    first, second = present.mean(0).tolist()
    return {"both_present": float(present.all(1).mean()), "first_present": first, "second_present": second}, examples


class ReaderFeatures(nn.Module):
    """The attribute reader's penultimate features as a Fréchet feature network (shapes-FID)."""

    def __init__(self, reader: AttributeReader):
        super().__init__()
        self.reader = reader
        self.eval()  # a feature network is used in eval mode only

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.reader.features(images)  # (B, 256)


def evaluate_suite(
    model: VLV,
    scenes: list[Scene],
    reader: AttributeReader,
    vqa_reader: str | Path,
    *,
    baseline: VLV | None = None,
    seed: int = 0,
    shots: tuple[int, ...] = (0, 2),
) -> dict:
    """The paper's evaluation protocols in the shapes world, with the attribute reader as the feature network and
    the committed teacher as the text-to-image model: reconstruction, caption → text-to-image (for the model's,
    the baseline's and the ground-truth captions), caption metrics against the ground truth, text-only VQA."""
    from vlv.eval.metrics import caption_metrics
    from vlv.eval.protocols import caption_images, frechet, reconstruct_images
    from vlv.shapes.vqa import evaluate_vqa

    images = renders(scenes)
    truth = [reading_of(s) for s in scenes]
    network = ReaderFeatures(reader).eval()
    results: dict = {"scenes": len(scenes)}

    recon = reconstruct_images(model, images, seed=seed)
    results["reconstruction"] = {
        "shapes_fid": frechet(network, recon, images),
        "attribute_agreement": score(reader.read(recon), reader.read(images))["attribute_accuracy"],
    }

    sources = {"ground_truth": [s.caption for s in scenes], "vlv": caption_images(model, images)}
    if baseline is not None:
        sources["baseline"] = caption_images(baseline, images)

    def text_to_image(prompts: list[str], at: int) -> torch.Tensor:
        return model.sample(model.conditioner.encode_prompts(prompts), seed=seed + at)

    results["captions"], results["caption_to_image"], results["vqa"] = {}, {}, {}
    for name, captions in sources.items():
        if name != "ground_truth":
            metrics = caption_metrics(captions, [[s.caption] for s in scenes])
            parsed = score([reading_of(parse_caption(c)) for c in captions], truth)
            results["captions"][name] = {
                **{k: metrics[k] for k in ("BLEU-4", "CIDEr", "ROUGE-L", "METEOR")},
                "exact": parsed["exact"],
            }
        samples = decode_in_batches(lambda i, j, captions=captions: text_to_image(captions[i:j], i), len(captions))
        results["caption_to_image"][name] = {
            "shapes_fid": frechet(network, samples, images),
            "agreement_with_scene": score(reader.read(samples), truth)["attribute_accuracy"],
        }
        results["vqa"][name] = {
            f"{k}_shot": evaluate_vqa(vqa_reader, scenes, captions, shots=k, seed=seed)["accuracy"] for k in shots
        }
    return results
