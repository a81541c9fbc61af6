"""Configuration of a VLV model, split by role.

- *Architecture* — what a checkpoint must rebuild: `EncoderConfig`, `TeacherConfig`, `CaptionerConfig`, gathered
  in `VLVConfig` with the seed of every random initialisation and the list of parts whose weights the checkpoint
  stores (`weights`).
- *Inference defaults* — `SampleOptions` (reconstruction / composition sampling) and `GenerateOptions` (caption
  generation): one dataclass each, shared by the Python API and the CLI, saved with the model as its defaults.
- *Training recipes* live in `vlv.train.recipes` and are saved beside the weights they produced, not in here.

Every field is saved into a checkpoint's `config.json`; a behaviour that changes a model is a field here.
Architectures of third-party parts are kept as the keyword arguments of their own config classes
(`Florence2Config`, `CLIPTextConfig`, `UNet2DConditionModel`, `AutoencoderKL`, `Qwen2Config`), so a model can be
built without downloading anything (`vlv info` builds the paper preset on the meta device).

`source` fields name where pretrained weights come from: a hub id or a local directory. `None` means "random
init from `arch`" (the tiny preset, tests).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field


@dataclass(frozen=True)
class EncoderConfig:
    """Image → caption embedding z (paper §3.1): Florence-2 with 77 learnable queries and a projection φ."""

    source: str | None = None  # Florence-2 weights (hub id or path); None = random init from `arch`
    revision: str | None = None  # hub revision of `source`
    arch: dict = field(default_factory=dict)  # Florence2Config kwargs: {"vision_config": ..., "text_config": ...}
    image_size: int = 768  # the vision tower's input resolution (Florence-2's processor uses 768)
    image_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # ImageNet normalisation of Florence-2
    image_std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    # The task prompt whose token embeddings follow the image tokens into the BART encoder. This is what
    # Florence-2's processor expands `<MORE_DETAILED_CAPTION>` to.
    task_prompt: str = "Describe with a paragraph what is shown in the image."
    prompt_token_ids: tuple[int, ...] | None = None  # None = tokenize `task_prompt` with the source's tokenizer
    num_queries: int = 77  # learnable query embeddings fed to the BART decoder = CLIP's maximum text length
    z_dim: int = 1024  # width of z; must equal the text encoder's hidden size
    # Random init only (no `source`): draw the BART decoder's cross-attention at d_model^-1/2 rather than BART's 0.02,
    # so that z depends on the image from step 0 (`vlv.encoder.open_cross_attention`). False: plain BART init.
    open_cross_attention: bool = True
    # z = φ(...) + the teacher's token embeddings of the empty prompt (a fixed buffer, saved with φ): at step 0 the
    # teacher reads about the empty prompt rather than a random z far from its token embeddings
    # (`vlv.encoder.PromptOffset`). False: z = φ(...), as the paper and the released checkpoint have it.
    empty_prompt_offset: bool = False


@dataclass(frozen=True)
class TeacherConfig:
    """The frozen text-to-image teacher: CLIP text encoder + UNet (+ VAE) + noise scheduler, diffusers layout."""

    source: str | None = None  # a diffusers pipeline folder or hub id; None = random init from the archs below
    revision: str | None = None
    text_encoder_arch: dict = field(default_factory=dict)  # CLIPTextConfig kwargs
    unet_arch: dict = field(default_factory=dict)  # UNet2DConditionModel kwargs
    vae_arch: dict | None = None  # AutoencoderKL kwargs; None = the teacher works in pixel space
    scheduler: dict = field(default_factory=dict)  # DDPMScheduler kwargs; `prediction_type` sets the loss target
    vocabulary: tuple[str, ...] = ()  # words of a word-level tokenizer, used only when `source` is None
    image_size: int = 384  # training / reconstruction resolution (paper: resize + center-crop to 384)
    latent_scale: float = 0.18215  # VAE latent scaling factor of SD 2.x (ignored in pixel space)


@dataclass(frozen=True)
class CaptionerConfig:
    """Caption decoder (paper §3.2): ψ maps CLIP-encoded z into the LLM's embedding space as a 77-token prefix."""

    source: str | None = None  # causal LM (and its tokenizer) to start from; None = random init from `arch`
    revision: str | None = None
    arch: dict = field(default_factory=dict)  # Qwen2Config kwargs
    vocabulary: tuple[str, ...] = ()  # words of a word-level tokenizer, used only when `source` is None
    projector_hidden: int = 2048  # ψ = Linear(d_clip, hidden)–GELU–Linear(hidden, d_llm)
    max_caption_tokens: int = 300  # paper: training captions are cut at 300 tokens


@dataclass(frozen=True)
class SampleOptions:
    """How `reconstruct` and `compose` sample from the frozen teacher (paper: CFG 2.0, 50 steps)."""

    steps: int = 50
    guidance: float = 2.0  # classifier-free guidance scale; the unconditional branch is the empty prompt
    sampler: str = "dpm++"  # "dpm++" (DPM-Solver++, fast) or "ddpm" (as the official code)
    timestep_spacing: str = "trailing"  # how sampling steps spread over [0, T): "trailing" suits few steps
    # CFG on this fraction of the steps, the first (noisiest) ones; the later ones run the conditional branch alone,
    # at half the UNet batch (e.g. 0.7: 14 of 20 steps guided). 1.0: every step, as the paper.
    guidance_interval: float = 1.0

    def __post_init__(self):
        if not 0.0 <= self.guidance_interval <= 1.0:
            raise ValueError(f"guidance_interval must be in [0, 1] (a fraction of steps), got {self.guidance_interval}")


@dataclass(frozen=True)
class GenerateOptions:
    """How `caption` decodes. Greedy by default; generation always stops at EOS."""

    max_new_tokens: int = 300
    num_beams: int = 1  # 1 = greedy
    repetition_penalty: float = 1.0  # > 1 discourages repeating generated tokens
    no_repeat_ngram_size: int = 0  # > 0 forbids repeating n-grams of this size


@dataclass(frozen=True)
class VLVConfig:
    name: str
    encoder: EncoderConfig
    teacher: TeacherConfig
    captioner: CaptionerConfig
    sampling: SampleOptions = SampleOptions()
    generation: GenerateOptions = GenerateOptions()
    seed: int = 0  # seed of every random initialisation (queries, φ, ψ, random-init components)
    # The parts whose weights the checkpoint's model.safetensors holds (names in `vlv.parts.TRAINABLE`): what
    # trained, and what has no other source. Every other part is built from its `source`, or from the seed. Also
    # `stage1_encoder.<sub-part>`: the kept stage-1 encoder's sub-parts that differ from the encoder's.
    weights: tuple[str, ...] = ()
    # Whether the encoder's z is what the teacher learned to decode (a stage-1 encoder). False for a converted
    # official captioner (`vlv convert official`), whose encoder trained on in stage 2: reconstruct / compose then
    # warn, and need a stage-1 encoder beside it (`vlv.load(dir, stage1=DIR)`, `vlv reconstruct --stage1 DIR`).
    reconstructs: bool = True

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> VLVConfig:
        sections = {
            "encoder": EncoderConfig,
            "teacher": TeacherConfig,
            "captioner": CaptionerConfig,
            "sampling": SampleOptions,
            "generation": GenerateOptions,
        }
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown config fields {sorted(unknown)}; expected {sorted(known)}")
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        for key, section_cls in sections.items():
            if key in d:
                kwargs[key] = section_from_dict(section_cls, d[key], key)
        return cls(**kwargs)


def section_from_dict(section_cls, d: dict, where: str):
    """A config dataclass from its JSON dict, rejecting unknown fields."""
    names = {f.name for f in dataclasses.fields(section_cls)}
    unknown = set(d) - names
    if unknown:
        raise ValueError(f"unknown fields {sorted(unknown)} in config section '{where}'")
    # JSON turns tuples into lists; restore them so configs compare equal after a round trip.
    return section_cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def derive_seed(seed: int, name: str) -> int:
    """A seed for the random stream called `name`, derived from a base seed.

    Every random initialisation and every seeded data stream takes its own named stream, so that a part built
    later (parts are built on demand) or a stream drawn in another order is still seeded the same way.
    """
    digest = hashlib.sha256(f"{seed}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % (2**63)
