"""Case `reconstruction`: images/s of reconstruction, ours (DPM-Solver++, 20 steps, guidance on the first 14 of them:
`SampleOptions.guidance_interval` 0.7) against the official sampler (DDPM, 50 steps, every one guided), both at the
shapes stage-1 model's own CFG scale (4); and the attribute agreement of each with the original (the demo's attribute
reader), so that the fast path is shown to keep the quality (within 2 points). Also ours with the model in bf16
(`vlv reconstruct --dtype bf16`) against ours in float32, with the agreement of each; skipped, with the reason,
where the device has no native bf16 kernels (`vlv.precision`: 17x slower on an AVX2-only CPU, a quarter of an hour of
the default run there)."""

from __future__ import annotations

import copy

import torch

from bench.harness import compare_rates, interleaved
from vlv.model import VLV
from vlv.precision import slow_bf16_message
from vlv.shapes.evaluate import decode_in_batches
from vlv.shapes.reader import AttributeReader, score
from vlv.shapes.stage1 import renders
from vlv.shapes.world import sample_scenes

OURS = {"sampler": "dpm++", "steps": 20, "guidance_interval": 0.7}
OFFICIAL = {"sampler": "ddpm", "steps": 50}


def run(model: VLV, reader: AttributeReader, device: str = "cpu", *, images: int = 32, quality_images: int = 200,
        repeats: int = 3) -> dict:  # fmt: skip
    model = model.to(device).eval()
    pixels = renders(sample_scenes(images, seed=11, split="heldout")).to(device)
    arms = {
        "ours": lambda: model.reconstruct(pixels, seed=0, **OURS),
        "official": lambda: model.reconstruct(pixels, seed=0, **OFFICIAL),
    }
    slow = slow_bf16_message(device)
    if not slow:
        half = copy.deepcopy(model).to(torch.bfloat16)
        arms["bf16"] = lambda: half.reconstruct(pixels, seed=0, **OURS)
    times = interleaved(arms, repeats=repeats, device=device)
    held = renders(sample_scenes(quality_images, seed=12, split="heldout"))
    truth = reader.read(held)

    def agreement(options: dict, sampler: VLV = model) -> float:
        recon = decode_in_batches(
            lambda i, j: sampler.reconstruct(held[i:j].to(device), seed=i, **options).cpu(), len(held)
        )
        return score(reader.read(recon), truth)["attribute_accuracy"]

    ours = agreement(OURS)
    result = compare_rates(times["ours"], times["official"], "images/s", work=(images, images))
    result.update(ours_agreement=ours, baseline_agreement=agreement(OFFICIAL))
    if slow:
        bf16 = {"skipped": slow}
    else:
        bf16 = compare_rates(times["bf16"], times["ours"], "images/s", work=(images, images))
        bf16.update(ours_agreement=agreement(OURS, half), baseline_agreement=ours)
    return {"reconstruction": result, "reconstruction_bf16": bf16, "reconstruction_times": times}
