"""Convert the authors' released captioner (`model.pt` of Tiezheng11/Vision-Language-Vision) into a vlv checkpoint.

The release is a pickled state dict of the official stage-2 model (`train_VLV_stage2.py`): the remote-code
Florence-2 (`VLV_model.model.`), the frozen CLIP text tower, the 77 queries, φ (`language_proj`), ψ (`mlp.layers`)
and Qwen2.5 (`qwen2_model.`). `RULES` maps each official key onto vlv's state-dict names, following the table in
the project's real-weights notes and transformers' own Florence-2 conversion (remote code → `Florence2Model`).
Every tensor is accounted for: mapped, or dropped for a stated reason (`DROPPED`); an unknown key, or a vlv weight
the file does not provide, is an error that names it. The output is an ordinary checkpoint written by
`VLV.save_pretrained`, so `vlv.load` reads it strictly.

The release holds no stage-1 encoder: stage 2 trained Florence's language model on after stage 1 (φ and the
queries frozen), so z no longer matches what the teacher learned to decode. The converted config says so
(`reconstructs=False`); reconstructions need a stage-1 encoder beside it (`vlv.load(dir, stage1=...)`).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections import Counter
from dataclasses import dataclass, field

import torch
from transformers import AutoTokenizer

from vlv import encoder
from vlv.config import VLVConfig
from vlv.loading import CheckpointMismatchError, _describe, check_state_dict
from vlv.model import VLV

F = r"VLV_model\.model\."  # the remote-code Florence2ForConditionalGeneration inside the official VLV model
DAVIT = F + r"vision_tower\.blocks\.(\d+)\.(\d+)\.(spatial|channel)_block\."
NATIVE_DAVIT = r"encoder.florence.vision_tower.blocks.\1.\2.\3_block."
P = r"(weight|bias)"

# Official key (regex, after `module.` is stripped) → vlv key (template), and how the tensor changes on the way:
# "copy", "transpose" (the bare [in, out] projection used as `x @ P` becomes a Linear weight [out, in]), "vocab"
# (the official vocabulary rows fill the first rows of the native, padded embedding), "squeeze" ([1, N, D] → [N, D]).
RULES: list[tuple[str, str, str]] = [
    # DaViT vision tower: PreNorm(norm, fn) wrappers unfolded into norm1/norm2 and bare modules.
    (F + r"vision_tower\.convs\.(\d+)\.proj\." + P, r"encoder.florence.vision_tower.convs.\1.conv.\2", "copy"),
    (F + r"vision_tower\.convs\.(\d+)\.norm\." + P, r"encoder.florence.vision_tower.convs.\1.norm.\2", "copy"),
    (DAVIT + r"(conv[12])\.fn\.dw\." + P, NATIVE_DAVIT + r"\4.\5", "copy"),
    (DAVIT + r"(?:window|channel)_attn\.norm\." + P, NATIVE_DAVIT + r"norm1.\4", "copy"),
    (DAVIT + r"(window|channel)_attn\.fn\.(qkv|proj)\." + P, NATIVE_DAVIT + r"\4_attn.\5.\6", "copy"),
    (DAVIT + r"ffn\.norm\." + P, NATIVE_DAVIT + r"norm2.\4", "copy"),
    (DAVIT + r"ffn\.fn\.net\.(fc[12])\." + P, NATIVE_DAVIT + r"ffn.\4.\5", "copy"),
    # The image projection, its LayerNorm and the position embeddings: native `multi_modal_projector`.
    (F + r"image_projection", "encoder.florence.multi_modal_projector.image_projection.weight", "transpose"),
    (F + r"image_proj_norm\." + P, r"encoder.florence.multi_modal_projector.image_proj_norm.\1", "copy"),
    (
        F + r"image_pos_embed\.(row|column)_embeddings\.weight",
        r"encoder.florence.multi_modal_projector.image_position_embed.\1_embeddings.weight",
        "copy",
    ),
    (
        F + r"visual_temporal_embed\.pos_idx_to_embed",
        "encoder.florence.multi_modal_projector.visual_temporal_embed.pos_idx_to_embed",
        "copy",
    ),
    # Florence's BART: the same names one level up; the three (tied) token embeddings are the vocabulary.
    (
        F + r"language_model\.model\.(shared|encoder\.embed_tokens|decoder\.embed_tokens)\.weight",
        r"encoder.florence.language_model.\1.weight",
        "vocab",
    ),
    (F + r"language_model\.model\.(.+)", r"encoder.florence.language_model.\1", "copy"),
    # VLV's own parts: the queries and φ (stage 1), ψ and the LLM (stage 2).
    (r"VLV_model\.query_embed", "encoder.queries", "squeeze"),
    (r"VLV_model\.language_proj\.([02])\." + P, r"encoder.projection.\1.\2", "copy"),
    (r"mlp\.layers\.([02])\." + P, r"caption_decoder.projector.\1.\2", "copy"),
    (r"qwen2_model\.(.+)", r"caption_decoder.llm.\1", "copy"),
]

# Official keys left out on purpose, with the reason the report gives.
TEACHER_REASON = "frozen teacher CLIP text tower: taken from the teacher source (checked equal)"
DROPPED: list[tuple[str, str]] = [
    (F + r"language_model\.(lm_head\.weight|final_logits_bias)", "Florence's LM head: VLV does not use it"),
    (r"VLV_model\.text_encoder\.text_model\.(.+)", TEACHER_REASON),
]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
BART_POSITION_OFFSET = 2  # BART's learned position table has 2 rows more than its maximum length


@dataclass
class ConversionReport:
    """What happened to each tensor of the file: every one mapped or dropped, none unaccounted for."""

    mapped: int = 0
    dropped: Counter = field(default_factory=Counter)  # reason → number of tensors
    notes: list[str] = field(default_factory=list)  # vocabulary padding, position table size, dtype

    def format(self) -> str:
        lines = [f"mapped: {self.mapped} tensors"]
        lines += [f"dropped: {n} tensors ({reason})" for reason, n in sorted(self.dropped.items())]
        lines.append("unaccounted: 0")
        return "\n".join(lines + self.notes)


def read_official(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The released state dict, loaded without unpickling code (`weights_only`), unwrapped from an optional
    `model_state_dict` and with every `module.` (DDP / DeepSpeed wrappers) removed, as the official loader does."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model_state_dict" in state:
        state = state["model_state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} is not a state dict of tensors (the released captioner's model.pt is one)")
    return {k.replace("module.", ""): v for k, v in state.items()}


def map_official(official: dict[str, torch.Tensor], target: dict[str, torch.Tensor], report: ConversionReport):
    """Official tensors → vlv keys (`RULES`), given the target model's state dict (for the padded vocabulary rows).
    Returns (mapped tensors, the dropped teacher tensors by their names under `text_model.`). Raises naming unknown
    keys."""
    mapped, teacher, unknown = {}, {}, []
    for key, tensor in official.items():
        for pattern, template, kind in RULES:
            if m := re.fullmatch(pattern, key):
                name = m.expand(template)
                mapped[name] = _transform(kind, tensor, target.get(name), key)
                report.mapped += 1
                break
        else:
            for pattern, reason in DROPPED:
                if m := re.fullmatch(pattern, key):
                    report.dropped[reason] += 1
                    if reason == TEACHER_REASON:
                        teacher[m.group(1)] = tensor
                    break
            else:
                unknown.append(key)
    if unknown:
        raise CheckpointMismatchError(f"{len(unknown)} keys that no conversion rule knows: {_describe(unknown)}")
    return mapped, teacher


def _transform(kind: str, tensor: torch.Tensor, native: torch.Tensor | None, key: str) -> torch.Tensor:
    if kind == "transpose":
        return tensor.t().contiguous()  # (in, out) used as x @ P → Linear weight (out, in)
    if kind == "squeeze":
        return tensor.reshape(tensor.shape[-2:])  # (1, N, D) → (N, D)
    if kind == "vocab" and native is not None and tensor.shape[0] < native.shape[0]:
        # The native vocabulary adds <image> and pads to a multiple of 64; those rows keep the target's init.
        rows = native.clone().to(tensor.dtype)
        rows[: tensor.shape[0]] = tensor
        return rows
    return tensor


def convert_official(
    path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    config: VLVConfig,
    dtype: str = "keep",
) -> ConversionReport:
    """Convert the released `model.pt` at `path` into a vlv checkpoint at `out`, for the architecture `config`
    (the paper preset for the real release; its sources give the tokenizers and the teacher).

    dtype: "keep" (the file's own, bf16 in the release), "float32" or "bfloat16".
    """
    if dtype != "keep" and dtype not in DTYPES:
        raise ValueError(f"dtype must be keep, {' or '.join(DTYPES)}; got {dtype!r}")
    official = read_official(path)
    report = ConversionReport()
    config = _fit_positions(config, official, report)
    # The prompt's token ids come from the Florence tokenizer now, so the checkpoint needs no tokenizer to load.
    prompt = encoder.resolve_prompt_ids(config.encoder)
    config = dataclasses.replace(
        config,
        encoder=dataclasses.replace(config.encoder, prompt_token_ids=prompt),
        reconstructs=False,  # the release's encoder is the stage-2 one: see the module docstring
    )
    # The target built from its architectures (every weight below comes from the file); only tokenizers from sources.
    model = VLV(config, pretrained=False)
    trained = ("encoder.vision", "encoder.language_model", "encoder.queries", "encoder.projection")
    model.set_trainable((*trained, "caption_decoder.projector", "caption_decoder.llm"))  # → all saved
    model.set_trainable(())
    if config.captioner.source is not None:
        source, revision = model.resolved_source("captioner"), config.captioner.revision
        model.caption_decoder.tokenizer = AutoTokenizer.from_pretrained(source, revision=revision)

    parts = {"encoder": model.encoder, "caption_decoder": model.caption_decoder}
    target = {f"{name}.{k}": v for name, part in parts.items() for k, v in part.state_dict().items()}
    mapped, teacher = map_official(official, target, report)
    check_state_dict(target, mapped, f"{path} (converted)")  # names every missing target and mis-shaped tensor
    _check_tied(parts, mapped)
    # transformers ≥ 5 keeps CLIPTextModel's weights without the `text_model.` level the release has.
    clip = {k.removeprefix("text_model."): v for k, v in VLV(config).conditioner.text_encoder.state_dict().items()}
    _check_teacher(clip, teacher, config)

    floats = {v.dtype for v in official.values() if v.is_floating_point()}
    widest = torch.float32 if torch.float32 in floats or not floats else max(floats, key=lambda d: d.itemsize)
    store = DTYPES[dtype] if dtype != "keep" else widest
    for name, part in parts.items():
        part.to(store)
        part.load_state_dict({k[len(name) + 1 :]: v for k, v in mapped.items() if k.startswith(name + ".")})
    report.notes.append("CLIP text tower: equal to the teacher's")
    report.notes.append(f"weights stored in {str(store).removeprefix('torch.')}")
    model.save_pretrained(out)
    return report


def _fit_positions(config: VLVConfig, official: dict[str, torch.Tensor], report: ConversionReport) -> VLVConfig:
    """Florence-2 clones differ in BART's position table (1026 rows, or 4098 after its 4k-context commit): the
    converted architecture takes the file's, so no learned row is lost."""
    table = official.get("VLV_model.model.language_model.model.encoder.embed_positions.weight")
    text = config.encoder.arch.get("text_config", {})
    if table is None or table.shape[0] - BART_POSITION_OFFSET == text.get("max_position_embeddings"):
        return config
    length = table.shape[0] - BART_POSITION_OFFSET
    report.notes.append(f"BART max_position_embeddings set to the file's {length}")
    arch = {**config.encoder.arch, "text_config": {**text, "max_position_embeddings": length}}
    return dataclasses.replace(config, encoder=dataclasses.replace(config.encoder, arch=arch))


def _check_tied(parts: dict, mapped: dict[str, torch.Tensor]) -> None:
    """Tied weights (BART's three token embeddings, Qwen's lm_head and input embedding) are one parameter in the
    target: the file must give them one value, or loading would keep whichever came last."""
    for name, part in parts.items():
        first = {}
        for key, param in part.named_parameters(remove_duplicate=False):
            full = f"{name}.{key}"
            other = first.setdefault(id(param), full)
            if other != full and not torch.equal(mapped[other], mapped[full]):
                raise CheckpointMismatchError(f"tied weights {other} and {full} differ in the file")


def _check_teacher(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], config: VLVConfig) -> None:
    """The dropped CLIP text tower must be the teacher's: ψ was trained on c from that text tower."""
    check_state_dict(expected, found, "the file's CLIP text tower (VLV_model.text_encoder)")
    differ = [k for k, v in found.items() if not torch.equal(expected[k].to(v.dtype), v)]
    if differ:
        raise ValueError(
            f"the file's frozen CLIP text tower differs from the teacher's ({config.teacher.source or 'random init'}) "
            f"at {differ[:4]}{' …' if len(differ) > 4 else ''}: pass the teacher it was trained with (--teacher)"
        )
