import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel

from tests.real_layouts import _write_clip_tokenizer
from vlv.eval.clip_score import clip_score, clip_scores, load_clip

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's pixel statistics, as every CLIP checkpoint ships them
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

TEXTS = ["a red circle at the top left", "a small green triangle", "a blue square and a red circle"]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    """A tiny random-init CLIP directory in the hub layout: config.json, model.safetensors, the CLIP image
    processor's preprocessor_config.json and a CLIP BPE tokenizer (vocab.json, merges.txt)."""
    directory = tmp_path_factory.mktemp("clip")
    vocab_size = _write_clip_tokenizer(directory)  # <|startoftext|>, <|endoftext|> last, as in CLIP's vocabulary
    small = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2)
    config = CLIPConfig(
        text_config=dict(vocab_size=vocab_size, bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, **small),
        vision_config=dict(image_size=224, patch_size=32, **small),
        projection_dim=16,
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(directory)
    CLIPImageProcessorPil().save_pretrained(directory)  # transformers' defaults are CLIP's
    return directory


@pytest.fixture(scope="module")
def clip(clip_dir):
    return load_clip(clip_dir)


def _images() -> torch.Tensor:
    return torch.rand(3, 3, 40, 56, generator=torch.Generator().manual_seed(0))  # (3, 3, H, W) in [0, 1]


def test_pixels_are_normalised_with_clip_mean_and_std_at_224(clip):
    _, processor = clip
    value = 200
    pixels = processor.image_processor(images=[Image.new("RGB", (300, 260), (value,) * 3)], return_tensors="pt")
    pixels = pixels.pixel_values
    assert pixels.shape == (1, 3, 224, 224)  # short side resized to 224, center-cropped square
    expected = (value / 255 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)  # (3,)
    torch.testing.assert_close(pixels[0], expected[:, None, None].expand(3, 224, 224), rtol=0, atol=1e-5)


def test_scores_follow_hessel_from_the_models_own_forward(clip):
    model, processor = clip
    images, prefixed = _images(), ["A photo depicts " + t for t in TEXTS]
    scores = clip_scores(model, processor, images, TEXTS, batch_size=2)
    # Reference: CLIPModel's forward, whose logits are exp(logit_scale) · cos for every image-text pair.
    pil = [Image.fromarray(a) for a in (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()]
    inputs = processor(images=pil, text=prefixed, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits_per_image  # (3 images, 3 texts)
    cos = (logits / model.logit_scale.exp()).numpy().astype(np.float64)
    assert cos.max() > 0  # some pairs are not clipped, so the check below sees the cosines
    np.testing.assert_allclose(scores, 2.5 * np.clip(np.diag(cos), 0, None), rtol=1e-5, atol=1e-6)
    assert clip_score(model, processor, images, TEXTS) == pytest.approx(scores.mean(), rel=1e-6)
    # torchmetrics' variant: 100 · max(cos, 0) of the bare caption.
    bare = clip_scores(model, processor, images, TEXTS, scale=100, prefix="")
    assert bare.shape == (3,) and (bare >= 0).all() and not np.allclose(bare, 40 * scores)


def test_matched_and_mismatched_pairs_differ(clip):
    model, processor = clip
    images = _images()
    matched = clip_scores(model, processor, images, TEXTS)
    shifted = clip_scores(model, processor, images, TEXTS[1:] + TEXTS[:1])
    assert not np.allclose(matched, shifted)
    # PIL images and the same pixels as a tensor score alike.
    pil = [Image.fromarray(a) for a in (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()]
    np.testing.assert_allclose(clip_scores(model, processor, pil, TEXTS), matched, rtol=1e-6)


def test_bad_inputs_are_errors(clip, tmp_path):
    model, processor = clip
    with pytest.raises(ValueError, match="pair up"):
        clip_scores(model, processor, _images(), TEXTS[:2])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        clip_scores(model, processor, _images() * 255, TEXTS)
    with pytest.raises(FileNotFoundError, match="hf download"):
        load_clip(tmp_path / "absent")
