"""Case `captioning`: captions/s of a trained shapes captioner, ours against the official decoding.

- ours: `VLV.caption` at batch 32 — greedy, KV cache, each caption stops at its EOS (trained in stage 2).
- official: batch 2, beam 4, 300 new tokens every time (the official captioner learns no EOS, so generation runs to
  the limit and a post-processor cuts the text); emulated on the same model by forbidding an early stop.
- batching alone: ours at batch 2 with our decoding, against ours at batch 32.
- bf16: ours with the model in bf16 (`vlv caption --dtype bf16`), against ours in float32; with the share of the
  images whose caption is the same in both. Skipped, with the reason, where the device has no native bf16 kernels
  (`vlv.precision`: there it only measures the fallback, 5.7x slower on an AVX2-only CPU, for minutes).
"""

from __future__ import annotations

import copy

import torch

from bench.harness import compare_rates, interleaved
from vlv.model import VLV
from vlv.precision import slow_bf16_message
from vlv.shapes.stage1 import renders
from vlv.shapes.world import sample_scenes


def official_captions(model: VLV, images: torch.Tensor, *, beams: int = 4, tokens: int = 300) -> torch.Tensor:
    """Beam search to exactly `tokens` new tokens, as a captioner without a learned EOS decodes."""
    decoder = model.caption_decoder
    with torch.no_grad():
        c = model.condition(model.encoder.eval()(model.preprocess(images)))  # as `VLV.caption` conditions
        prefix = decoder.prefix(c)
        return decoder.llm.generate(
            inputs_embeds=prefix,
            attention_mask=torch.ones(prefix.shape[:2], dtype=torch.long, device=prefix.device),
            max_new_tokens=tokens,
            min_new_tokens=tokens,
            num_beams=beams,
            do_sample=False,
            pad_token_id=decoder.pad_id,
        )


def run(model: VLV, device: str = "cpu", *, images: int = 64, official_images: int = 4, repeats: int = 3) -> dict:
    model = model.to(device).eval()
    pixels = renders(sample_scenes(images, seed=7, split="heldout")).to(device)

    def ours(batch: int, captioner: VLV = model) -> list[str]:
        return [text for i in range(0, len(pixels), batch) for text in captioner.caption(pixels[i : i + batch])]

    def official() -> None:
        for i in range(0, official_images, 2):
            official_captions(model, pixels[i : i + 2])

    arms = {"ours": lambda: ours(32), "batch2": lambda: ours(2), "official": official}
    slow = slow_bf16_message(device)
    if not slow:
        half = copy.deepcopy(model).to(torch.bfloat16)
        arms["bf16"] = lambda: ours(32, half)
    times = interleaved(arms, repeats=repeats, device=device)
    if slow:
        bf16 = {"skipped": slow}
    else:
        same = sum(a == b for a, b in zip(ours(32), ours(32, half), strict=True)) / images
        bf16 = compare_rates(times["bf16"], times["ours"], "captions/s", work=(images, images))
        bf16["same_captions"] = same
    return {
        "caption_vs_official": compare_rates(
            times["ours"], times["official"], "captions/s", work=(images, official_images)
        ),
        "caption_batching": compare_rates(times["ours"], times["batch2"], "captions/s", work=(images, images)),
        "caption_bf16": bf16,
        "caption_times": times,
    }
