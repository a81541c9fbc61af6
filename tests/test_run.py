"""`vlv train` end to end on the tiny preset: the CLI contract, exact resume, DDP, bad data, the latent cache."""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import vlv
from vlv.cli import main
from vlv.data.indexed import FolderRecords, IndexedBatches
from vlv.data.readers import open_source
from vlv.model import VLV
from vlv.presets import preset

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
BIN = Path(sys.executable).parent


pytestmark = pytest.mark.usefixtures("fresh_accelerator_state")


def write_images(folder: Path, n: int, *, captions: bool = True, seed: int = 0) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (24, 20, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
        if captions:
            (folder / f"{i:03d}.txt").write_text("a small red circle at the top left")
    return [f"{i:03d}" for i in range(n)]


def train_args(out: Path, data: Path, *extra: str, steps: int = 6) -> list[str]:
    return ["train", "autoencoder", "--preset", "tiny", "--data", str(data), "--steps", str(steps), "--save-every",
            "2", "--seed", "1", "--out", str(out), "--log-every", "2", "--num-workers", "0", "--batch-size", "4",
            *extra]  # fmt: skip


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "final" / "model.safetensors")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    write_images(folder, 12)
    return folder


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, images) -> Path:
    """A 6-step run with checkpoints every 2 steps (a subprocess, as the resume test's runs are)."""
    out = tmp_path_factory.mktemp("uninterrupted")
    subprocess.run([BIN / "vlv", *train_args(out, images)], env=ENV, check=True, capture_output=True)
    return out


def test_a_run_writes_checkpoints_the_release_artifact_and_what_it_skipped(uninterrupted):
    out = uninterrupted
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_0000002", "step_0000004", "step_0000006"]
    step = out / "checkpoints" / "step_0000004"
    assert {p.name for p in step.iterdir()} == {"model", "trainer.pt", "rank_00000.pt", "state.json"}
    assert json.loads((step / "state.json").read_text())["step"] == 4
    model = vlv.load(out / "final")  # the release artifact loads on its own, strictly
    # what trained, and the vision tower, which has no source to be rebuilt from at this preset
    assert model.config.weights == ("encoder.language_model", "encoder.projection", "encoder.queries", "encoder.vision")
    assert model.embed(torch.rand(1, 3, 16, 16)).shape == (1, 77, 32)
    assert (out / "loss.png").is_file() and (out / "samples" / "step_0000006.png").is_file()
    assert list((out / "logs").rglob("events.out.tfevents.*")), "no tensorboard event file"
    resolved = json.loads((out / "run.json").read_text())
    assert resolved["phases"][0]["optim"]["steps"] == 6 and resolved["model"]["name"] == "tiny"


def test_the_last_line_states_how_many_inputs_were_skipped_and_the_sampling_flags_reach_the_run(
    tmp_path, images, capsys
):
    out = tmp_path / "run"
    flags = ["--noises-per-image", "2", "--timesteps", "stratified", "--timestep-logit-normal", "-0.5", "1",
             "--lr-scale", "encoder.projection", "3", "--adam-betas", "0.9", "0.95", "--optimizer", "muon",
             "--empty-prompt-offset"]  # fmt: skip
    assert main(train_args(out, images, *flags, steps=2)) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("skipped 0 unreadable inputs")
    phase = json.loads((out / "run.json").read_text())["phases"][0]
    assert (phase["noises_per_image"], phase["timesteps"]) == (2, "stratified")
    assert phase["timestep_logit_normal"] == [-0.5, 1.0]
    assert phase["optim"]["lr_scales"] == [["encoder.projection", 3.0]]
    assert phase["optim"]["betas"] == [0.9, 0.95] and phase["optim"]["optimizer"] == "muon"
    assert json.loads((out / "run.json").read_text())["model"]["encoder"]["empty_prompt_offset"] is True


def test_a_run_killed_hard_after_a_checkpoint_resumes_to_the_same_weights_bit_for_bit(tmp_path, images, uninterrupted):
    out = tmp_path / "killed"
    run = subprocess.Popen([BIN / "vlv", *train_args(out, images)], env=ENV, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 120
    while not (out / "checkpoints" / "step_0000004").is_dir() and time.time() < deadline:
        time.sleep(0.05)
    run.send_signal(signal.SIGKILL)
    run.wait()
    assert not (out / "final").exists(), "the run finished before it could be killed"
    assert main(train_args(out, images, "--resume")) == 0
    ours, reference = weights(out), weights(uninterrupted)
    assert ours.keys() == reference.keys()
    assert all(torch.equal(ours[k], reference[k]) for k in ours)


def test_a_compiled_run_trains_to_the_weights_of_the_eager_run(tmp_path, images, uninterrupted):
    """`--compile BACKEND` runs the step's networks through torch.compile (aot_eager here: its graphs without
    inductor's minutes of code generation) through the whole run, checkpoints and sample grids included; the run
    records the choice and ends at the eager run's weights, saved under the same names."""
    out = tmp_path / "compiled"
    assert main(train_args(out, images, "--compile", "aot_eager")) == 0
    assert json.loads((out / "run.json").read_text())["run"]["compile"] == "aot_eager"
    ours, reference = weights(out), weights(uninterrupted)
    assert ours.keys() == reference.keys()
    for key in ours:
        torch.testing.assert_close(ours[key], reference[key], rtol=1e-4, atol=1e-6, msg=key)


def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, images, uninterrupted, caplog):
    out = tmp_path / "corrupt"
    assert main(train_args(out, images, steps=6)) == 0
    # As if the run had stopped just after writing step 4's checkpoint, which was then damaged on disk.
    shutil.rmtree(out / "checkpoints" / "step_0000006")
    shutil.rmtree(out / "final")
    trainer = out / "checkpoints" / "step_0000004" / "trainer.pt"
    trainer.write_bytes(trainer.read_bytes()[:100])
    with caplog.at_level("WARNING"):
        assert main(train_args(out, images, "--resume")) == 0
    assert "step_0000004 is unreadable" in caplog.text and "falling back" in caplog.text
    ours, reference = weights(out), weights(uninterrupted)
    assert all(torch.equal(ours[k], reference[k]) for k in ours)  # continued from step 2, same result


@pytest.mark.skipif(not (BIN / "accelerate").exists(), reason="accelerate's launcher is not installed")
@pytest.mark.parametrize("optimizer", ["adamw", "muon"])  # muon: two optimizers, each prepared by accelerate
def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path, images, optimizer):
    one, two = tmp_path / "one", tmp_path / "two"
    flags = ("--batch-size", "8", "--optimizer", optimizer)
    subprocess.run([BIN / "vlv", *train_args(one, images, *flags, steps=4)], env=ENV, check=True, capture_output=True)
    launch = [BIN / "accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "vlv"]  # fmt: skip
    result = subprocess.run([*launch, *train_args(two, images, *flags, steps=4)], env=ENV,
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((two / "run.json").read_text())["processes"] == 2
    a, b = weights(one), weights(two)
    start = VLV(preset("tiny")).encoder.state_dict()
    moved = sum(((a[k] - start[k.removeprefix("encoder.")]) ** 2).sum() for k in a).sqrt().item()
    assert moved > 1e-2  # training moved them
    if optimizer == "adamw":  # only the float summation order of the all-reduce differs
        assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    else:  # Muon orthogonalises in bf16, which magnifies that rounding in the gradient's weak directions: 0.5% of
        # the distance moved, where one process that saw only its half of the batch lands 33% away
        assert sum(((a[k] - b[k]) ** 2).sum() for k in a).sqrt().item() < 0.05 * moved


def test_bad_files_are_skipped_counted_and_every_good_image_is_used(tmp_path, capsys):
    data = tmp_path / "mixed"
    good = write_images(data, 10)
    (data / "empty.png").write_bytes(b"")
    (data / "text.jpg").write_text("not an image")
    truncated = (data / "000.png").read_bytes()
    (data / "truncated.png").write_bytes(truncated[: len(truncated) // 2])
    bad = {"empty", "text", "truncated"}
    # 13 steps of one image: one epoch over the 13 files (a micro-batch whose image is bad takes the next ones).
    assert main(train_args(tmp_path / "run", data, "--batch-size", "1", steps=13)) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("skipped 3 unreadable inputs")
    assert set(json.loads((tmp_path / "run" / "skipped.json").read_text())) == bad
    # What the run read in that epoch: the same batches its data class gives, every good image among them.
    batches = IndexedBatches(FolderRecords(open_source(data).units), image_size=16, global_batch=1, seed=1)
    used = {key for u in range(13) for key in batches[u]["keys"]}
    assert used >= set(good)


def test_stage_2_runs_the_three_phases_from_a_stage_1_checkpoint_and_captions(tmp_path, images):
    stage1 = tmp_path / "stage1"
    assert main(train_args(stage1, images, steps=2)) == 0
    args = ["train", "captioner", "--init", str(stage1 / "final"), "--data", str(images), "--steps", "2,2,3",
            "--out", str(tmp_path / "stage2"), "--num-workers", "0", "--batch-size", "2"]  # fmt: skip
    assert main(args) == 0
    state = json.loads((tmp_path / "stage2" / "checkpoints" / "step_0000007" / "state.json").read_text())
    assert [e["phase"] for e in state["log"]][-1] == "encoder" and state["phase_done"]
    model = vlv.load(tmp_path / "stage2" / "final")
    assert set(model.config.weights) >= {"caption_decoder.projector", "caption_decoder.llm", "encoder.queries"}
    captions = model.caption(torch.rand(2, 3, 16, 16))
    assert len(captions) == 2 and all(isinstance(c, str) for c in captions)


def vae_checkpoint(directory: Path) -> Path:
    """The tiny model with a small VAE in its teacher (latents 4 × 8 × 8 for 16-px images), saved as a checkpoint."""
    cfg = preset("tiny")
    vae = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
               up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=[8, 8], layers_per_block=1,
               latent_channels=4, norm_num_groups=4, sample_size=16)  # fmt: skip
    unet = {**cfg.teacher.unet_arch, "in_channels": 4, "out_channels": 4, "sample_size": 8}
    cfg = dataclasses.replace(cfg, teacher=dataclasses.replace(cfg.teacher, vae_arch=vae, unet_arch=unet))
    model = VLV(cfg)
    model.decoder  # noqa: B018 — build the teacher so the checkpoint carries it
    model.save_pretrained(directory)
    return directory


def test_training_on_cached_latents_equals_training_on_images(tmp_path, images, capsys):
    init = vae_checkpoint(tmp_path / "init")
    common = ["--init", str(init), "--steps", "3", "--save-every", "10", "--seed", "2", "--num-workers", "0",
              "--batch-size", "4", "--preview", "0"]  # fmt: skip
    assert main(["cache-latents", "--model", str(init), "--data", str(images), "--out", str(tmp_path / "cache"),
                 "--batch-size", "5", "--shard-size", "5"]) == 0  # fmt: skip
    assert "cached 12 images in 3 shards" in capsys.readouterr().out
    assert main(["train", "autoencoder", "--data", str(images), "--out", str(tmp_path / "a"), *common]) == 0
    assert main(["train", "autoencoder", "--latents", str(tmp_path / "cache"), "--out", str(tmp_path / "b"),
                 *common]) == 0  # fmt: skip
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5  # same images, same noise: only the VAE skipped


def test_a_cache_from_another_teacher_is_refused(tmp_path, images):
    init = vae_checkpoint(tmp_path / "init")
    assert main(["cache-latents", "--model", str(init), "--data", str(images), "--out", str(tmp_path / "cache")]) == 0
    other = vlv.load(init)
    other.decoder.vae.encoder.conv_in.weight.data += 1  # another VAE: the teacher travels in the checkpoint
    other.save_pretrained(tmp_path / "other")
    args = ["train", "autoencoder", "--init", str(tmp_path / "other"), "--latents", str(tmp_path / "cache"),
            "--out", str(tmp_path / "run"), "--steps", "1", "--num-workers", "0"]  # fmt: skip
    assert main(args) == 2  # a clear error, not a run on the wrong latents


def test_a_run_on_streamed_shards_resumes_to_the_same_weights_with_two_workers(tmp_path):
    """Tar shards are streamed by 2 dataloader workers; a checkpoint records each slot's shard and offset."""
    from tests.data.test_readers import sample_images, write_shards

    shards = write_shards(tmp_path / "shards", sample_images(24), n_shards=4)
    data = shards / "{00000..00003}.tar"
    args = ["--num-workers", "2", "--preview", "0"]
    assert main(train_args(tmp_path / "whole", data, *args, steps=8)) == 0
    assert main(train_args(tmp_path / "cut", data, *args, steps=8)) == 0
    for later in ("step_0000006", "step_0000008"):  # as if killed after step 4's checkpoint
        shutil.rmtree(tmp_path / "cut" / "checkpoints" / later)
    shutil.rmtree(tmp_path / "cut" / "final")
    rank = torch.load(tmp_path / "cut" / "checkpoints" / "step_0000004" / "rank_00000.pt", weights_only=True)
    assert rank["data"]["consumed"] == 4 and len(rank["data"]["slots"]) == 2  # both workers' positions
    assert main(train_args(tmp_path / "cut", data, *args, "--resume", steps=8)) == 0
    ours, reference = weights(tmp_path / "cut"), weights(tmp_path / "whole")
    assert all(torch.equal(ours[k], reference[k]) for k in ours)


def test_resuming_with_another_recipe_is_a_clear_error(tmp_path, images, capsys):
    out = tmp_path / "run"
    assert main(train_args(out, images, "--preview", "0", steps=2)) == 0
    assert main(train_args(out, images, "--preview", "0", "--resume", steps=4)) == 2
    error = capsys.readouterr().err
    assert "written by another recipe" in error and "['optim']" in error


def test_with_ema_decay_each_phase_ends_with_the_ema_of_its_weights(tmp_path, images, capsys):
    plain, smoothed = tmp_path / "plain", tmp_path / "ema"
    assert main(train_args(plain, images, "--preview", "0", steps=4)) == 0
    assert main(train_args(smoothed, images, "--preview", "0", "--ema-decay", "0.5", steps=4)) == 0
    ema = torch.load(smoothed / "checkpoints" / "step_0000004" / "trainer.pt", weights_only=True)["ema"]
    final, live = weights(smoothed), weights(plain)  # same seed, data and steps: the EMA is all that differs
    assert ema.keys() and all(torch.equal(final[k], v) for k, v in ema.items())
    assert not all(torch.equal(final[k], live[k]) for k in ema)
    assert main(train_args(tmp_path / "bad", images, "--ema-decay", "1", steps=2)) == 2
    assert "ema_decay must be in [0, 1)" in capsys.readouterr().err
    assert main(train_args(tmp_path / "bad_betas", images, "--adam-betas", "0.9", "1", steps=2)) == 2
    assert "betas must be two numbers in [0, 1)" in capsys.readouterr().err
    from_checkpoint = [a if a != "tiny" else str(plain / "final") for a in train_args(tmp_path / "o", images, steps=2)]
    from_checkpoint[from_checkpoint.index("--preset")] = "--init"
    assert main([*from_checkpoint, "--empty-prompt-offset"]) == 2
    assert "--empty-prompt-offset shapes a new encoder" in capsys.readouterr().err


@pytest.mark.parametrize("layout", ["folder", "parquet"])
def test_stage_2_encodes_each_image_once_while_the_encoder_is_frozen(tmp_path, images, layout):
    """Phases mlp and llm (encoder frozen): each of the data's 12 images is encoded once per phase, not at each of
    its 2 draws, with the same losses to float precision; phase encoder trains it and encodes every draw. With
    `--conditioning-cache-gib 0` every draw is encoded. A run resumed from a mid-phase checkpoint (the cache starts
    afresh there, in the uninterrupted run too) ends with the uninterrupted run's weights, bit for bit. Parquet is
    streamed, in 3 row groups of 5, 5 and 2 images, and each row group's file has the same name (`train`): the images
    are told apart by their row group and row, not by the file's name."""
    from tests.conftest import reset_accelerate_state
    from tests.data.test_readers import write_parquet
    from vlv.encoder import VLVEncoder

    data = images
    if layout == "parquet":
        files = sorted(images.glob("*.png"))
        data = tmp_path / "parquet"
        for part, chunk in enumerate((files[:5], files[5:10], files[10:])):  # train.parquet in 3 folders, 1 group each
            (data / str(part)).mkdir(parents=True)
            samples = [(f.read_bytes(), f.with_suffix(".txt").read_text()) for f in chunk]
            write_parquet(data / str(part) / "train.parquet", samples)
        data = f"{data}/*/train.parquet"

    init = tmp_path / "stage1"
    model = VLV(preset("tiny"))
    model.encoder  # noqa: B018 — build it so the checkpoint stores it
    model.save_pretrained(init)
    encoded: list[int] = []

    def count(module, args, output):
        if isinstance(module, VLVEncoder):
            encoded.append(args[0].shape[0])

    def run(out: Path, *extra: str) -> tuple[int, list[dict]]:
        encoded.clear()
        args = ["train", "captioner", "--init", str(init), "--data", str(data), "--out", str(out), "--seed", "1",
                "--num-workers", "0", "--batch-size", "4", "--steps", "6,6,2", "--log-every", "1", "--preview", "0",
                "--keep", "10", *extra]  # fmt: skip
        handle = torch.nn.modules.module.register_module_forward_hook(count)
        try:
            assert main(args) == 0
        finally:
            handle.remove()
            reset_accelerate_state()
        return sum(encoded), json.loads((out / "final" / "training.json").read_text())["log"]

    # 6 steps of 4 draw each of the 12 images twice per phase (each epoch is a permutation of the folder).
    cached, cached_log = run(tmp_path / "cached")
    plain, plain_log = run(tmp_path / "plain", "--conditioning-cache-gib", "0")
    assert (cached, plain) == (12 + 12 + 2 * 4, 24 + 24 + 2 * 4)
    frozen = [(a["loss"], b["loss"]) for a, b in zip(cached_log, plain_log) if a["phase"] in ("mlp", "llm")]
    assert len(frozen) == 12 and all(a == pytest.approx(b, rel=1e-5) for a, b in frozen)

    # Checkpoints after steps 4, 6, 10, 12, 14; in each frozen phase steps 5–6 encode their 8 images again.
    uninterrupted = tmp_path / "saving"
    assert run(uninterrupted, "--save-every", "4")[0] == (12 + 8) * 2 + 2 * 4
    resumed = tmp_path / "resumed"
    shutil.copytree(uninterrupted, resumed)
    for later in sorted((resumed / "checkpoints").iterdir())[1:]:  # as if it had stopped after step 4
        shutil.rmtree(later)
    shutil.rmtree(resumed / "final")
    run(resumed, "--resume")
    ours, reference = weights(resumed), weights(uninterrupted)
    assert ours.keys() == reference.keys() and all(torch.equal(ours[k], reference[k]) for k in ours)
