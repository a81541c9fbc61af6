"""Sizes of a preset without memory or download: parameter counts per component, and the training memory per GPU.

Both build the model on the meta device. The memory estimate counts, for stage 1 and each progressive stage-2 phase,
the bytes of weights, gradients and AdamW states under the training precision policy (trained weights in fp32, frozen
weights in bf16, the forward under bf16 autocast), and *measures* the activations: it runs the stage's real forward
at the real batch on fake tensors (`FakeTensorMode`: shapes and dtypes, no data) and sums the storages the forward
leaves alive for backward, with and without gradient checkpointing.

Why fake tensors rather than meta ones: on the meta device autocast does nothing and attention falls back to the
math path, which keeps the (L × L) attention matrix; fake CPU tensors dispatch like real CPU ones (CPU autocast, the
fused attention kernel that keeps only q, k, v, the output and its log-sum-exp, as the GPU kernels do). What stays
approximate: CUDA autocast keeps a few more ops (normalisations, softmax) in fp32 than CPU autocast, and transformers
builds its causal mask when it cannot read the data (as it must anyway for padded captions).
"""

from __future__ import annotations

import dataclasses
import gc

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from vlv.captioner import LoraSettings
from vlv.config import VLVConfig
from vlv.model import VLV
from vlv.presets import preset, stage1_parts
from vlv.tokenizer import build_word_tokenizer
from vlv.train.recipes import PHASE_PARTS

# Per-GPU batches of the paper: stage 1 a global batch of 512, stage 2 one of 64, both on 8 GPUs.
PAPER_GPUS = 8
PER_GPU_BATCH = {"stage1": 512 // PAPER_GPUS, "stage2": 64 // PAPER_GPUS}
# Florence-2's tokenizer turns the task prompt into 14 ids (<s> … </s>); an architecture-only build has no tokenizer,
# and only the number of prompt tokens matters for memory.
FLORENCE_PROMPT_TOKENS = 14
ADAMW_STATES = 2  # exp_avg and exp_avg_sq, each the size (and dtype, fp32) of the trained weight
FP32 = 4  # bytes per element


def parameter_counts(preset_name: str) -> dict:
    """Total parameters per component, and how many train in stage 1 (the preset's recipe) and in stage 2 (the
    progressive phases together). Shared tensors (tied embeddings) are counted once. Also where the pretrained
    parts come from (`sources`: None = random init), by the `vlv.load` keyword that overrides each."""
    with torch.device("meta"):
        model = VLV(preset(preset_name), pretrained=False)
        components = {
            "encoder": model.encoder,
            "text_encoder": model.conditioner,
            "unet": model.decoder.unet,
            "vae": model.decoder.vae,
            "projector": model.caption_decoder.projector,
            "llm": model.caption_decoder.llm,
        }
    out = {}
    for stage, parts in (("stage1", stage1_parts(preset_name)), ("stage2", PHASE_PARTS["encoder"])):
        model.set_trainable(parts)
        for name, module in components.items():
            params = {id(p): p for p in module.parameters()}.values() if module is not None else []
            out.setdefault(name, {"params": sum(p.numel() for p in params)})
            out[name][stage] = sum(p.numel() for p in params if p.requires_grad)
    config = preset(preset_name)
    sources = {"florence": config.encoder.source, "teacher": config.teacher.source, "llm": config.captioner.source}
    return {"preset": preset_name, "components": out, "sources": sources}


# ----- training memory -----------------------------------------------------------------------------------------


def training_rows(preset_name: str) -> dict[str, tuple[str, ...]]:
    """What each training run trains: `stage1`, then the stage-2 phases (`mlp`, `llm`, `encoder`)."""
    return {"stage1": stage1_parts(preset_name), **PHASE_PARTS}


def set_precision(model: VLV, trainable: tuple[str, ...], dtype: torch.dtype, lora: LoraSettings | None) -> None:
    """The training precision policy: `trainable` train with fp32 master weights, every other weight is `dtype`
    (an LLM trained through LoRA adapters counts as frozen: its adapters are the trained weights)."""
    model.set_trainable(trainable, lora=lora)
    model.cast_untrained(dtype)


def training_batch(config: VLVConfig, stage: str, batch_size: int) -> dict:
    """A batch of the run's shape: images at the model's input crop, the teacher's size (`VLV.preprocess`), and in
    stage 2 captions `max_caption_tokens` words long (the longest caption sets the padded length)."""
    size = config.teacher.image_size
    images = torch.rand(batch_size, 3, size, size)
    if stage == "stage1":
        return {"images": images}
    return {"images": images, "captions": [" ".join(["a"] * config.captioner.max_caption_tokens)] * batch_size}


class _ForwardStorages(TorchDispatchMode):
    """Records the storages that ops allocate while the mode is active, to sum those still alive afterwards.

    A storage first seen as an op's input existed before (a weight, a buffer, the batch) and is never counted, so
    views of weights (a Linear's transposed weight) are not either; autocast's bf16 copies of fp32 weights are new
    storages and are counted while something keeps them for backward. Storages are keyed by address with a weak
    reference, because a dead storage's address is soon taken by a new one.
    """

    def __init__(self):
        super().__init__()
        self.allocated: dict[int, tuple[StorageWeakRef, int]] = {}
        self.older: dict[int, StorageWeakRef] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        for t in tree_leaves((args, kwargs)):
            if isinstance(t, torch.Tensor):
                ref = StorageWeakRef(t.untyped_storage())
                mine = self.allocated.get(ref.cdata)
                if mine is None or mine[0].expired():
                    self.older[ref.cdata] = ref
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                ref = StorageWeakRef(storage)
                older, mine = self.older.get(ref.cdata), self.allocated.get(ref.cdata)
                if (older is None or older.expired()) and (mine is None or mine[0].expired()):
                    self.allocated[ref.cdata] = (ref, storage.nbytes())
        return out

    def alive_bytes(self) -> int:
        gc.collect()
        return sum(nbytes for ref, nbytes in self.allocated.values() if not ref.expired())


def activation_bytes(
    model: VLV, stage: str, batch_size: int, *, dtype: torch.dtype = torch.bfloat16, checkpointing: bool
) -> int:
    """Bytes that one training forward of `stage` (`stage1`, or a stage-2 phase) leaves allocated for backward:
    tensors saved for backward, the inputs that checkpointed segments keep, autocast's low-precision copies of the
    trained weights. The forward runs in training mode under autocast to `dtype` (none for float32) on the CPU.

    Works on real tensors and on fake ones alike; backward then adds transient memory (activation gradients, one
    recomputed segment when checkpointing) that this does not count.
    """
    model.set_gradient_checkpointing(checkpointing)
    composition = model.autoencoder() if stage == "stage1" else model.captioner()
    composition.train()
    recorder = _ForwardStorages()
    batch = training_batch(model.config, stage, batch_size)
    with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32), recorder:
        loss = composition(batch)
    alive = recorder.alive_bytes()  # while the loss, and through its graph every saved tensor, is alive
    del loss
    return alive


def training_model(
    config: VLVConfig, stage: str, trainable: tuple[str, ...], dtype: torch.dtype, lora: LoraSettings | None = None
) -> VLV:
    """A VLV on the meta device with the parts the stage uses, under the precision policy."""
    with torch.device("meta"):
        model = VLV(config, pretrained=False)
        if stage == "stage1":
            model.autoencoder()  # builds the encoder, the conditioner and the diffusion decoder
        else:
            model.captioner()  # builds the encoder, the conditioner and the caption decoder
            # An architecture-only build of a pretrained LLM has no tokenizer; a one-word one makes each word of
            # the batch's captions one token.
            model.caption_decoder.tokenizer = build_word_tokenizer(("a",), wrap_bos_eos=False)
        set_precision(model, trainable, dtype, lora)
    return model


def memory_estimate(
    preset_name: str,
    *,
    batch_size: int | None = None,
    dtype: torch.dtype = torch.bfloat16,
    lora_rank: int | None = None,
) -> dict:
    """Training memory per GPU of each run (stage 1 and the stage-2 phases), in bytes.

    weights: fp32 for the trained parts, `dtype` for the frozen ones; grads: fp32, trained only; optimizer: AdamW's
    two fp32 states, trained only; activations: measured by `activation_bytes` (forward under `dtype` autocast) at
    `batch_size` images per GPU (default: the paper's, 64 in stage 1 and 8 in stage 2), without and with gradient
    checkpointing. Not counted: EMA weights, DDP's gradient buckets, the CUDA context and allocator slack.
    lora_rank: also the LLM-training phases with LoRA adapters of this rank (alpha 2 × rank), rows `llm+lora`, ….
    """
    config = preset(preset_name)
    if config.encoder.prompt_token_ids is None:
        prompt = (0,) * FLORENCE_PROMPT_TOKENS
        config = dataclasses.replace(config, encoder=dataclasses.replace(config.encoder, prompt_token_ids=prompt))
    runs = [(stage, trainable, None) for stage, trainable in training_rows(preset_name).items()]
    if lora_rank is not None:
        lora = LoraSettings(rank=lora_rank, alpha=2 * lora_rank)
        runs += [
            (f"{stage}+lora", trainable, lora) for stage, trainable, _ in runs if "caption_decoder.llm" in trainable
        ]
    rows = {}
    for stage, trainable, lora in runs:
        model = training_model(config, stage, trainable, dtype, lora)
        params = list(model.parameters())  # shared tensors once
        trained = sum(p.numel() for p in params if p.requires_grad)
        batch = batch_size or PER_GPU_BATCH["stage1" if stage == "stage1" else "stage2"]
        # Fake tensors on the CPU: the forward dispatches like a real one (CPU autocast, the fused attention
        # kernel's saved tensors) and allocates nothing.
        with FakeTensorMode(allow_non_fake_inputs=True):
            model.to_empty(device="cpu")
            plain, checkpointed = (
                activation_bytes(model, stage, batch, dtype=dtype, checkpointing=ck) for ck in (False, True)
            )
        row = {
            "trainable": list(trainable),
            "lora_rank": lora.rank if lora is not None else None,
            "batch_size": batch,
            "weights": sum(p.numel() * p.element_size() for p in params),
            "grads": trained * FP32,
            "optimizer": trained * FP32 * ADAMW_STATES,
            "activations": plain,
            "activations_checkpointed": checkpointed,
        }
        states = row["weights"] + row["grads"] + row["optimizer"]
        row.update(total=states + plain, total_checkpointed=states + checkpointed)
        rows[stage] = row
    return {
        "preset": preset_name,
        "dtype": str(dtype).removeprefix("torch."),
        "caption_tokens": config.captioner.max_caption_tokens,
        "rows": rows,
    }
