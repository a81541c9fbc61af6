import dataclasses
import math

import pytest
import torch

from tests.conftest import free_z_loss
from vlv.compositions import Autoencoder, draw_timesteps
from vlv.images import to_batch
from vlv.model import VLV
from vlv.presets import STAGE1_PARTS
from vlv.train import (
    AutoencoderRecipe,
    OptimConfig,
    Trainer,
    paired_only,
    progressive,
    train_autoencoder,
    train_captioner,
    warmup_cosine,
)
from vlv.train.loop import MAX_NONFINITE
from vlv.train.recipes import BASELINE_PARTS, PHASE_PARTS, recipe_dict

CAPTIONS = ["a red circle", "a blue square at the top"]


def test_lr_schedule_warms_up_then_decays_to_zero_at_the_last_step():
    assert warmup_cosine(0, 100, 10) == pytest.approx(0.1)
    assert warmup_cosine(9, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine(55, 100, 10) == pytest.approx(0.5)
    assert warmup_cosine(100, 100, 10) == pytest.approx(0.0)
    assert all(warmup_cosine(s, 100, 10) >= warmup_cosine(s + 1, 100, 10) for s in range(10, 100))


def _batches(images):
    """Step-indexed data: a different half-noise batch each step, the same at a given step in every run."""

    def batches(step: int) -> dict:
        g = torch.Generator().manual_seed(step)
        return {"images": (images + 0.1 * torch.rand(images.shape, generator=g)).clamp(0, 1), "captions": CAPTIONS}

    return batches


@pytest.mark.parametrize(
    "stage, optimizer", [("autoencoder", "adamw"), ("captioner", "adamw"), ("autoencoder", "muon")]
)
def test_a_restored_training_state_continues_bitwise(tiny_config, images, stage, optimizer):
    """Save the loop's state mid-run, continue in a fresh model and loop: the same weights as the uninterrupted run."""
    cfg = OptimConfig(steps=8, lr=3e-3, warmup_steps=2, seed=3, optimizer=optimizer)
    parts = STAGE1_PARTS if stage == "autoencoder" else PHASE_PARTS["encoder"]

    def trainer() -> Trainer:
        model = VLV(tiny_config)
        model.set_trainable(parts)
        composition = model.autoencoder(noises_per_image=2) if stage == "autoencoder" else model.captioner()
        return Trainer(composition, cfg)

    uninterrupted = trainer()
    uninterrupted.run(_batches(images), log_every=2)

    first = trainer()
    first.run(_batches(images), until=5, log_every=2)
    state = first.state_dict()
    torch.manual_seed(999)  # whatever happens to the RNGs in between is undone by the restore
    second = trainer()  # the frozen parts are those of the first run (as when they come from a source) …
    with torch.no_grad():
        for p in second.params.values():
            p.add_(1.0)  # … and every trained weight must come from the state
    second.load_state_dict(state)
    second.run(_batches(images), log_every=2)

    assert second.step == uninterrupted.step == 8
    for name, p in uninterrupted.params.items():
        assert torch.equal(p, second.params[name]), name
    assert [e["loss"] for e in second.log] == [e["loss"] for e in uninterrupted.log]
    # step 5 lies inside a logging window: the gradient norms seen before the snapshot count in its entry
    assert [e["grad_norm"] for e in second.log] == [e["grad_norm"] for e in uninterrupted.log]


def test_training_state_is_a_snapshot(tiny_config, images):
    model = VLV(tiny_config)
    model.set_trainable(["encoder.queries"])
    trainer = Trainer(model.autoencoder(), OptimConfig(steps=4, lr=1e-2))
    state = trainer.state_dict()
    before = state["params"]["encoder.queries"].clone()
    trainer.run(_batches(images))
    assert torch.equal(state["params"]["encoder.queries"], before)  # the snapshot did not move with training
    assert not torch.equal(model.encoder.queries, before)


def _reached(composition, batch) -> list[str]:
    """Parameters that require grad but get no gradient from the loss (DDP fails on those)."""
    composition.zero_grad(set_to_none=True)
    composition(batch).backward()
    return [n for n, p in composition.named_parameters() if p.requires_grad and p.grad is None]


def test_every_trainable_parameter_is_reached_by_its_stages_loss(tiny_config, images):
    model = VLV(tiny_config)
    batch = _batches(images)(0)
    model.set_trainable(STAGE1_PARTS)
    assert _reached(model.autoencoder(), batch) == []
    for phase, parts in PHASE_PARTS.items():
        model.set_trainable(parts)
        assert _reached(model.captioner(), batch) == [], phase
    model.set_trainable(BASELINE_PARTS)
    assert _reached(model.captioner(), batch) == []
    model.set_trainable(STAGE1_PARTS)  # stage 1 never builds ψ or the LLM's gradients
    names = [n for n, p in model.autoencoder().named_parameters() if p.requires_grad]
    assert names and all(n.startswith("encoder.") for n in names)


def test_compiled_networks_train_as_the_eager_ones_and_parts_built_later_are_compiled_too(tiny_config, images):
    """`compile_networks` runs the step's networks through torch.compile (here a backend that records the graphs it
    is handed): a stage-1 step gives the eager step's loss and gradients, the UNet runs as a captured graph, the LLM
    built afterwards for stage 2 is compiled as it is built, and the names the weights are saved under do not change."""
    graphs = []

    def recorder(gm, example_inputs):
        graphs.append(gm.code)
        return gm.forward

    batch = _batches(images)(0)
    results = []
    for compiled in (False, True):
        model = VLV(tiny_config)
        model.set_trainable(STAGE1_PARTS)
        composition = model.autoencoder()
        if compiled:
            model.compile_networks(backend=recorder)
        torch.manual_seed(0)
        loss = composition(batch)
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in composition.named_parameters() if p.requires_grad}))
    (eager_loss, eager_grads), (loss, grads) = results
    torch.testing.assert_close(loss, eager_loss)
    assert grads.keys() == eager_grads.keys() and len(grads) > 10
    for name, grad in grads.items():
        torch.testing.assert_close(grad, eager_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    assert any("conv_in" in code for code in graphs)  # the teacher UNet's first layer, inside a captured graph
    assert not any("gate_proj" in code for code in graphs)  # no LLM yet: stage 1 does not build it
    model.set_trainable(PHASE_PARTS["llm"])
    model.captioner()(batch).backward()
    assert any("gate_proj" in code for code in graphs)  # the LLM's MLP (built after `compile_networks`)
    assert all("_orig_mod" not in key for key in model.state_dict())


def test_stage_one_lowers_the_fixed_noise_loss_towards_what_z_can_reach(tiny_config, images):
    model = VLV(tiny_config)
    latents = model.decoder.encode_images(to_batch(images, tiny_config.teacher.image_size)).repeat_interleave(8, 0)

    def loss_of_z(z):
        torch.manual_seed(9)  # fixed noise and timesteps: only z changes the loss
        return model.decoder.denoising_loss(latents, model.conditioner(z).repeat_interleave(8, 0))

    with torch.no_grad():
        before = loss_of_z(model.encoder(images)).item()
    reachable = free_z_loss(model, images, loss_of_z)
    recipe = AutoencoderRecipe(OptimConfig(steps=40, lr=3e-3), batch_size=2, noises_per_image=4)
    log = train_autoencoder(model, lambda step: {"images": images}, recipe, log_every=10)
    assert [e["step"] for e in log] == [10, 20, 30, 40]
    with torch.no_grad():
        after = loss_of_z(model.encoder(images)).item()
    # A random tiny teacher barely listens to its conditioning, so the gain is small in absolute terms: ask for most
    # of what a freely optimised z gains on the same batch.
    assert before - after > 0.5 * (before - reachable), (before, after, reachable)
    assert not any(p.requires_grad for p in model.parameters())  # frozen again after training


def test_stage_two_phases_train_what_they_should(tiny_config, images):
    model = VLV(tiny_config)
    model.part("caption_decoder")
    llm_before = [p.detach().clone() for p in model.caption_decoder.llm.parameters()]
    bart_before = [p.detach().clone() for p in model.encoder.florence.language_model.parameters()]
    queries_before = model.encoder.queries.detach().clone()
    seen = []

    def after_phase(phase):
        llm_moved = not all(torch.equal(a, b) for a, b in zip(llm_before, model.caption_decoder.llm.parameters()))
        bart = model.encoder.florence.language_model.parameters()
        bart_moved = not all(torch.equal(a, b) for a, b in zip(bart_before, bart))
        seen.append((phase.name, llm_moved, bart_moved))

    recipe = progressive((5, 5, 30), OptimConfig(steps=0, lr=3e-3))
    log = train_captioner(model, lambda step: {"images": images, "captions": CAPTIONS}, recipe, after_phase=after_phase)
    assert seen == [("mlp", False, False), ("llm", True, False), ("encoder", True, True)]
    assert torch.equal(queries_before, model.encoder.queries)  # queries and φ stay frozen in every phase
    assert list(dict.fromkeys(e["phase"] for e in log)) == ["mlp", "llm", "encoder"]
    assert log[-1]["loss"] < 0.5 * log[0]["loss"]
    assert paired_only(9, OptimConfig(steps=0)).phases[0].trainable == BASELINE_PARTS


def test_non_finite_losses_in_a_row_stop_training_with_a_clear_error(tiny_config):
    model = VLV(tiny_config)
    nan_images = torch.full((2, 3, 16, 16), float("nan"))
    recipe = AutoencoderRecipe(OptimConfig(steps=20))
    with pytest.raises(FloatingPointError, match=f"stage 1: loss or gradient non-finite for {MAX_NONFINITE} steps"):
        train_autoencoder(model, lambda step: {"images": nan_images}, recipe, log_every=1)


def test_a_non_finite_step_is_skipped_and_training_goes_on(tiny_config, images):
    model = VLV(tiny_config)
    model.set_trainable(["encoder.queries"])
    trainer = Trainer(model.autoencoder(), OptimConfig(steps=4, lr=1e-2))
    nan_images = torch.full_like(images, float("nan"))
    before = model.encoder.queries.detach().clone()
    assert math.isnan(trainer.train_step({"images": nan_images}))
    assert torch.equal(model.encoder.queries, before) and trainer.step == 1  # no update, but the step counts
    log = trainer.run(lambda step: {"images": images}, log_every=1)
    assert not torch.equal(model.encoder.queries, before) and all(math.isfinite(e["loss"]) for e in log)
    assert trainer.nonfinite == 0


def test_the_log_reports_the_gradient_norm_before_clipping(tiny_config, images):
    model = VLV(tiny_config)
    model.set_trainable(["encoder.queries"])
    clip = 1e-6
    trainer = Trainer(model.autoencoder(), OptimConfig(steps=2, lr=1e-2, grad_clip=clip, seed=0))
    batch = {"images": images}
    torch.manual_seed(1)
    trainer.model(batch).backward()
    unclipped = torch.linalg.vector_norm(model.encoder.queries.grad).item()
    model.encoder.queries.grad = None
    torch.manual_seed(1)  # the same noise and timesteps as the pass above
    trainer.train_step(batch)
    assert trainer.grad_norm == pytest.approx(unclipped, rel=1e-4) and unclipped > 1e3 * clip
    log = trainer.run(lambda step: batch, log_every=1)
    assert log[-1]["grad_norm"] > 1e3 * clip  # the norm as computed, not as clipped


def test_nothing_to_train_is_a_clear_error(tiny_config):
    with pytest.raises(ValueError, match="nothing to train"):
        Trainer(VLV(tiny_config).autoencoder(), OptimConfig(steps=1))


def test_ema_follows_the_weights(tiny_config, images):
    model = VLV(tiny_config)
    model.set_trainable(["encoder.queries"])
    start = model.encoder.queries.detach().clone()
    trainer = Trainer(model.autoencoder(), OptimConfig(steps=5, lr=1e-2, ema_decay=0.5))
    trainer.run(_batches(images))
    ema = trainer.ema_state()["encoder.queries"]
    assert not torch.equal(ema, start) and not torch.equal(ema, model.encoder.queries)


def test_a_bf16_autocast_step_at_lr_1e5_moves_every_trained_weight(tiny_config, images):
    """Trained weights stay fp32 master weights in a bf16 model: a 1e-5 AdamW step on a bf16 weight near 1.0 (a
    LayerNorm gain) or 0.02 (a query) would be below bf16's resolution and vanish."""
    model = VLV(tiny_config).to(dtype=torch.bfloat16)
    model.set_trainable(STAGE1_PARTS)
    composition = model.autoencoder()
    trained = {n: p for n, p in composition.named_parameters() if p.requires_grad}
    assert {p.dtype for p in trained.values()} == {torch.float32}
    assert model.decoder.unet.dtype == torch.bfloat16  # frozen parts keep the model's dtype
    before = {n: p.detach().clone() for n, p in trained.items()}
    trainer = Trainer(composition, OptimConfig(steps=1, lr=1e-5))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = trainer.train_step({"images": images})
    assert math.isfinite(loss)
    unchanged = [n for n, p in trained.items() if torch.equal(p, before[n])]
    assert unchanged == []
    # The same step on bf16 weights: most LayerNorm gains (1.0) would not move at all.
    gain = before["encoder.florence.language_model.encoder.layernorm_embedding.weight"]
    assert torch.equal((gain.bfloat16() - 1e-5).float(), gain.bfloat16().float())


def test_the_loop_refuses_to_train_bf16_weights(tiny_config):
    model = VLV(tiny_config)
    model.set_trainable(["encoder.queries"])
    model.encoder.queries.data = model.encoder.queries.data.bfloat16()
    with pytest.raises(ValueError, match="must be float32"):
        Trainer(model.autoencoder(), OptimConfig(steps=1))


def test_frozen_bart_and_llm_stay_in_eval_mode_while_others_train(tiny_config, images):
    """Florence-2-large's BART has dropout 0.1: frozen (progressive phases 1–2), it must not add noise."""
    arch = {**tiny_config.encoder.arch, "text_config": {**tiny_config.encoder.arch["text_config"], "dropout": 0.5}}
    config = dataclasses.replace(tiny_config, encoder=dataclasses.replace(tiny_config.encoder, arch=arch))
    model = VLV(config)
    batch = {"images": images, "captions": CAPTIONS}
    for phase, bart_trains, llm_trains in (("mlp", False, False), ("llm", False, True), ("encoder", True, True)):
        model.set_trainable(PHASE_PARTS[phase])
        composition = model.captioner().train()
        assert model.encoder.florence.language_model.training == bart_trains
        assert model.caption_decoder.llm.training == llm_trains
        assert model.caption_decoder.projector.training
        if not bart_trains:  # no dropout noise: two passes agree
            assert torch.equal(composition(batch), composition(batch))
    assert not torch.equal(composition(batch), composition(batch))  # BART trains: its dropout is on


def _named_batches():
    """Two of six fixed images per step, drawn by index and named by it (`keys`: the conditioning cache)."""
    pool = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(3))

    def batches(step: int) -> dict:
        idx = torch.randint(0, 6, (2,), generator=torch.Generator().manual_seed(step)).tolist()
        return {"images": pool[idx], "captions": [CAPTIONS[i % 2] for i in idx], "keys": idx}

    return batches


@pytest.mark.parametrize("named", [False, True], ids=["plain", "cached"])
def test_an_interrupted_stage_two_continues_from_its_snapshot_bitwise(tiny_config, images, tmp_path, named):
    """Killed in the middle of phase `llm`: a second call resumes from the snapshot (phase `mlp` is not rerun) and
    ends with the weights of the same call uninterrupted; the snapshot is removed at the end. Also with named images,
    whose conditionings phases `mlp` and `llm` cache (both runs start a fresh cache at each snapshot)."""
    recipe = progressive((3, 5, 3), OptimConfig(steps=0, lr=3e-3, warmup_steps=1, seed=2))
    data = _named_batches() if named else _batches(images)
    uninterrupted = VLV(tiny_config)
    expected_log = train_captioner(uninterrupted, data, recipe, snapshot=tmp_path / "whole.pt", snapshot_every=2)

    calls = []

    def dying(step: int) -> dict:
        calls.append(step)
        if len(calls) == 3 + 4:  # the 4th step of phase `llm`, after its snapshot at step 2
            raise KeyboardInterrupt
        return data(step)

    snapshot = tmp_path / "stage2.pt"
    with pytest.raises(KeyboardInterrupt):
        train_captioner(VLV(tiny_config), dying, recipe, snapshot=snapshot, snapshot_every=2)
    assert snapshot.is_file()
    resumed = VLV(tiny_config)
    seen = []
    log = train_captioner(resumed, data, recipe, snapshot=snapshot, snapshot_every=2, after_phase=seen.append)
    assert [p.name for p in seen] == ["llm", "encoder"] and not snapshot.exists()
    assert [e["loss"] for e in log] == [e["loss"] for e in expected_log]
    expected = uninterrupted.state_dict()
    for name, value in resumed.state_dict().items():
        assert torch.equal(value, expected[name]), name


def test_stratified_timesteps_cover_one_stratum_each_and_stay_uniform():
    K, T, images = 4, 1000, 20_000
    t = draw_timesteps(images, K, T, "stratified", torch.Generator().manual_seed(0)).view(images, K)
    assert t.min() >= 0 and t.max() < T
    # an image's K copies fall in K distinct strata of width T / K (one each)
    strata = torch.sort(t // (T // K), dim=1).values
    assert torch.equal(strata, torch.arange(K).expand(images, K))
    # each copy alone is still uniform on [0, T): the loss is unchanged in expectation
    counts = torch.bincount(t[:, 1] // 100, minlength=10).float()
    assert (counts / images - 0.1).abs().max() < 0.01
    uniform = draw_timesteps(images, K, T, "uniform", torch.Generator().manual_seed(0)).view(images, K)
    assert not torch.equal(torch.sort(uniform // (T // K), dim=1).values, strata)  # uniform draws cluster
    with pytest.raises(ValueError, match="unknown timestep sampling"):
        Autoencoder(None, None, None, timesteps="lognormal")


def _logit_normal_stratum(t: torch.Tensor, T: int, K: int, mean: float, std: float) -> torch.Tensor:
    """Which of K equal-probability strata of the logit-normal density each t (at its bin's centre) falls in."""
    x = (t.double() + 0.5) / T
    return (K * torch.special.ndtr((torch.logit(x) - mean) / std)).long()


def test_logit_normal_timesteps_follow_their_density_and_keep_the_strata():
    K, T, images, mean, std = 4, 1000, 20_000, -0.5, 1.0
    for how in ("uniform", "stratified"):
        t = draw_timesteps(images, K, T, how, torch.Generator().manual_seed(0), logit_normal=(mean, std))
        assert t.min() >= 0 and t.max() < T
        t = t.view(images, K)
        # each copy alone follows the density: P(t < T/2) = Φ(−mean / std) = 0.691, the median at T·sigmoid(mean)
        below = (t[:, 1] < T // 2).float().mean().item()
        assert abs(below - 0.6915) < 0.01, how
        assert abs(t[:, 1].float().median().item() / T - torch.sigmoid(torch.tensor(mean)).item()) < 0.01, how
    # stratified: an image's K copies fall in K distinct equal-probability strata of the density (one each; a copy
    # drawn right at a stratum's edge may round across it)
    strata = torch.sort(_logit_normal_stratum(t, T, K, mean, std), dim=1).values
    assert (strata == torch.arange(K)).all(dim=1).float().mean() > 0.99
    # the uniform density is the paper's draw, unchanged
    plain = draw_timesteps(images, K, T, "uniform", torch.Generator().manual_seed(0))
    assert torch.equal(plain, torch.randint(0, T, (images * K,), generator=torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError, match="positive std"):
        Autoencoder(None, None, None, timestep_logit_normal=(0.0, 0.0))


@pytest.mark.parametrize("seeded", [False, True])
@pytest.mark.parametrize("density", [None, (-0.5, 1.0)])
def test_stratified_stage_one_draws_spread_timesteps(tiny_config, images, seeded, density, monkeypatch):
    model = VLV(tiny_config)
    seen = []
    loss = model.decoder.denoising_loss

    def spy(latents, c, *args, **kwargs):
        seen.append(kwargs["t"])
        return loss(latents, c, *args, **kwargs)

    monkeypatch.setattr(model.decoder, "denoising_loss", spy)
    batch = {"images": images, "seeds": torch.tensor([3, 4])} if seeded else {"images": images}
    torch.manual_seed(0)
    model.autoencoder(noises_per_image=4, timesteps="stratified", timestep_logit_normal=density)(batch)
    T = model.decoder.scheduler.config.num_train_timesteps
    per_image = seen[0].view(2, 4)
    strata = per_image // (T // 4) if density is None else _logit_normal_stratum(per_image, T, 4, *density)
    assert torch.equal(torch.sort(strata, dim=1).values, torch.arange(4).expand(2, 4))


def test_with_an_ema_stage_one_returns_the_ema_and_probes_see_it(tiny_config, images):
    model = VLV(tiny_config)
    recipe = AutoencoderRecipe(OptimConfig(steps=6, lr=1e-2, ema_decay=0.5), batch_size=2, noises_per_image=2)
    probed = []
    start = model.encoder.queries.detach().clone()
    train_autoencoder(
        model, lambda step: {"images": images}, recipe, log_every=3,
        on_log=lambda entry: probed.append(model.encoder.queries.detach().clone()),
    )  # fmt: skip
    # replay the same run without the EMA: the live weights at each probe, and at the end
    model2 = VLV(tiny_config)
    plain = dataclasses.replace(recipe, optim=dataclasses.replace(recipe.optim, ema_decay=None))
    live = []
    train_autoencoder(
        model2, lambda step: {"images": images}, plain, log_every=3,
        on_log=lambda entry: live.append(model2.encoder.queries.detach().clone()),
    )  # fmt: skip
    assert len(probed) == len(live) == 2
    for ema, weights in zip(probed, live):
        assert not torch.equal(ema, weights) and not torch.equal(ema, start)
    assert torch.equal(model.encoder.queries, probed[-1])  # the model ends with the EMA the last probe saw
    assert not torch.equal(model.encoder.queries, model2.encoder.queries)


def test_ema_weights_are_swapped_in_and_restored(tiny_config, images):
    model = VLV(tiny_config)
    model.set_trainable(["encoder.queries"])
    trainer = Trainer(model.autoencoder(), OptimConfig(steps=4, lr=1e-2, ema_decay=0.5))
    trainer.run(_batches(images))
    live = model.encoder.queries.detach().clone()
    with trainer.ema_weights():
        assert torch.equal(model.encoder.queries, trainer.ema_state()["encoder.queries"])
    assert torch.equal(model.encoder.queries, live)


def test_lr_scales_multiply_the_learning_rate_of_the_parameters_they_name(tiny_config, images):
    """AdamW's first step moves every weight by lr · sign(grad) (before weight decay): a factor of 4 on the queries
    moves them 4× as far as the projection, on the same schedule; the record of the recipe keeps the pairs."""
    model = VLV(tiny_config)
    model.set_trainable(["encoder.queries", "encoder.projection"])
    cfg = OptimConfig(steps=4, lr=1e-3, weight_decay=0.0, lr_scales=[["encoder.queries", 4.0]])  # as JSON gives it
    assert cfg.lr_scales == (("encoder.queries", 4.0),) and cfg.lr_scale("encoder.projection.0.weight") == 1.0
    composition = model.autoencoder()  # names its parts as the recipes do: encoder.queries, ...
    before = {n: p.detach().clone() for n, p in composition.named_parameters() if p.requires_grad}
    trainer = Trainer(composition, cfg)
    trainer.train_step({"images": images})
    moved = {n: (p.detach() - before[n]).abs() for n, p in composition.named_parameters() if p.requires_grad}
    step = {n: d[d > 0].median().item() for n, d in moved.items()}
    assert step["encoder.queries"] == pytest.approx(4 * trainer.cfg.lr * warmup_cosine(0, 4, 0), rel=0.05)
    assert step["encoder.projection.0.weight"] == pytest.approx(trainer.cfg.lr * warmup_cosine(0, 4, 0), rel=0.05)
    assert recipe_dict(AutoencoderRecipe(cfg))["optim"]["lr_scales"] == [["encoder.queries", 4.0]]
    assert "lr_scales" not in recipe_dict(AutoencoderRecipe(OptimConfig(steps=4)))["optim"]  # older records' form


def test_adamw_runs_fused_on_the_cpu_and_steps_as_the_reference_adamw(tiny_config, images):
    """On the CPU (and CUDA) the trainer's AdamW is torch's fused kernel, one op per parameter where the default runs
    several: over three steps with weight decay and an lr scale its weights stay within float rounding of the
    reference (for-loop) AdamW's. A snapshot keeps the choice, so a run saved by the reference AdamW resumes on it."""
    cfg = OptimConfig(steps=3, lr=1e-3, warmup_steps=1, lr_scales=(("encoder.queries", 4.0),))
    runs = []
    for fused in (True, False):
        torch.manual_seed(0)
        model = VLV(tiny_config)
        model.set_trainable(["encoder.queries", "encoder.projection"])
        trainer = Trainer(model.autoencoder(), cfg)
        assert all(group["fused"] for group in trainer.optimizer.param_groups)
        if not fused:
            for group in trainer.optimizer.param_groups:
                group["fused"], group["foreach"] = None, False
        for _ in range(3):
            trainer.train_step({"images": images, "seeds": torch.arange(len(images))})
        runs.append({n: p.detach().clone() for n, p in trainer.params.items()})
    moved = 0
    for name, weight in runs[0].items():
        torch.testing.assert_close(weight, runs[1][name], rtol=1e-5, atol=1e-6)
        moved += 1
    assert moved == len(runs[1]) >= 3
    saved = trainer.state_dict()  # the reference AdamW's run
    resumed = Trainer(trainer.model, cfg)
    resumed.load_state_dict(saved)
    assert not any(group["fused"] for group in resumed.optimizer.param_groups)


def test_lr_scales_that_name_no_parameter_or_are_not_positive_are_refused(tiny_config):
    model = VLV(tiny_config)
    model.set_trainable(["encoder.queries"])
    Trainer(model.autoencoder(), OptimConfig(steps=1, lr_scales=(("encoder.projection", 2.0),)))  # frozen here: fine
    with pytest.raises(ValueError, match=r"\['encoder.projektion'\] match no parameter"):
        Trainer(model.autoencoder(), OptimConfig(steps=1, lr_scales=(("encoder.projektion", 2.0),)))
    with pytest.raises(ValueError, match="must be positive"):
        OptimConfig(steps=1, lr_scales=(("encoder.queries", 0.0),))


def test_muon_orthogonalises_the_step_of_weight_matrices_and_leaves_the_rest_to_adamw(tiny_config, images):
    """Under Muon a weight matrix's first step is lr · 0.2 · sqrt(max(rows, cols)) × an orthogonalised gradient (most
    singular values near 1; Newton-Schulz leaves the gradient's near-null directions small), not AdamW's lr · sign(grad)
    (every entry the same size); the queries (learned inputs) and biases take
    AdamW's step, lr · sign(grad). The record keeps the choice; AdamW's records read as before; a snapshot of the other
    optimizer is refused."""
    model = VLV(tiny_config)
    model.set_trainable(["encoder.queries", "encoder.projection"])
    composition = model.autoencoder()
    cfg = OptimConfig(steps=4, lr=1e-3, weight_decay=0.0, optimizer="muon")
    before = {n: p.detach().clone() for n, p in composition.named_parameters() if p.requires_grad}
    trainer = Trainer(composition, cfg)
    lr = cfg.lr * warmup_cosine(0, 4, 0)
    trainer.train_step({"images": images})
    moved = {n: p.detach() - before[n] for n, p in composition.named_parameters() if p.requires_grad}
    for name in ("encoder.queries", "encoder.projection.0.bias"):
        assert moved[name].abs().median().item() == pytest.approx(lr, rel=0.05), name
    matrix = moved["encoder.projection.0.weight"]
    singular = torch.linalg.svdvals(matrix / (lr * 0.2 * max(matrix.shape) ** 0.5))
    assert singular.max() < 1.5 and (singular > 0.5).float().mean() > 0.8, singular
    assert singular.max() / singular.median() < 1.5
    assert matrix.abs().std() > 0.3 * matrix.abs().mean()
    assert recipe_dict(AutoencoderRecipe(cfg))["optim"]["optimizer"] == "muon"
    assert "optimizer" not in recipe_dict(AutoencoderRecipe(OptimConfig(steps=4)))["optim"]  # older records' form
    adamw = Trainer(composition, dataclasses.replace(cfg, optimizer="adamw"))
    with pytest.raises(ValueError, match="another optimizer"):
        trainer.load_state_dict(adamw.state_dict())
    with pytest.raises(ValueError, match="unknown optimizer 'sgd'"):
        OptimConfig(steps=1, optimizer="sgd")


@pytest.mark.parametrize("timesteps", ["stratified", "uniform"])
@pytest.mark.parametrize("seeded", [False, True])
def test_antithetic_noise_pairs_the_copies_of_an_image(tiny_config, images, seeded, timesteps, monkeypatch):
    model = VLV(tiny_config)
    seen = []
    loss = model.decoder.denoising_loss

    def spy(latents, c, *args, **kwargs):
        seen.append(kwargs.get("noise"))
        return loss(latents, c, *args, **kwargs)

    monkeypatch.setattr(model.decoder, "denoising_loss", spy)
    batch = {"images": images, "seeds": torch.tensor([3, 4])} if seeded else {"images": images}
    for antithetic in (True, False):
        torch.manual_seed(0)
        model.autoencoder(noises_per_image=4, timesteps=timesteps, antithetic_noise=antithetic)(batch)
    paired = seen[0].view(2, 2, 2, *seen[0].shape[1:])  # (image, pair, copy, C, h, w)
    assert torch.equal(paired[:, :, 0], -paired[:, :, 1])  # copies 2i and 2i + 1 of an image: ε and −ε
    assert not torch.equal(paired[:, 0, 0], paired[:, 1, 0]) and not torch.equal(paired[0], paired[1])
    if seeded:  # unseeded, the plain draw happens inside `denoising_loss`
        plain = seen[1].view(2, 2, 2, *seen[1].shape[1:])
        assert not torch.allclose(plain[:, :, 0], -plain[:, :, 1])
    else:
        assert seen[1] is None
    with pytest.raises(ValueError, match="antithetic noise pairs"):
        model.autoencoder(noises_per_image=3, antithetic_noise=True)
