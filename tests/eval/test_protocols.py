"""The evaluation protocols and `vlv eval` on the tiny preset (real tiny models, a small feature network)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from vlv.cli import build_parser, load_model, main
from vlv.eval.protocols import frechet, reconstruction_fid, text_to_image_fid, write_results


class Pooled(nn.Module):
    """A small fixed feature network: 4×4 average-pooled pixels (48-d)."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return nn.functional.adaptive_avg_pool2d(images, 4).flatten(1)


@pytest.fixture
def references():
    return torch.rand(64, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def test_text_to_image_fid_is_zero_for_a_model_that_draws_the_references(references):
    network = Pooled().eval()
    captions = [f"image {i}" for i in range(len(references))]

    def copy(prompts, seed):  # draws exactly the reference of each caption
        return references[[int(p.split()[1]) for p in prompts]]

    def noise(prompts, seed):
        return torch.rand(len(prompts), 3, 16, 16, generator=torch.Generator().manual_seed(seed))

    exact, samples = text_to_image_fid(captions, references, copy, network, batch_size=10)
    assert exact["fid"] < 1e-6 and exact["images"] == 64 and torch.equal(samples, references)
    other, _ = text_to_image_fid(captions, references, noise, network, batch_size=10)
    assert other["fid"] > 1e-3


def test_reconstruction_fid_compares_reconstructions_with_the_originals(tiny_model, references):
    network = Pooled().eval()
    images = references[:8]
    results, recon = reconstruction_fid(tiny_model, images, network, seed=3, batch_size=4, steps=2)
    assert results["images"] == 8 and recon.shape == tiny_model.preprocess(images).shape
    # The batches are seeded by position: the same as reconstructing each batch directly.
    torch.testing.assert_close(recon[4:], tiny_model.reconstruct(images[4:], seed=7, steps=2))
    assert results["fid"] == pytest.approx(frechet(network, recon, tiny_model.preprocess(images)))


def test_write_results_tables_every_number(tmp_path):
    results = {"reconstruction": {"fid": 1.23456, "images": 8}, "note": "text", "vqa": {"gt": {"0_shot": 0.5}}}
    json_path, md_path = write_results(tmp_path, results, title="t")
    assert json.loads(json_path.read_text()) == results
    table = md_path.read_text()
    assert "| reconstruction / fid | 1.235 |" in table and "| vqa / gt / 0_shot | 0.5 |" in table
    assert "note" not in table


def test_eval_captions_cli_scores_against_the_folder_captions(tiny_model, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(data / f"{i}.png")
        (data / f"{i}.txt").write_text("a red circle at the top left")
    (data / "broken.png").write_bytes(b"not an image")
    tiny_model.save_pretrained(tmp_path / "model")
    out = tmp_path / "eval"
    assert main(["eval", "captions", "--model", str(tmp_path / "model"), "--data", str(data), "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["images"] == 6  # the broken file is skipped, with a count
    assert 0 <= results["BLEU-4"] <= 1 and results["CIDEr"] >= 0
    lines = (out / "captions.jsonl").read_text().splitlines()
    assert len(lines) == 6 and json.loads(lines[0])["reference"] == "a red circle at the top left"
    # --dtype bf16: the flags load the model in bf16, and the protocol runs on it
    flags = ["eval", "captions", "--model", str(tmp_path / "model"), "--data", str(data), "--dtype", "bf16"]
    assert main([*flags, "--out", str(tmp_path / "bf16")]) == 0
    model = load_model(build_parser().parse_args(flags))
    model.caption(torch.rand(1, 3, 16, 16))  # builds the parts captioning needs
    assert {p.dtype for name in model.built_parts() for p in model.part(name).parameters()} == {torch.bfloat16}
