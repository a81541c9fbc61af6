"""Standard evaluation metrics as pure functions: the networks they need are passed in, nothing is read from disk.

- `frechet_distance`: the Fréchet distance of FID (Heusel et al. 2017) between two feature sets, hand-written in
  numpy (a symmetric eigen-decomposition instead of scipy's `sqrtm`, so it stays real and needs no scipy).
- `features`: any `nn.Module` as the feature network (FID's `InceptionFeatures`, or the shapes world's attribute
  reader for "shapes-FID"), batched, as one (N, D) array.
- `caption_metrics`: BLEU-1..4 (Papineni et al. 2002), METEOR (Denkowski & Lavie 2014), ROUGE-L (Lin 2004) and
  CIDEr-D (Vedantam et al. 2015) from `pycocoevalcap`, the COCO caption evaluation code, so that numbers compare with
  published ones. SPICE is left out: it needs a Stanford CoreNLP download on first use.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterable

import numpy as np
import torch
from torch import nn


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets a: (N, D), b: (M, D).

    d² = |μa − μb|² + tr(Σa + Σb − 2 (Σa Σb)^½), the quantity FID reports on Inception features. The matrix square
    root uses the symmetric form (Σa^½ Σb Σa^½)^½, which has the same trace and stays real.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sets must be (N, D) with equal D, got {a.shape} and {b.shape}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError("need at least two samples per feature set")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root_a = _sqrtm_psd(cov_a)
    cross = _sqrtm_psd(root_a @ cov_b @ root_a)
    d2 = np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(cross)
    return float(max(d2, 0.0))


def _sqrtm_psd(m: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (negative round-off eigenvalues clipped)."""
    vals, vecs = np.linalg.eigh((m + m.T) / 2)
    return (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T


# ----- feature extraction ---------------------------------------------------------------------------------------


@torch.no_grad()
def features(network: nn.Module, images: torch.Tensor | Iterable[torch.Tensor], batch_size: int = 50) -> np.ndarray:
    """Run `network` over images and stack its outputs: (N, D) float64, in the order of the images.

    images: one tensor (N, 3, H, W), or an iterable of such batches (e.g. read lazily from disk), in whatever range
    the network expects (`InceptionFeatures`: [0, 1]). At most `batch_size` images go through the network at once,
    on the network's device. Outputs (B, ...) are flattened to (B, D). The network must be in eval mode: batch
    statistics would make an image's features depend on its batch.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if network.training:
        raise ValueError(f"the feature network ({type(network).__name__}) is in training mode; call .eval() first")
    tensor = next(iter(network.parameters()), None)
    if tensor is None:
        tensor = next(iter(network.buffers()), torch.empty(0))
    chunks = [images] if isinstance(images, torch.Tensor) else images
    out = []
    for chunk in chunks:
        if chunk.ndim != 4:
            raise ValueError(f"images must be batches (B, C, H, W), got shape {tuple(chunk.shape)}")
        for start in range(0, len(chunk), batch_size):
            batch = chunk[start : start + batch_size].to(tensor.device)
            out.append(network(batch).flatten(1).double().cpu().numpy())  # (b, D)
    if not out:
        raise ValueError("no images to compute features of")
    return np.concatenate(out)  # (N, D)


# ----- caption metrics ------------------------------------------------------------------------------------------

# As PTB: a number with its decimal point or thousands separator ("3.5"), a word with its hyphens ("black-and-white"),
# a clitic split off ("dog's" → "dog 's"). Punctuation is dropped, as the COCO code drops PTB's punctuation tokens.
_WORD = re.compile(r"\d+(?:[.,]\d+)+|[^\W_]+(?:-[^\W_]+)*|'[^\W_]+")


def simple_tokenize(text: str) -> str:
    """The tokenizer used without Java: lower-case words separated by single spaces, punctuation removed.

    It follows what the COCO code's Stanford PTB tokenizer does to ordinary captions; it differs on a few
    contractions ("isn't" → "isn 't" where PTB gives "is n't"), so scores can differ slightly from the PTB path.
    """
    return " ".join(_WORD.findall(text.lower()))


def caption_metrics(predictions: list[str], references: list[list[str]], *, java: bool | None = None) -> dict:
    """Corpus-level COCO caption metrics of predictions[i] against its references[i] (one or more strings).

    Returns {"BLEU-1", …, "BLEU-4", "CIDEr", "ROUGE-L", "METEOR": float | None, "tokenizer": "ptb" | "simple",
    "notes": [str]}. CIDEr is CIDEr-D (clipped n-gram counts, Gaussian length penalty, ×10) as in `pycocoevalcap`;
    its idf weights come from the references of the whole set, so it needs many images (one image always scores 0).

    Java runs the COCO code's Stanford PTB tokenizer and METEOR 1.5. java=None uses them when `java` is on PATH;
    without Java the captions go through `simple_tokenize` and METEOR is None, with the reason in "notes".
    java=True requires Java; java=False never starts it.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} reference lists: they must pair up")
    if not predictions:
        raise ValueError("no captions to evaluate")
    for i, refs in enumerate(references):
        if isinstance(refs, str) or not refs:
            raise ValueError(f"references[{i}] must be a non-empty list of strings, got {refs!r}")
    has_java = shutil.which("java") is not None
    if java and not has_java:
        raise RuntimeError("java=True but no `java` on PATH: install a Java runtime, or pass java=None")
    use_java = has_java if java is None else java

    # The scorers are imported here: pycocoevalcap is an optional dependency of `vlv eval` only.
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    meteor = None
    if use_java:
        from pycocoevalcap.meteor.meteor import Meteor

        # Started first: its JVM loads the paraphrase tables (seconds) while the other metrics are computed.
        meteor = Meteor()
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        # One tokenizer run (one JVM) for references and predictions together, told apart by their keys.
        captions = {("ref", i): [{"caption": r} for r in refs] for i, refs in enumerate(references)}
        captions |= {("pred", i): [{"caption": p}] for i, p in enumerate(predictions)}
        tokenized = PTBTokenizer().tokenize(captions)
        gts = {i: tokenized["ref", i] for i in range(len(references))}
        res = {i: tokenized["pred", i] for i in range(len(predictions))}
    else:
        gts = {i: [simple_tokenize(r) for r in refs] for i, refs in enumerate(references)}
        res = {i: [simple_tokenize(p)] for i, p in enumerate(predictions)}

    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    result = {f"BLEU-{n + 1}": float(b) for n, b in enumerate(bleu)}
    result["CIDEr"] = float(Cider().compute_score(gts, res)[0])
    result["ROUGE-L"] = float(Rouge().compute_score(gts, res)[0])
    result["METEOR"] = None if meteor is None else float(meteor.compute_score(gts, res)[0])
    del meteor  # its destructor stops the JVM now rather than at exit
    result["tokenizer"] = "ptb" if use_java else "simple"
    result["notes"] = []
    if not use_java:
        why = "java=False" if has_java else "no `java` on PATH"
        result["notes"].append(f"METEOR not computed and simple tokenizer instead of PTB ({why}): they need Java")
    return result
