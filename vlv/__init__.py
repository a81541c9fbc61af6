"""vlv: the Vision-Language-Vision auto-encoder (arXiv 2507.07104) — encode images into caption embeddings by
distilling a frozen text-to-image diffusion model, then caption, reconstruct and compose them.

    import vlv
    m = vlv.load("tiny")            # a preset name or a checkpoint directory
    z = m.embed(images)             # (B, 77, D) caption embeddings
    m.caption(images)               # list of captions
    m.reconstruct(images, steps=50, guidance=2.0, seed=0)
"""

from vlv.api import load
from vlv.config import GenerateOptions, SampleOptions, VLVConfig
from vlv.model import VLV, compose_embeddings
from vlv.presets import preset

__all__ = ["VLV", "VLVConfig", "GenerateOptions", "SampleOptions", "compose_embeddings", "load", "preset"]
__version__ = "0.1.0"
