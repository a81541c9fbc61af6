"""Batch inference (`vlv.infer` through the `vlv` commands) on the tiny preset: inputs, resumable captions that
survive a kill, reconstructions with a contact sheet, compositions, and embeddings that a diffusers
`StableDiffusionPipeline` of the same teacher turns into the same images as `reconstruct`."""

import dataclasses
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline
from PIL import Image
from safetensors import safe_open

import vlv
from vlv import infer
from vlv.cli import main
from vlv.images import to_pil
from vlv.model import VLV
from vlv.presets import preset

REPO = Path(__file__).resolve().parents[1]


def _png(path: Path, color, size=(20, 20)) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return str(path)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("model") / "tiny"
    VLV(preset("tiny")).eval().save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def model(model_dir):
    return vlv.load(model_dir)


@pytest.fixture
def folder(tmp_path):
    """Four good images (two in a subfolder, one not square) and three bad ones; a non-image file beside them."""
    root = tmp_path / "images"
    _png(root / "a.png", (200, 30, 30))
    _png(root / "b.jpg", (30, 200, 30), size=(40, 20))
    _png(root / "sub" / "c.png", (30, 30, 200))
    _png(root / "sub" / "d.webp", (220, 220, 30))
    (root / "broken.png").write_bytes(b"this is not an image")
    (root / "empty.jpg").write_bytes(b"")
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="JPEG")
    (root / "sub" / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (root / "notes.md").write_text("not listed: no image extension")
    return root


def _records(path: Path) -> list[dict]:
    text = path.read_text()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


# ----- inputs ---------------------------------------------------------------------------------------------------------


def test_inputs_from_folders_lists_and_files(folder, tmp_path):
    listed = infer.list_inputs([folder])
    assert [Path(p).relative_to(folder).as_posix() for p in listed] == [
        "a.png", "b.jpg", "broken.png", "empty.jpg", "sub/c.png", "sub/d.webp", "sub/truncated.jpg",
    ]  # fmt: skip
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "some.txt").write_text(f"../images/a.png\n\n  ../images/sub/c.png  \n{folder / 'b.jpg'}\nmissing.png\n")
    # The list's paths are relative to the list file; a file reached twice is kept once, at its first place.
    assert infer.list_inputs([lists / "some.txt", folder / "a.png"]) == [
        os.path.normpath(lists / "../images/a.png"), os.path.normpath(lists / "../images/sub/c.png"),
        str(folder / "b.jpg"), str(lists / "missing.png"),
    ]  # fmt: skip
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no image files"):
        infer.list_inputs([tmp_path / "empty"])
    with pytest.raises(FileNotFoundError, match="list file not found: .*nothing.lst"):
        infer.list_inputs([tmp_path / "nothing.lst"])


def test_output_names_are_unique():
    assert infer.output_names(["x/cats/a.jpg", "x/dogs/a.jpg", "x/b.png"]) == ["cats/a.png", "dogs/a.png", "b.png"]
    assert infer.output_names(["d/a.jpg", "d/a.png", "d/c.png"], reserved=["c.png"]) == [
        "a.jpg.png", "a.png.png", "c.png.png",
    ]  # fmt: skip


# ----- caption ------------------------------------------------------------------------------------------------------


def test_caption_folder_records_every_input_once(model_dir, model, folder, tmp_path, monkeypatch):
    out = tmp_path / "captions.jsonl"
    assert main(["caption", str(folder), "--model", str(model_dir), "--out", str(out), "--batch-size", "3"]) == 1
    records = _records(out)
    inputs = infer.list_inputs([folder])
    assert sorted(r["image"] for r in records) == sorted(inputs)
    errors = {Path(r["image"]).name: r["error"] for r in records if "error" in r}
    assert errors == {"broken.png": "not an image", "empty.jpg": "empty file", "truncated.jpg": "truncated"}
    # Every good image captioned, as the model captions it (its batch-mates were bad files: still captioned).
    good = [p for p in inputs if Path(p).name not in errors]
    assert {r["image"]: r["caption"] for r in records if "caption" in r} == dict(zip(good, model.caption(good)))

    # A rerun finds everything done: it calls no model, writes nothing, and still reports the failures.
    before, mtime = out.read_bytes(), out.stat().st_mtime_ns

    def no_call(*args, **kwargs):
        raise AssertionError("the model was called on a finished run")

    monkeypatch.setattr(VLV, "caption", no_call)
    assert main(["caption", str(folder), "--model", str(model_dir), "--out", str(out)]) == 1
    assert out.read_bytes() == before and out.stat().st_mtime_ns == mtime


def test_caption_cuts_a_partial_line_and_merges_parts(model_dir, folder, tmp_path):
    a, b, c = str(folder / "a.png"), str(folder / "b.jpg"), str(folder / "sub/c.png")
    out = tmp_path / "captions.jsonl"
    # A run killed inside a write left half a line for b; rank 1 of a killed 2-process run had captioned c.
    out.write_text(json.dumps({"image": a, "caption": "kept"}) + "\n" + '{"image": "' + b + '", "capt')
    infer.part_file(out, 1).write_text(json.dumps({"image": c, "caption": "from rank 1"}) + "\n")
    # The inputs come from a list file of paths relative to it: the same files as the records' absolute paths.
    listing = tmp_path / "lists" / "three.lst"
    listing.parent.mkdir()
    listing.write_text("../images/a.png\n../images/b.jpg\n\n../images/sub/c.png\n")
    assert main(["caption", str(listing), "--model", str(model_dir), "--out", str(out)]) == 0
    records = _records(out)
    assert [r["image"] for r in records] == [a, os.path.normpath(tmp_path / "lists/../images/b.jpg"), c]
    assert records[0]["caption"] == "kept" and "caption" in records[1] and records[2]["caption"] == "from rank 1"
    assert not infer.part_files(out)
    # A complete line that is not a record is not silently dropped: the run stops, naming the file and line.
    out.write_text(out.read_text() + "garbage\n")
    assert main(["caption", a, "--model", str(model_dir), "--out", str(out)]) == 2


def test_killed_caption_run_resumes_without_duplicates(model_dir, tmp_path):
    paths = [_png(tmp_path / "many" / f"{i:03d}.png", (4 * i, 100, 255 - 4 * i), size=(8, 8)) for i in range(40)]
    out = tmp_path / "captions.jsonl"
    # Batches of one long caption each, so that the run is still going when its first line appears; then SIGKILL,
    # which leaves the process no chance to clean up.
    command = [sys.executable, "-m", "vlv", "caption", str(tmp_path / "many"), "--model", str(model_dir),
               "--out", str(out), "--batch-size", "1", "--max-new-tokens", "150"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (out.is_file() and out.stat().st_size > 0) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    process.kill()
    process.wait()
    cut = out.read_text()
    assert 0 < cut.count("\n") < len(paths), "the run was not killed while it ran"
    assert main(["caption", str(tmp_path / "many"), "--model", str(model_dir), "--out", str(out),
                 "--batch-size", "40"]) == 0  # fmt: skip
    records = _records(out)
    assert sorted(r["image"] for r in records) == paths and all("caption" in r for r in records)
    assert out.read_text().startswith(cut[: cut.rfind("\n") + 1])  # what the killed run wrote stays


# ----- reconstruct, compose -----------------------------------------------------------------------------------------


def test_reconstruct_writes_pngs_and_a_contact_sheet(model_dir, model, tmp_path):
    first = _png(tmp_path / "in" / "cats" / "x.png", (200, 30, 30))
    second = _png(tmp_path / "in" / "dogs" / "x.png", (30, 30, 200), size=(30, 18))
    bad = tmp_path / "in" / "bad.png"
    bad.write_bytes(b"nope")
    out = tmp_path / "recon"
    args = ["reconstruct", first, str(bad), second, "--model", str(model_dir), "--out", str(out), "--steps", "2"]
    assert main([*args, "--seed", "3"]) == 1  # the bad input is reported and skipped
    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert names == ["cats/x.png", "contact_sheet.png", "dogs/x.png"]
    expected = to_pil(model.reconstruct([first, second], seed=3, steps=2))
    for name, image in zip(["cats/x.png", "dogs/x.png"], expected):
        assert np.array_equal(np.asarray(Image.open(out / name)), np.asarray(image))
    # Two rows of (original crop | reconstruction), 16-px images upscaled ×8, 2-px gaps.
    sheet = Image.open(out / "contact_sheet.png")
    assert sheet.size == (2 * 128 + 2, 2 * 128 + 2)
    assert np.array_equal(np.asarray(sheet)[130:258:8, 130:258:8], np.asarray(expected[1]))


def test_compose_writes_one_image(model_dir, model, tmp_path):
    a = _png(tmp_path / "a.png", (200, 30, 30))
    b = _png(tmp_path / "b.png", (30, 30, 200))
    out = tmp_path / "composed.png"
    flags = ["--model", str(model_dir), "--out", str(out), "--steps", "2", "--splits", "40,37", "--seed", "1"]
    assert main(["compose", a, b, *flags]) == 0
    expected = to_pil(model.compose([a, b], splits=[40, 37], seed=1, steps=2))[0]
    assert Image.open(out).size == (16, 16)
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(expected))
    assert main(["compose", a, str(tmp_path / "none.png"), *flags]) == 2  # every part must be readable


def test_dtype_flag_runs_the_model_in_bf16(model_dir, tmp_path):
    """--dtype bf16 loads every part in bf16 (as `vlv.load(dtype=...)`): captions and reconstructions are the bf16
    model's; the embeddings file stays float32 (values that bf16 can hold exactly)."""
    paths = [_png(tmp_path / "in" / f"{i}.png", color) for i, color in enumerate([(200, 30, 30), (30, 30, 200)])]
    flags = ["--model", str(model_dir), "--dtype", "bf16"]
    half = vlv.load(model_dir, dtype=torch.bfloat16)

    assert main(["caption", *paths, *flags, "--out", str(tmp_path / "c.jsonl")]) == 0
    assert [r["caption"] for r in _records(tmp_path / "c.jsonl")] == half.caption(paths)
    assert main(["reconstruct", *paths, *flags, "--out", str(tmp_path / "recon"), "--steps", "2"]) == 0
    expected = half.reconstruct(paths, seed=0, steps=2)
    assert expected.dtype == torch.float32  # images leave the model as float32 in [0, 1], whatever its dtype
    assert np.array_equal(np.asarray(Image.open(tmp_path / "recon" / "0.png")), np.asarray(to_pil(expected)[0]))
    assert main(["embed", *paths, *flags, "--out", str(tmp_path / "z.safetensors")]) == 0
    with safe_open(str(tmp_path / "z.safetensors"), framework="pt") as f:
        z, c = f.get_tensor("z"), f.get_tensor("prompt_embeds")
    assert z.dtype == c.dtype == torch.float32
    torch.testing.assert_close(z, half.embed(paths).float(), rtol=0, atol=0)
    assert torch.equal(z, z.bfloat16().float())  # a float32 model's z would not survive the round trip
    assert {p.dtype for name in half.built_parts() for p in half.part(name).parameters()} == {torch.bfloat16}
    with pytest.raises(SystemExit):  # argparse refuses a dtype it does not offer
        main(["caption", *paths, "--model", str(model_dir), "--dtype", "fp16"])


# ----- embed: usable as prompt_embeds by a diffusers pipeline of the same teacher ---------------------------------


def tiny_latent_config():
    """The tiny preset with a latent-space teacher: a two-level VAE (16 px → 8 × 8 × 4) under a 4-channel UNet."""
    config = preset("tiny")
    teacher = dataclasses.replace(
        config.teacher,
        unet_arch={**config.teacher.unet_arch, "in_channels": 4, "out_channels": 4, "sample_size": 8},
        vae_arch=dict(
            in_channels=3,
            out_channels=3,
            down_block_types=["DownEncoderBlock2D"] * 2,
            up_block_types=["UpDecoderBlock2D"] * 2,
            block_out_channels=[8, 16],
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=8,
            sample_size=16,
        ),
    )
    return dataclasses.replace(config, teacher=teacher)


def test_embeddings_drive_a_diffusers_pipeline_to_the_same_images(tmp_path):
    directory = tmp_path / "latent"
    VLV(tiny_latent_config()).eval().save_pretrained(directory)  # the teacher travels inside as a diffusers pipeline
    paths = [_png(tmp_path / f"{i}.png", color, size) for i, (color, size) in
             enumerate([((200, 30, 30), (20, 20)), ((30, 200, 30), (32, 24)), ((30, 30, 200), (16, 16))])]  # fmt: skip
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    out = tmp_path / "z.safetensors"
    assert main(["embed", paths[0], str(bad), *paths[1:], "--model", str(directory), "--out", str(out),
                 "--batch-size", "2"]) == 1  # fmt: skip
    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
        c, z, negative = (f.get_tensor(k) for k in ("prompt_embeds", "z", "negative_prompt_embeds"))
    assert json.loads(meta["images"]) == paths and list(json.loads(meta["skipped"])) == [str(bad)]
    assert c.shape == z.shape == (3, 77, 32) and negative.shape == (1, 77, 32)

    model = vlv.load(directory)
    seed, steps, options = 7, 3, model.config.sampling
    reconstructed = model.reconstruct(paths, seed=seed, steps=steps)  # (3, 3, 16, 16)
    torch.testing.assert_close(z, model.embed(paths))
    torch.testing.assert_close(c, model.condition(z))

    pipe = StableDiffusionPipeline.from_pretrained(
        directory / "teacher", safety_checker=None, requires_safety_checker=False, feature_extractor=None
    )
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(
        pipe.scheduler.config, algorithm_type="dpmsolver++", timestep_spacing=options.timestep_spacing
    )
    pipe.set_progress_bar_config(disable=True)
    size = int(meta["image_size"])
    images = pipe(
        prompt_embeds=c,
        negative_prompt_embeds=negative.expand(len(c), -1, -1),
        num_inference_steps=steps,
        guidance_scale=options.guidance,
        height=size,
        width=size,
        generator=torch.Generator().manual_seed(seed),
        output_type="pt",
    ).images
    torch.testing.assert_close(images, reconstructed, atol=1e-5, rtol=0)
