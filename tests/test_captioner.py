import torch

from tests.conftest import train_steps
from vlv.model import VLV
from vlv.train.recipes import BASELINE_PARTS, PHASE_PARTS

CAPTIONS = ["a large red circle at the top left", "a small blue square at the bottom right and a green triangle"]


def test_tokenize_appends_eos_and_truncates(tiny_model):
    cap = tiny_model.caption_decoder
    ids, mask = cap.tokenize(["a red circle", "a " * 50])
    eos = cap.tokenizer.eos_token_id
    assert ids[0, :4].tolist()[-1] == eos and mask[0].sum() == 4
    assert mask[1].sum() == cap.cfg.max_caption_tokens + 1 and ids[1, -1] == eos


def test_loss_ignores_padding(tiny_model, images):
    c = tiny_model.condition(tiny_model.embed(images))
    cap = tiny_model.caption_decoder
    with torch.no_grad():
        batch = cap.loss(c, CAPTIONS)
        one = [cap.loss(c[i : i + 1], [CAPTIONS[i]]) for i in range(2)]
    n = [cap.tokenize([t])[1].sum().item() for t in CAPTIONS]
    token_mean = (one[0] * n[0] + one[1] * n[1]) / sum(n)
    assert torch.allclose(batch, token_mean, atol=1e-5)


def test_phase_one_trains_psi_only(tiny_config, images):
    model = VLV(tiny_config)
    model.set_trainable(PHASE_PARTS["mlp"])
    model.captioner()({"images": images, "captions": CAPTIONS}).backward()
    assert all(p.grad is not None for p in model.caption_decoder.projector.parameters())
    assert all(p.grad is None for p in model.caption_decoder.llm.parameters())
    assert all(p.grad is None for p in model.encoder.parameters())
    model.set_trainable(PHASE_PARTS["llm"])
    assert all(p.requires_grad for p in model.caption_decoder.llm.parameters())


def test_overfit_then_generate_stops_at_eos(tiny_config, images):
    model = VLV(tiny_config)
    model.set_trainable(BASELINE_PARTS)  # everything: two random images must become tellable apart
    captioner = model.captioner().train()
    params = [p for p in model.parameters() if p.requires_grad]
    losses = train_steps(lambda: captioner({"images": images, "captions": CAPTIONS}), params, 120, 3e-3)
    assert losses[-1] < 0.1 * losses[0]
    model.eval()
    # The limit (20 tokens) is far above the caption lengths: only EOS can end them where they end.
    assert model.caption(images) == CAPTIONS
    assert model.caption(images, num_beams=3) == CAPTIONS
    # Batched generation equals one-by-one generation.
    assert [model.caption(images[i : i + 1])[0] for i in range(2)] == model.caption(images)


def test_decode_cuts_at_first_eos(tiny_model):
    cap = tiny_model.caption_decoder
    tok = cap.tokenizer
    ids = tok("a red circle", add_special_tokens=False).input_ids + [tok.eos_token_id] + tok("and a").input_ids
    assert cap.decode(ids) == "a red circle"


def test_a_frozen_encoder_embeds_each_named_image_once(tiny_config):
    """With `keys` and a frozen encoder (phases 1–2), c comes from the first pass over each image: the loss equals the
    uncached one and the encoder sees only images not seen before; once the encoder trains, keys change nothing."""
    model = VLV(tiny_config)
    pool = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    captions = [f"a {c} circle" for c in ("red", "blue", "green", "red", "blue")]
    encoded = []
    model.encoder.register_forward_hook(lambda module, args, out: encoded.append(out.shape[0]))

    def batch(idx: list[int], keys: bool = True) -> dict:
        b = {"images": pool[idx], "captions": [captions[i] for i in idx]}
        return {**b, "keys": idx} if keys else b

    model.set_trainable(PHASE_PARTS["mlp"])
    cached, plain = model.captioner(), model.captioner()
    for idx, new in (([0, 1, 2], 3), ([2, 3, 3], 1), ([4, 0, 1], 1), ([3, 4, 2], 0)):
        encoded.clear()
        loss = cached(batch(idx))
        assert sum(encoded) == new, idx
        assert torch.allclose(loss, plain(batch(idx, keys=False)), atol=1e-6)
    loss.backward()
    assert all(p.grad is not None for p in model.caption_decoder.projector.parameters())

    model.set_trainable(PHASE_PARTS["encoder"])
    encoded.clear()
    model.captioner()(batch([0, 1])).backward()
    assert encoded == [2]
    assert all(p.grad is not None for p in model.encoder.florence.language_model.parameters() if p.requires_grad)
