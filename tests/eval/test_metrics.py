import math
import shutil
from collections import Counter

import numpy as np
import pytest
import torch
from torch import nn

from vlv.eval.metrics import caption_metrics, features, frechet_distance


def test_identical_sets_have_zero_distance():
    a = np.random.default_rng(0).normal(size=(500, 6))
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-6)


def test_matches_the_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(1)
    n, var_a, var_b, shift = 200_000, np.array([1.0, 4.0, 0.25]), np.array([2.0, 1.0, 0.25]), np.array([1.0, -2.0, 0.0])
    a = rng.normal(size=(n, 3)) * np.sqrt(var_a)
    b = rng.normal(size=(n, 3)) * np.sqrt(var_b) + shift
    expected = np.sum(shift**2) + np.sum((np.sqrt(var_a) - np.sqrt(var_b)) ** 2)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=0.02)


def test_bad_feature_shapes_are_errors():
    with pytest.raises(ValueError, match="equal D"):
        frechet_distance(np.zeros((4, 3)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="two samples"):
        frechet_distance(np.zeros((1, 3)), np.zeros((4, 3)))


# ----- Fréchet distance against the classic formula ---------------------------------------------------------------


def _random_features(seed: int, n: int = 500, d: int = 64) -> np.ndarray:
    """Correlated Gaussian features with their own mean and covariance."""
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(d, d)) / np.sqrt(d)
    return rng.normal(size=(n, d)) @ mixing + rng.normal(size=d)


def test_a_set_against_itself_is_zero_in_64_dimensions():
    a = _random_features(2)
    assert frechet_distance(a, a) < 1e-6


def test_matches_the_scipy_sqrtm_formula():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    for seed in (3, 4):
        a, b = _random_features(seed), _random_features(seed + 10) * 1.5
        mu_a, mu_b = a.mean(0), b.mean(0)
        cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
        root = scipy_linalg.sqrtm(cov_a @ cov_b).real  # the classic FID code's square root of the product
        expected = np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a + cov_b - 2 * root)
        assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)


# ----- features: any nn.Module as the feature network -------------------------------------------------------------


def _feature_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(2)).eval()  # (B, 4, 2, 2) → flattened to 16


def test_features_are_the_outputs_in_order_whatever_the_batching():
    net, images = _feature_net(), torch.rand(7, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        direct = net(images).flatten(1).double().numpy()  # (7, 16)
    whole = features(net, images, batch_size=50)
    assert whole.shape == (7, 16) and whole.dtype == np.float64
    np.testing.assert_allclose(whole, direct, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(features(net, images, batch_size=3), direct, rtol=1e-6, atol=1e-6)
    lazily = (images[i : i + 2] for i in range(0, 7, 2))  # an iterable of batches, e.g. read from disk
    np.testing.assert_allclose(features(net, lazily, batch_size=3), direct, rtol=1e-6, atol=1e-6)


def test_features_refuse_a_network_in_training_mode():
    net = _feature_net().train()
    with pytest.raises(ValueError, match="training mode"):
        features(net, torch.rand(2, 3, 8, 8))
    with pytest.raises(ValueError, match="no images"):
        features(net.eval(), [])


# ----- caption metrics --------------------------------------------------------------------------------------------

PREDICTIONS = ["A man is riding a horse on the beach.", "Two dogs are playing in snow!", "A red bus."]
REFERENCES = [
    ["A man rides a horse along the beach.", "A person is riding a brown horse on the sand."],
    ["Two dogs are playing in the snow.", "Dogs running through snow."],
    ["A red double decker bus on a street.", "A bus parked by the road."],
]


def _words(text: str) -> list[str]:
    # What both tokenizers make of these captions: lower case, punctuation dropped.
    return text.lower().replace(".", "").replace("!", "").split()


def _ngrams(words: list[str], n: int) -> Counter:
    return Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def reference_bleu(predictions: list[str], references: list[list[str]], n_max: int = 4) -> list[float]:
    """Corpus BLEU-1..n (Papineni et al. 2002): clipped n-gram precisions pooled over the corpus, their geometric
    mean, times the brevity penalty against the closest reference length (the shorter one on a tie)."""
    matched, total, c_len, r_len = [0] * n_max, [0] * n_max, 0, 0
    for pred, refs in zip(predictions, references):
        p, rs = _words(pred), [_words(r) for r in refs]
        c_len += len(p)
        r_len += min((abs(len(r) - len(p)), len(r)) for r in rs)[1]
        for n in range(1, n_max + 1):
            counts = _ngrams(p, n)
            most = Counter()
            for r in rs:
                most |= _ngrams(r, n)  # the most times each n-gram occurs in one reference
            matched[n - 1] += sum(min(c, most[g]) for g, c in counts.items())
            total[n - 1] += sum(counts.values())
    bp = 1.0 if c_len >= r_len else math.exp(1 - r_len / c_len)
    precisions = [m / t for m, t in zip(matched, total)]
    return [bp * math.exp(sum(math.log(p) for p in precisions[:n]) / n) for n in range(1, n_max + 1)]


def reference_rouge_l(predictions: list[str], references: list[list[str]], beta: float = 1.2) -> float:
    """ROUGE-L as the COCO code defines it: per caption the best LCS precision and the best LCS recall over its
    references, combined into an F-measure with β = 1.2, averaged over captions."""

    def lcs(x: list[str], y: list[str]) -> int:
        table = [[0] * (len(y) + 1) for _ in range(len(x) + 1)]
        for i, xi in enumerate(x):
            for j, yj in enumerate(y):
                table[i + 1][j + 1] = table[i][j] + 1 if xi == yj else max(table[i][j + 1], table[i + 1][j])
        return table[-1][-1]

    scores = []
    for pred, refs in zip(predictions, references):
        p = _words(pred)
        prec = max(lcs(p, _words(r)) / len(p) for r in refs)
        rec = max(lcs(p, _words(r)) / len(_words(r)) for r in refs)
        scores.append((1 + beta**2) * prec * rec / (rec + beta**2 * prec))
    return sum(scores) / len(scores)


def _check_against_references(result: dict) -> None:
    bleu = reference_bleu(PREDICTIONS, REFERENCES)
    assert 0 < bleu[3] < bleu[0] < 1  # the example has matching 4-grams and non-matching words
    for n in range(4):
        assert result[f"BLEU-{n + 1}"] == pytest.approx(bleu[n], rel=1e-6)
    assert result["ROUGE-L"] == pytest.approx(reference_rouge_l(PREDICTIONS, REFERENCES), rel=1e-9)
    assert 0 < result["CIDEr"] < 10


def test_identical_captions_score_one_without_java():
    captions = ["a man is riding a horse on the beach", "two dogs are playing in the snow", "a red bus on a street"]
    result = caption_metrics(captions, [[c] for c in captions], java=False)
    assert result["BLEU-4"] == pytest.approx(1, abs=1e-6)
    assert result["ROUGE-L"] == pytest.approx(1, abs=1e-9)
    assert result["CIDEr"] == pytest.approx(10, abs=1e-6)  # CIDEr-D's ×10 scale: identical n-gram vectors
    assert result["METEOR"] is None and "METEOR" in result["notes"][0] and result["tokenizer"] == "simple"


def test_known_example_without_java():
    _check_against_references(caption_metrics(PREDICTIONS, REFERENCES, java=False))


@pytest.mark.skipif(shutil.which("java") is None, reason="the PTB tokenizer and METEOR need Java")
def test_known_example_with_java():
    result = caption_metrics(PREDICTIONS, REFERENCES)  # one call: METEOR's JVM takes seconds to start
    assert result["tokenizer"] == "ptb" and result["notes"] == []
    _check_against_references(result)
    assert 0 < result["METEOR"] < 1


def test_caption_inputs_must_pair_up():
    with pytest.raises(ValueError, match="pair up"):
        caption_metrics(["a"], [["a"], ["b"]], java=False)
    with pytest.raises(ValueError, match=r"references\[0\]"):
        caption_metrics(["a"], ["a"], java=False)
