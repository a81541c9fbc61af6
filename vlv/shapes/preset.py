"""The `shapes` preset: 16-px scenes, the committed pixel-space teacher, small Florence-2 / Qwen2 instances.

The teacher follows the measured calibration (v-prediction made the teacher use its captions): a 1.74M-parameter
UNet (32/64/64 channels, cross-attention at the two lower resolutions) and a 3-layer, width-128 CLIP text encoder,
trained jointly by `vlv shapes train-teacher` and committed under `assets/shapes_teacher`. Encoder and caption
decoder are small instances of the paper's classes.
"""

from __future__ import annotations

from pathlib import Path

from vlv.config import CaptionerConfig, EncoderConfig, GenerateOptions, SampleOptions, TeacherConfig, VLVConfig
from vlv.presets import STAGE1_PARTS as PAPER_STAGE1_PARTS
from vlv.presets import ddpm_scheduler, florence_arch, pixel_unet_arch, qwen2_arch, word_clip_arch
from vlv.shapes.world import COLORS, SHAPES, SIZES

# Every word of the caption grammar, in the order of the committed teacher's tokenizer: the vocabulary of the
# teacher's and the LLM's word-level tokenizers.
WORDS = ("a", "and", "at", "the", "top", "bottom", "left", "right", *SIZES, *COLORS, *SHAPES)

# No pretrained vision tower exists offline, so here the (small) DaViT trains in stage 1 too; the paper keeps it frozen.
STAGE1_PARTS = (*PAPER_STAGE1_PARTS, "encoder.vision")

ASSETS = Path(__file__).resolve().parent / "assets"
TEACHER = str(ASSETS / "shapes_teacher")  # the committed teacher (`vlv shapes train-teacher`)
ENCODER = str(ASSETS / "shapes_encoder")  # the committed stage-1 checkpoint (`vlv shapes train-encoder`)
READER = str(ASSETS / "shapes_reader")  # the committed attribute reader that scores images (`vlv shapes train-reader`)


def config(teacher: str | None = TEACHER, seed: int = 0) -> VLVConfig:
    """The shapes model config, with the teacher at `teacher` (a diffusers folder; None = random init)."""
    teacher_cfg = TeacherConfig(
        source=teacher,
        text_encoder_arch=word_clip_arch(width=128, layers=3, heads=4, vocabulary=WORDS),
        unet_arch=pixel_unet_arch(channels=[32, 64, 64], cross_attention_dim=128, heads=2),  # head dim 32
        # DDPM's linear betas (1e-4 … 0.02): they spend most timesteps at high noise, where layout and position
        # are decided (a cosine schedule left positions at chance after 72k samples); v-prediction.
        scheduler=ddpm_scheduler("v_prediction", beta_schedule="linear"),
        vocabulary=WORDS,
        image_size=16,
    )
    encoder = EncoderConfig(
        arch=florence_arch(
            vision_dims=[32, 64, 96, 128],
            depths=[1, 1, 1, 1],
            heads=[1, 2, 3, 4],
            window=4,
            d_model=128,
            layers=2,
            heads_text=4,
            ffn=256,
            vocab=64,
            image_token_id=63,
        ),
        image_size=64,  # 16-px scenes upsampled 4×: the DaViT's 32× reduction leaves one token per quadrant
        prompt_token_ids=(0, 5, 6, 7, 2),
        z_dim=128,
    )
    captioner = CaptionerConfig(
        arch=qwen2_arch(
            vocab=len(WORDS) + 4, width=128, layers=2, heads=4, kv_heads=2, mlp=256, max_position_embeddings=128
        ),
        vocabulary=WORDS,
        projector_hidden=256,
        max_caption_tokens=24,  # the longest caption has 17 words
    )
    return VLVConfig(
        name="shapes",
        encoder=encoder,
        teacher=teacher_cfg,
        captioner=captioner,
        sampling=SampleOptions(steps=20, guidance=4.0),
        generation=GenerateOptions(max_new_tokens=24),
        seed=seed,
    )


def recipes():
    """`vlv train` defaults at this preset: the committed encoder's first (renders-only) segment for stage 1, and
    the demo's three progressive phases for stage 2."""
    from vlv.shapes.demo import DemoConfig  # the training side, imported only when asked for
    from vlv.shapes.stage1 import STAGE1_COMMITTED

    return STAGE1_COMMITTED.plain, DemoConfig.full().stage2()
