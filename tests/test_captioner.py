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
