import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import vlv
from vlv.images import to_batch
from vlv.loading import CheckpointMismatchError
from vlv.model import VLV, compose_embeddings
from vlv.presets import STAGE1_PARTS, preset


def test_compose_equal_split_takes_leading_tokens():
    zs = torch.stack([torch.full((77, 4), float(i)) for i in range(3)])  # image i is all i
    z = compose_embeddings(zs)
    assert z.shape == (1, 77, 4)
    assert z[0, :26, 0].eq(0).all() and z[0, 26:52, 0].eq(1).all() and z[0, 52:, 0].eq(2).all()


def test_compose_custom_split_and_errors():
    zs = torch.arange(2 * 77).float().view(2, 77, 1)
    z = compose_embeddings(zs, [10, 67])
    assert torch.equal(z[0, :10], zs[0, :10]) and torch.equal(z[0, 10:], zs[1, :67])
    with pytest.raises(ValueError, match="sum"):
        compose_embeddings(zs, [10, 10])


def test_compose_batched_equals_one_by_one():
    zs = torch.randn(3, 2, 77, 5, generator=torch.Generator().manual_seed(0))  # 3 compositions of 2 images each
    batched = compose_embeddings(zs)
    assert batched.shape == (3, 77, 5)
    for p in range(3):
        assert torch.equal(batched[p : p + 1], compose_embeddings(zs[p]))


def test_autoencoder_loss_with_compositions_is_the_loss_of_spliced_z(tiny_model):
    g = torch.Generator().manual_seed(0)
    images, sources = torch.rand(2, 3, 32, 32, generator=g), torch.rand(1, 2, 3, 32, 32, generator=g)
    composites = torch.rand(1, 3, 32, 32, generator=g)
    ae = tiny_model.autoencoder(noises_per_image=2)
    with torch.no_grad():
        torch.manual_seed(1)
        loss = ae({"images": images, "sources": sources, "composites": composites})
        # by hand: z of the sources spliced (equal split), the composite as the denoising target
        z = torch.cat([tiny_model.encoder(images), compose_embeddings(tiny_model.encoder(sources[0]))])
        targets = to_batch(torch.cat([images, composites]), tiny_model.config.teacher.image_size)
        latents = tiny_model.decoder.encode_images(targets)
        c = tiny_model.conditioner(z)
        torch.manual_seed(1)
        by_hand = tiny_model.decoder.denoising_loss(latents.repeat_interleave(2, 0), c.repeat_interleave(2, 0))
        torch.manual_seed(1)
        plain = ae({"images": images})
    assert torch.allclose(loss, by_hand, rtol=1e-4)  # z computed in one batch vs two: float rounding
    assert not torch.allclose(loss, plain)


def test_api_shapes(tiny_model, images):
    captions = tiny_model.caption(images)
    assert isinstance(captions, list) and len(captions) == 2 and all(isinstance(c, str) for c in captions)
    recon = tiny_model.reconstruct(images, steps=2, seed=0)
    assert recon.shape == (2, 3, 16, 16) and 0 <= recon.min() and recon.max() <= 1
    assert torch.equal(recon, tiny_model.reconstruct(images, steps=2, seed=0))
    assert tiny_model.compose(images, steps=2).shape == (1, 3, 16, 16)


def test_compose_decodes_a_batch_of_groups_as_each_group_spliced_on_its_own(tiny_model, images):
    groups = torch.stack([images, images[[0, 0]]])  # (P=2, K=2, 3, H, W): (a, b) and (a, a)
    together = tiny_model.compose(groups, seed=3, steps=2)
    assert together.shape == (2, 3, 16, 16)
    spliced = torch.cat([compose_embeddings(tiny_model.embed(g)) for g in groups])  # (2, 77, D)
    by_hand = tiny_model.sample(tiny_model.condition(spliced), seed=3, steps=2)
    assert torch.allclose(together, by_hand, atol=1e-5)  # z of 4 images in one batch vs 2 × 2: float rounding


def test_each_use_builds_only_the_parts_it_needs(tiny_config, images):
    model = VLV(tiny_config)
    assert model.built_parts() == []
    model.embed(images)
    assert sorted(model.built_parts()) == ["encoder"]
    model.caption(images)
    assert sorted(model.built_parts()) == ["caption_decoder", "conditioner", "encoder"]  # no UNet, no VAE
    other = VLV(tiny_config)
    other.reconstruct(images, steps=2)
    assert sorted(other.built_parts()) == ["conditioner", "decoder", "encoder"]  # no LLM, no ψ


def test_parts_are_seeded_by_name_not_by_build_order(tiny_config, images):
    a, b = VLV(tiny_config), VLV(tiny_config)
    a.caption(images)  # builds the encoder first
    b.part("caption_decoder")  # builds the caption decoder first
    for name, p in a.caption_decoder.state_dict().items():
        assert torch.equal(p, b.caption_decoder.state_dict()[name]), name
    assert torch.equal(a.embed(images), b.embed(images))


def test_parts_materialised_for_each_stage_on_the_meta_device():
    """The paper preset on the meta device (nothing allocated, nothing downloaded)."""
    with torch.device("meta"):
        model = VLV(preset("paper"), pretrained=False)
        captioner = model.captioner()
    assert sorted(model.built_parts()) == ["caption_decoder", "conditioner", "encoder"]
    names = [n for n, _ in captioner.named_parameters()]
    assert not any(n.startswith("decoder.") or ".unet." in n or ".vae." in n for n in names)
    assert sum(p.numel() for p in captioner.parameters()) > 4e9  # Florence-2-large + CLIP + ψ + Qwen2.5-3B
    with torch.device("meta"):
        model = VLV(preset("paper"), pretrained=False)
        autoencoder = model.autoencoder()
    assert sorted(model.built_parts()) == ["conditioner", "decoder", "encoder"]
    names = [n for n, _ in autoencoder.named_parameters()]
    assert any(".unet." in n for n in names) and any(".vae." in n for n in names)
    assert not any(".llm." in n or ".projector." in n for n in names)


def test_images_as_pil_paths_or_tensor_agree(tiny_model, tmp_path):
    arr = (torch.rand(40, 56, 3, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8).numpy()
    pil = Image.fromarray(arr)
    pil.save(tmp_path / "x.png")
    from_pil = tiny_model.embed([pil])
    from_path = tiny_model.embed([tmp_path / "x.png"])
    assert torch.equal(from_pil, from_path)
    tensor = torch.from_numpy(arr).permute(2, 0, 1).float().unsqueeze(0) / 255
    from_tensor = tiny_model.embed(tensor)
    assert (from_tensor - from_pil).abs().max() < 0.05 * from_pil.abs().max()  # different resamplers, same image


def test_bad_image_inputs_have_clear_errors(tiny_model, tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="broken.png"):
        tiny_model.embed([tmp_path / "broken.png"])
    with pytest.raises(FileNotFoundError, match="missing.png"):
        tiny_model.embed([tmp_path / "missing.png"])
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        tiny_model.embed(torch.rand(2, 1, 8, 8))


def _used(config, images) -> VLV:
    """A model whose every part is built."""
    model = VLV(config)
    model.caption(images)
    model.reconstruct(images, steps=2)
    return model


def test_save_load_round_trip_is_bitwise(tiny_config, images, tmp_path):
    model = _used(tiny_config, images)
    model.save_pretrained(tmp_path / "ckpt")
    again = vlv.load(tmp_path / "ckpt")
    assert torch.equal(again.embed(images), model.embed(images))
    assert again.caption(images) == model.caption(images)
    assert torch.equal(again.reconstruct(images, steps=2), model.reconstruct(images, steps=2))
    for name in model.built_parts():
        ref = model.part(name).state_dict()
        loaded = again.part(name).state_dict()
        assert loaded.keys() == ref.keys()
        for k, v in loaded.items():
            assert torch.equal(v, ref[k]), (name, k)
    assert again.config == vlv.VLVConfig.from_dict(json.loads((tmp_path / "ckpt/config.json").read_text()))


def test_the_empty_prompt_offset_starts_z_at_the_empty_prompt_and_is_saved_with_phi(tiny_config, images, tmp_path):
    """With `empty_prompt_offset`, z = φ(...) + the teacher's token embeddings of "": with φ's output at zero the
    teacher is conditioned as by the empty prompt (its unconditional branch). The offset is saved with φ and comes
    back without the teacher being built; without the option the encoder has no such tensor."""
    encoder = dataclasses.replace(tiny_config.encoder, empty_prompt_offset=True)
    model = VLV(dataclasses.replace(tiny_config, encoder=encoder))
    with torch.no_grad():
        for p in model.encoder.projection[2].parameters():
            p.zero_()
        assert torch.allclose(model.conditioner(model.encoder(images)), model.conditioner.encode_prompts(["", ""]))
        assert model.encoder(images).std() > 0  # the offset is not zero: BOS, EOS and padding embeddings
    model.save_pretrained(tmp_path / "ckpt")
    again = vlv.load(tmp_path / "ckpt")
    assert torch.equal(again.embed(images), model.embed(images)) and "conditioner" not in again.built_parts()
    assert "projection.3.offset" not in VLV(tiny_config).encoder.state_dict()


def test_a_reloaded_model_saves_a_self_contained_copy(tiny_config, images, tmp_path):
    model = _used(tiny_config, images)
    model.save_pretrained(tmp_path / "a")
    vlv.load(tmp_path / "a").save_pretrained(tmp_path / "b")  # nothing built: stored weights are copied over
    shutil.rmtree(tmp_path / "a")
    again = vlv.load(tmp_path / "b")
    assert torch.equal(again.reconstruct(images, steps=2), model.reconstruct(images, steps=2))
    assert again.caption(images) == model.caption(images)
    vlv.load(tmp_path / "b").save_pretrained(tmp_path / "b")  # over itself, nothing built
    assert vlv.load(tmp_path / "b").caption(images) == model.caption(images)


def _tamper(path, edit):
    state = load_file(path)
    edit(state)
    save_file(state, path)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s.pop("encoder.queries"), "missing keys: encoder.queries"),
        (lambda s: s.__setitem__("encoder.extra_weight", torch.zeros(3)), "unexpected keys: encoder.extra_weight"),
        (
            lambda s: s.__setitem__("caption_decoder.projector.0.bias", torch.zeros(5)),
            "mis-shaped keys: caption_decoder.projector.0.bias",
        ),
    ],
)
def test_tampered_checkpoint_names_the_key_at_load(tiny_config, images, tmp_path, edit, message):
    _used(tiny_config, images).save_pretrained(tmp_path / "ckpt")
    _tamper(str(tmp_path / "ckpt/model.safetensors"), edit)
    with pytest.raises(CheckpointMismatchError, match=message):
        vlv.load(tmp_path / "ckpt")


def test_loading_a_non_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        vlv.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="no VLV checkpoint"):
        vlv.load(tmp_path / "nowhere/model")
    with pytest.raises(ValueError, match="unknown preset"):
        vlv.load("tinyy")


@pytest.fixture
def sourced_config(tiny_config, tmp_path):
    """The tiny preset with its Florence-2 and LLM taken from folders, as pretrained parts are."""
    from transformers import Florence2Config, Florence2ForConditionalGeneration, Qwen2Config, Qwen2ForCausalLM

    from vlv.tokenizer import build_word_tokenizer

    torch.manual_seed(5)
    Florence2ForConditionalGeneration(Florence2Config(**tiny_config.encoder.arch)).save_pretrained(tmp_path / "fl")
    Qwen2ForCausalLM(Qwen2Config(**tiny_config.captioner.arch)).save_pretrained(tmp_path / "llm")
    build_word_tokenizer(tiny_config.captioner.vocabulary, wrap_bos_eos=False).save_pretrained(tmp_path / "llm")
    return dataclasses.replace(
        tiny_config,
        encoder=dataclasses.replace(tiny_config.encoder, source=str(tmp_path / "fl")),
        captioner=dataclasses.replace(tiny_config.captioner, source=str(tmp_path / "llm")),
    )


def test_saved_weights_follow_what_trained(sourced_config, images, tmp_path):
    model = VLV(sourced_config)
    model.set_trainable(STAGE1_PARTS)
    model.caption(images)
    model.save_pretrained(tmp_path / "stage1")
    keys = load_file(str(tmp_path / "stage1/model.safetensors")).keys()
    config = json.loads((tmp_path / "stage1/config.json").read_text())
    # BART, queries and φ trained; ψ has no source; the frozen vision side and the untrained LLM are referenced.
    assert config["weights"] == ["caption_decoder.projector", *sorted(STAGE1_PARTS)]
    assert any(k.startswith("encoder.florence.language_model.") for k in keys) and "encoder.queries" in keys
    assert not any(k.startswith(("encoder.florence.vision_tower", "caption_decoder.llm.", "decoder.")) for k in keys)
    model.set_trainable(["caption_decoder.llm"])  # a later phase: the LLM trains, BART is frozen again …
    model.save_pretrained(tmp_path / "stage2")
    keys = load_file(str(tmp_path / "stage2/model.safetensors")).keys()
    assert any(k.startswith("caption_decoder.llm.") for k in keys)
    assert any(k.startswith("encoder.florence.language_model.") for k in keys)  # … and is still saved
    with torch.no_grad():
        model.caption_decoder.llm.model.norm.weight.add_(1.0)  # a trained LLM differs from its source
    model.save_pretrained(tmp_path / "stage2")
    again = vlv.load(tmp_path / "stage2")
    assert torch.equal(again.caption_decoder.llm.model.norm.weight, model.caption_decoder.llm.model.norm.weight)
    assert again.caption(images) == model.caption(images)


def test_set_trainable_freezes_everything_else(tiny_config):
    model = VLV(tiny_config)
    model.set_trainable(["encoder.queries", "caption_decoder.projector"])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"parts.encoder.queries"} | {
        f"parts.caption_decoder.projector.{k}" for k in ("0.weight", "0.bias", "2.weight", "2.bias")
    }
    with pytest.raises(ValueError, match="encoder.eyes"):
        model.set_trainable(["encoder.eyes"])


def test_tied_weights_are_stored_once_and_come_back_tied(tmp_path, tiny_config, images):
    model = VLV(tiny_config)
    model.set_trainable(["encoder.language_model", "caption_decoder.llm"])
    model.save_pretrained(tmp_path)
    keys = set(load_file(tmp_path / "model.safetensors"))
    assert "caption_decoder.llm.model.embed_tokens.weight" in keys
    assert "caption_decoder.llm.lm_head.weight" not in keys  # Qwen's output head is its input embedding
    assert "encoder.florence.language_model.shared.weight" in keys
    assert not {k for k in keys if k.endswith("coder.embed_tokens.weight") and "florence" in k}  # BART's are `shared`
    back = vlv.load(tmp_path)
    llm = back.caption_decoder.llm
    assert llm.lm_head.weight is llm.model.embed_tokens.weight
    assert torch.equal(llm.lm_head.weight, model.caption_decoder.llm.lm_head.weight)
    assert torch.equal(back.embed(images), model.embed(images))


def test_a_source_saved_in_bf16_loads_in_the_models_dtype(tmp_path, tiny_config):
    """transformers 5 loads in the checkpoint's own dtype unless told: a bf16 LLM must not arrive bf16 in an fp32
    model (it would train in pure bf16), nor stay fp32 in a bf16 one."""
    llm = VLV(tiny_config).caption_decoder.llm.to(torch.bfloat16)
    llm.save_pretrained(tmp_path / "llm")
    config = dataclasses.replace(
        tiny_config, captioner=dataclasses.replace(tiny_config.captioner, source=str(tmp_path / "llm"))
    )
    model = VLV(config)
    model.caption_decoder.tokenizer = VLV(tiny_config).caption_decoder.tokenizer
    assert model.caption_decoder.llm.dtype == torch.float32
    assert torch.equal(model.caption_decoder.llm.lm_head.weight, llm.lm_head.weight.float())
    assert VLV(config).to(dtype=torch.bfloat16).caption_decoder.llm.dtype == torch.bfloat16


def test_a_bf16_model_reloads_in_bf16_with_the_same_values(tmp_path, tiny_config, images):
    model = VLV(tiny_config).to(dtype=torch.bfloat16)
    model.set_trainable(["encoder.queries"])
    model.set_trainable([])
    model.encoder.queries.data = model.encoder.queries.data.bfloat16()
    model.save_pretrained(tmp_path)
    back = vlv.load(tmp_path, dtype=torch.bfloat16)
    assert back.encoder.queries.dtype == torch.bfloat16 and torch.equal(back.encoder.queries, model.encoder.queries)
    assert torch.equal(back.embed(images.bfloat16()), model.embed(images.bfloat16()))


def test_the_encoder_sees_the_same_pixels_at_training_and_inference(tmp_path, tiny_model):
    """One preprocessing: `vlv train` crops images to the teacher's resolution and the compositions feed that crop to
    the encoder, which resizes it inside; inference (`preprocess`) makes the same crop, never a larger one."""
    from vlv.images import decode_image, preprocess

    pixels = np.random.default_rng(0).integers(0, 255, (24, 40, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "wide.png")
    S = tiny_model.config.teacher.image_size
    trained_on = preprocess(decode_image(tmp_path / "wide.png"), S).float() / 255  # what the training data holds
    assert torch.equal(tiny_model.preprocess([tmp_path / "wide.png"])[0], trained_on)
    with torch.no_grad():
        as_in_training = tiny_model.captioner().encoder(to_batch(trained_on[None], S))
    assert torch.equal(tiny_model.embed([tmp_path / "wide.png"]), as_in_training)
    # A non-square tensor is center-cropped for the encoder as for the decoder, never stretched.
    wide = torch.rand(1, 3, S, 2 * S, generator=torch.Generator().manual_seed(1))
    assert torch.equal(tiny_model.embed(wide), tiny_model.embed(wide[..., S // 2 : S // 2 + S]))


CAPTION_PHASE_3 = ("caption_decoder.projector", "caption_decoder.llm", "encoder.language_model")


def _stage1_trained(config, seed: int = 0) -> VLV:
    """A model whose encoder 'went through stage 1': trained sub-parts, moved away from their init."""
    model = VLV(config)
    model.set_trainable(STAGE1_PARTS)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=gen))
    model.set_trainable(())
    return model


def _nudge(module: torch.nn.Module) -> None:
    """What a training step does to a module's weights, as far as these tests care: they change."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05)


def test_a_captioning_phase_that_trains_the_encoder_keeps_the_stage1_encoder(tiny_config, images, tmp_path):
    model = _stage1_trained(tiny_config)
    z = model.embed(images)
    model.set_trainable(CAPTION_PHASE_3)
    _nudge(model.encoder.florence.language_model)
    model.set_trainable(())
    assert torch.equal(model.embed(images), z)  # reconstruction still embeds with the stage-1 encoder …
    assert not torch.allclose(model.encoder(images), z)  # … while captions use the encoder phase 3 trained
    assert model.stage1_encoder.queries is model.encoder.queries  # what phase 3 left alone is shared, not copied

    model.save_pretrained(tmp_path / "both")
    config = json.loads((tmp_path / "both/config.json").read_text())
    assert "stage1_encoder.language_model" in config["weights"]
    assert not any(w.startswith("stage1_encoder.") and w != "stage1_encoder.language_model" for w in config["weights"])
    keys = load_file(str(tmp_path / "both/model.safetensors")).keys()
    assert any(k.startswith("stage1_encoder.florence.language_model.") for k in keys)
    assert not any(k.startswith("stage1_encoder.queries") for k in keys)  # stored once: it equals the encoder's

    reloaded = vlv.load(tmp_path / "both")
    assert torch.equal(reloaded.embed(images), z)
    assert torch.equal(reloaded.encoder(images), model.encoder(images))
    torch.testing.assert_close(
        reloaded.reconstruct(images, steps=2), model.reconstruct(images, steps=2), rtol=0, atol=0
    )
    reloaded.save_pretrained(tmp_path / "again")  # a copy that never built the encoder carries the stage-1 tensors over
    vlv.load(tmp_path / "again").save_pretrained(tmp_path / "third")
    assert torch.equal(vlv.load(tmp_path / "third").embed(images), z)


def test_the_kept_encoder_stops_sharing_what_trains_later(tiny_config, images, tmp_path):
    model = _stage1_trained(tiny_config)
    z = model.embed(images)
    model.set_trainable(CAPTION_PHASE_3)
    model.set_trainable((*CAPTION_PHASE_3, "encoder.queries", "encoder.projection"))
    for trained in (model.encoder.florence.language_model, model.encoder.projection):
        _nudge(trained)
    with torch.no_grad():
        model.encoder.queries.add_(0.05)
    assert torch.equal(model.embed(images), z)
    assert model.stage1_encoder.queries is not model.encoder.queries


@pytest.mark.parametrize(
    "case",
    ["baseline", "stage1_again", "no_encoder"],
)
def test_no_encoder_is_kept_when_nothing_decodes_it_or_it_does_not_change(tiny_config, images, tmp_path, case):
    if case == "baseline":  # a paired-only encoder never went through stage 1: no teacher decodes its z
        model = VLV(tiny_config)
        model.set_trainable(("caption_decoder.projector", "caption_decoder.llm", *STAGE1_PARTS))
    elif case == "stage1_again":  # resuming stage 1 trains the stage-1 encoder itself
        model = _stage1_trained(tiny_config)
        model.set_trainable(STAGE1_PARTS)
    else:  # phases 1 and 2 leave the encoder alone
        model = _stage1_trained(tiny_config)
        model.set_trainable(("caption_decoder.projector", "caption_decoder.llm"))
    assert model.stage1_encoder is None and model.reconstruction_encoder() is model.encoder
    model.set_trainable(())
    model.save_pretrained(tmp_path / "m")
    assert not any(
        w.startswith("stage1_encoder") for w in json.loads((tmp_path / "m/config.json").read_text())["weights"]
    )
