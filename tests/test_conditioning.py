import torch
from transformers import CLIPTextConfig, CLIPTextModel

from vlv.conditioning import encode_embeddings, encode_token_ids


def _clip(tiny_config):
    torch.manual_seed(0)
    return CLIPTextModel(CLIPTextConfig(**tiny_config.teacher.text_encoder_arch)).eval()


def test_z_path_equals_clip_on_its_own_token_embeddings(tiny_config):
    clip = _clip(tiny_config)
    ids = torch.randint(0, clip.config.vocab_size, (3, 77), generator=torch.Generator().manual_seed(0))
    z = clip.embeddings.token_embedding(ids)
    with torch.no_grad():
        ours = encode_embeddings(clip, z)
        reference = clip(input_ids=ids).last_hidden_state
    assert ours.shape == (3, 77, clip.config.hidden_size)
    assert (ours - reference).abs().max() <= 1e-5
    assert torch.equal(encode_token_ids(clip, ids), ours)


def test_causal_mask_is_applied(tiny_config):
    clip = _clip(tiny_config)
    z = torch.randn(1, 77, clip.config.hidden_size)
    z2 = z.clone()
    z2[:, 40:] += 1.0  # later tokens change …
    with torch.no_grad():
        a, b = encode_embeddings(clip, z), encode_embeddings(clip, z2)
    assert torch.allclose(a[:, :40], b[:, :40], atol=1e-6)  # … earlier outputs do not
    assert not torch.allclose(a[:, 40:], b[:, 40:])


def test_gradient_flows_to_z_not_to_frozen_weights(tiny_config):
    clip = _clip(tiny_config).requires_grad_(False)
    z = torch.randn(2, 77, clip.config.hidden_size, requires_grad=True)
    encode_embeddings(clip, z).square().mean().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert all(p.grad is None for p in clip.parameters())
