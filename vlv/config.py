"""Configuration of a VLV model: one frozen dataclass per component, plus the named presets.

Every field is saved into a checkpoint's ``config.json``; a behaviour that changes a model is a field here.
Architectures of third-party parts are kept as the keyword arguments of their own config classes
(``Florence2Config``, ``CLIPTextConfig``, ``UNet2DConditionModel``, ``AutoencoderKL``, ``Qwen2Config``), so a
model can be built without downloading anything (``vlv info`` builds the paper preset on the meta device).

``source`` fields name where pretrained weights come from: a hub id or a local directory. ``None`` means
"random init from ``arch``" (the tiny preset, tests); ``save_pretrained`` then writes those weights next to the
checkpoint and points ``source`` at them.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

# The words of the shapes world (MISSION.md §6); the tiny preset reuses them for its word-level tokenizers.
SHAPES_WORDS = tuple(
    "a and at the top bottom left right small large red green blue yellow circle square triangle".split()
)


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
    # Which parts receive gradients (and are saved with the trained weights). Paper stage 1: BART encoder +
    # decoder, queries and φ, with the pretrained DaViT tower, image projection and LayerNorm frozen.
    # Names: "vision", "language_model", "queries", "projection".
    trainable: tuple[str, ...] = ("language_model", "queries", "projection")


@dataclass(frozen=True)
class DiffusionConfig:
    """The frozen text-to-image teacher: CLIP text encoder + UNet (+ VAE) + noise scheduler, diffusers layout."""

    source: str | None = None  # diffusers pipeline directory or hub id (text_encoder/, tokenizer/, unet/, vae/, ...)
    revision: str | None = None
    text_encoder_arch: dict = field(default_factory=dict)  # CLIPTextConfig kwargs
    unet_arch: dict = field(default_factory=dict)  # UNet2DConditionModel kwargs
    vae_arch: dict | None = None  # AutoencoderKL kwargs; None = the UNet works in pixel space
    scheduler: dict = field(default_factory=dict)  # DDPMScheduler kwargs; `prediction_type` sets the loss target
    vocabulary: tuple[str, ...] = ()  # words of a word-level tokenizer, used only when `source` is None
    image_size: int = 384  # training / reconstruction resolution (paper: resize + center-crop to 384)
    latent_scale: float = 0.18215  # VAE latent scaling factor of SD 2.x (ignored in pixel space)
    # Sampling defaults for reconstruction (paper: CFG 2.0, 50 steps).
    sample_steps: int = 50
    guidance: float = 2.0
    sampler: str = "dpm++"  # "dpm++" (DPM-Solver++, fast) or "ddpm" (as the official code)
    timestep_spacing: str = "trailing"  # how sampling steps spread over [0, T): "trailing" suits few steps


@dataclass(frozen=True)
class CaptionerConfig:
    """Caption decoder (paper §3.2): ψ maps CLIP-encoded z into the LLM's embedding space as a 77-token prefix."""

    source: str | None = None  # causal LM (and its tokenizer) to start from; None = random init from `arch`
    revision: str | None = None
    arch: dict = field(default_factory=dict)  # Qwen2Config kwargs
    vocabulary: tuple[str, ...] = ()  # words of a word-level tokenizer, used only when `source` is None
    projector_hidden: int = 2048  # ψ = Linear(d_clip, hidden)–GELU–Linear(hidden, d_llm)
    train_llm: bool = False  # progressive phase 1 trains ψ only
    max_caption_tokens: int = 300  # paper: captions are cut at 300 tokens
    num_beams: int = 1  # 1 = greedy
    repetition_penalty: float = 1.0  # >1 discourages repeating generated tokens
    no_repeat_ngram_size: int = 0  # >0 forbids repeating n-grams of this size


@dataclass(frozen=True)
class VLVConfig:
    name: str
    encoder: EncoderConfig
    diffusion: DiffusionConfig
    captioner: CaptionerConfig
    seed: int = 0  # seed of every random initialisation (queries, φ, ψ, random-init components)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> VLVConfig:
        sections = {"encoder": EncoderConfig, "diffusion": DiffusionConfig, "captioner": CaptionerConfig}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown config fields {sorted(unknown)}; expected {sorted(known)}")
        kwargs = dict(d)
        for key, section_cls in sections.items():
            kwargs[key] = _section_from_dict(section_cls, d[key], key)
        return cls(**kwargs)


def _section_from_dict(section_cls, d: dict, where: str):
    names = {f.name: f for f in dataclasses.fields(section_cls)}
    unknown = set(d) - set(names)
    if unknown:
        raise ValueError(f"unknown fields {sorted(unknown)} in config section '{where}'")
    # JSON turns tuples into lists; restore them so configs compare equal after a round trip.
    return section_cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


# ----------------------------------------------------------------------------------------------------------------
# Presets. Architecture dicts use lists, not tuples, so that they equal themselves after a JSON round trip.


def _ddpm_scheduler(prediction_type: str) -> dict:
    # SD 2.x training scheduler: scaled-linear betas 0.00085–0.012, T = 1000.
    return dict(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type=prediction_type,
        clip_sample=False,
        steps_offset=1,
    )


def _tiny() -> VLVConfig:
    """Smallest real instances of every class, for unit tests (seconds on a CPU)."""
    words = SHAPES_WORDS
    return VLVConfig(
        name="tiny",
        encoder=EncoderConfig(
            arch=dict(
                vision_config=dict(
                    embed_dim=[8, 16, 16, 32],
                    depths=[1, 1, 1, 1],
                    num_heads=[1, 2, 2, 2],
                    num_groups=[1, 2, 2, 2],
                    window_size=2,
                    projection_dim=32,
                    drop_path_rate=0.0,
                ),
                text_config=dict(
                    model_type="bart",
                    d_model=32,
                    encoder_layers=1,
                    decoder_layers=1,
                    encoder_attention_heads=2,
                    decoder_attention_heads=2,
                    encoder_ffn_dim=64,
                    decoder_ffn_dim=64,
                    vocab_size=64,
                    max_position_embeddings=128,
                    dropout=0.0,
                    attention_dropout=0.0,
                    activation_dropout=0.0,
                ),
                image_token_id=63,
            ),
            image_size=64,
            prompt_token_ids=(0, 5, 6, 7, 2),
            num_queries=77,
            z_dim=32,
        ),
        diffusion=DiffusionConfig(
            text_encoder_arch=dict(
                vocab_size=len(words) + 4,
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=2,
                max_position_embeddings=77,
                bos_token_id=1,
                eos_token_id=2,
                pad_token_id=0,
            ),
            unet_arch=dict(
                sample_size=16,
                in_channels=3,
                out_channels=3,
                block_out_channels=[16, 32],
                layers_per_block=1,
                down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
                up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"],
                cross_attention_dim=32,
                attention_head_dim=8,
                norm_num_groups=8,
            ),
            vae_arch=None,
            scheduler=_ddpm_scheduler("epsilon"),
            vocabulary=words,
            image_size=16,
            sample_steps=4,
        ),
        captioner=CaptionerConfig(
            arch=dict(
                vocab_size=len(words) + 4,
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=2,
                num_key_value_heads=1,
                max_position_embeddings=256,
                tie_word_embeddings=True,
            ),
            vocabulary=words,
            projector_hidden=64,
            max_caption_tokens=20,
        ),
    )


SHAPES_TEACHER = str(Path(__file__).resolve().parent / "assets" / "shapes_teacher")
# The committed stage-1 encoder of the shapes demo (`vlv shapes train-encoder`), trained on renders only.
SHAPES_ENCODER = str(Path(__file__).resolve().parent / "assets" / "shapes_encoder")


def _shapes() -> VLVConfig:
    """The offline shapes world (MISSION.md §6): 16-px scenes, a committed pixel-space teacher, tiny encoder/LLM.

    The teacher follows the measured calibration (notes: v-prediction made the teacher use its captions): a
    1.74M-parameter UNet (32/64/64 channels, cross-attention at the two lower resolutions) and a 3-layer,
    width-128 CLIP text encoder, trained jointly by `vlv shapes train-teacher` and committed under
    vlv/assets/shapes_teacher. Encoder and caption decoder are small instances of the paper's classes.
    """
    words = SHAPES_WORDS
    teacher = DiffusionConfig(
        source=SHAPES_TEACHER,
        text_encoder_arch=dict(
            vocab_size=len(words) + 4,
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=3,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
        ),
        unet_arch=dict(
            sample_size=16,
            in_channels=3,
            out_channels=3,
            block_out_channels=[32, 64, 64],
            layers_per_block=1,
            down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
            cross_attention_dim=128,
            attention_head_dim=2,  # diffusers' legacy name: the number of heads (64 channels / 2 = head dim 32)
            norm_num_groups=8,
        ),
        vae_arch=None,
        # DDPM's linear betas (1e-4 … 0.02): they spend most timesteps at high noise, where layout and position
        # are decided (a cosine schedule left positions at chance after 72k samples); v-prediction (see the notes).
        scheduler=dict(
            num_train_timesteps=1000,
            beta_start=0.0001,
            beta_end=0.02,
            beta_schedule="linear",
            prediction_type="v_prediction",
            clip_sample=False,
        ),
        vocabulary=words,
        image_size=16,
        sample_steps=20,
        guidance=4.0,
    )
    # No pretrained Florence-2 exists offline, so here the (small) vision tower trains too; the paper keeps it frozen.
    encoder = EncoderConfig(
        arch=dict(
            vision_config=dict(
                embed_dim=[32, 64, 96, 128],
                depths=[1, 1, 1, 1],
                num_heads=[1, 2, 3, 4],
                num_groups=[1, 2, 3, 4],
                window_size=4,
                projection_dim=128,
                drop_path_rate=0.0,
            ),
            text_config=dict(
                model_type="bart",
                d_model=128,
                encoder_layers=2,
                decoder_layers=2,
                encoder_attention_heads=4,
                decoder_attention_heads=4,
                encoder_ffn_dim=256,
                decoder_ffn_dim=256,
                vocab_size=64,
                max_position_embeddings=128,
                dropout=0.0,
                attention_dropout=0.0,
                activation_dropout=0.0,
            ),
            image_token_id=63,
        ),
        image_size=64,  # 16-px scenes upsampled 4×: the DaViT's 32× reduction leaves one token per quadrant
        prompt_token_ids=(0, 5, 6, 7, 2),
        num_queries=77,
        z_dim=128,
        trainable=("vision", "language_model", "queries", "projection"),
    )
    captioner = CaptionerConfig(
        arch=dict(
            vocab_size=len(words) + 4,
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
            tie_word_embeddings=True,
        ),
        vocabulary=words,
        projector_hidden=256,
        max_caption_tokens=24,  # the longest caption has 17 words
    )
    return VLVConfig(name="shapes", encoder=encoder, diffusion=teacher, captioner=captioner)


def _paper() -> VLVConfig:
    """Florence-2-large + SD 2.1-base + Qwen2.5-3B with the paper's settings (arXiv 2507.07104).

    Architectures are the values of the published config.json files, so the model can be built on the meta
    device without a download; weights load from the hub ids (or local copies of them).
    """
    return VLVConfig(
        name="paper",
        encoder=EncoderConfig(
            source="florence-community/Florence-2-large",
            arch=dict(
                vision_config=dict(
                    embed_dim=[256, 512, 1024, 2048],
                    depths=[1, 1, 9, 1],
                    num_heads=[8, 16, 32, 64],
                    num_groups=[8, 16, 32, 64],
                    window_size=12,
                    projection_dim=1024,
                    drop_path_rate=0.1,
                ),
                text_config=dict(
                    model_type="bart",
                    d_model=1024,
                    encoder_layers=12,
                    decoder_layers=12,
                    encoder_attention_heads=16,
                    decoder_attention_heads=16,
                    encoder_ffn_dim=4096,
                    decoder_ffn_dim=4096,
                    vocab_size=51289,
                    max_position_embeddings=1024,
                ),
                image_token_id=51289,
            ),
            image_size=768,
            z_dim=1024,
        ),
        diffusion=DiffusionConfig(
            source="stabilityai/stable-diffusion-2-1-base",
            text_encoder_arch=dict(
                vocab_size=49408,
                hidden_size=1024,
                intermediate_size=4096,
                num_hidden_layers=23,
                num_attention_heads=16,
                max_position_embeddings=77,
                hidden_act="gelu",
                projection_dim=512,
            ),
            unet_arch=dict(
                sample_size=64,
                in_channels=4,
                out_channels=4,
                down_block_types=[
                    "CrossAttnDownBlock2D",
                    "CrossAttnDownBlock2D",
                    "CrossAttnDownBlock2D",
                    "DownBlock2D",
                ],
                up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
                block_out_channels=[320, 640, 1280, 1280],
                layers_per_block=2,
                attention_head_dim=[5, 10, 20, 20],
                cross_attention_dim=1024,
                use_linear_projection=True,
            ),
            vae_arch=dict(
                in_channels=3,
                out_channels=3,
                down_block_types=["DownEncoderBlock2D"] * 4,
                up_block_types=["UpDecoderBlock2D"] * 4,
                block_out_channels=[128, 256, 512, 512],
                layers_per_block=2,
                latent_channels=4,
                sample_size=768,
            ),
            scheduler=_ddpm_scheduler("epsilon"),
            image_size=384,
        ),
        captioner=CaptionerConfig(
            source="Qwen/Qwen2.5-3B",
            arch=dict(
                vocab_size=151936,
                hidden_size=2048,
                intermediate_size=11008,
                num_hidden_layers=36,
                num_attention_heads=16,
                num_key_value_heads=2,
                max_position_embeddings=32768,
                rope_theta=1000000.0,
                rms_norm_eps=1e-6,
                tie_word_embeddings=True,
                bos_token_id=151643,
                eos_token_id=151643,
            ),
            projector_hidden=2048,
            max_caption_tokens=300,
        ),
    )


PRESETS = {"tiny": _tiny, "shapes": _shapes, "paper": _paper}


def preset(name: str) -> VLVConfig:
    """The named preset's config: one of `tiny`, `shapes`, `paper`."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset '{name}'; choose one of {sorted(PRESETS)}")
    return PRESETS[name]()
