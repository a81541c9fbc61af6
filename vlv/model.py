"""The VLV model: its parts built on demand, the trainable compositions it lends, and the public inference API.

    image ──► encoder ──► z (77 × d) ──► conditioner (frozen CLIP) ──► c ──► decoder (frozen UNet, VAE)  reconstruct
                                                                        └──► caption_decoder (ψ, LLM)     caption

A `VLV` holds a config and builds each part the first time something needs it: captioning never builds the UNet or
VAE, stage 1 and reconstruction never build the LLM or ψ. Each part is initialised from its own named random stream
(`derive_seed(config.seed, part)`), so the order in which parts are built changes nothing.

Which weights train is decided in one place, `set_trainable`, by part names (`TRAINABLE`); every other parameter is
frozen. What `save_pretrained` writes into model.safetensors follows from it: every part that trained, and every
part that has no source to be rebuilt from (the queries, φ, ψ, random-init components). An LLM that did not train
is referenced by its source, not copied.

A model keeps the encoder whose z the teacher decodes. Stage 2's last progressive phase trains the encoder's BART
for captioning, which moves z away from what the teacher learned to decode; so when a captioning phase starts to
train a stage-1 encoder, `set_trainable` first keeps a frozen copy of what is about to change (`stage1_encoder`,
sharing every other weight), and `embed` / `reconstruct` / `compose` use it. A save stores the copy's sub-parts that
differ from the encoder's under `stage1_encoder.*`, nothing when they are equal.

The LLM may train through LoRA adapters instead (`set_trainable(..., lora=...)`). Until `merge_lora` folds them in,
a save holds the LLM's base weights (as they were when the adapters were added) under their plain keys, and the
adapters are the caller's to keep (`caption_decoder.adapter_state()`); after it, the LLM counts as trained.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import warnings
import weakref
from pathlib import Path

import torch
from huggingface_hub.errors import HFValidationError
from torch import nn
from transformers import AutoTokenizer

from vlv import checkpoint, encoder
from vlv.captioner import CaptionDecoder, LoraSettings, build_caption_decoder
from vlv.compositions import CONDITIONING_CACHE_BYTES, Autoencoder, Captioner, compose_embeddings
from vlv.conditioning import TextConditioner, build_text_conditioner
from vlv.config import VLVConfig, derive_seed
from vlv.diffusion import DiffusionDecoder, build_diffusion_decoder
from vlv.images import ImageInput, to_batch
from vlv.loading import SourceUnavailableError, check_state_dict, source_unavailable
from vlv.parts import (
    PARTS,
    SOURCED,
    SOURCES,
    STAGE1,
    STAGE1_SUBPARTS,
    TRAINABLE,
    subpart_state,
    subparts_of,
    tied_aliases,
    with_sources,
)

__all__ = ["PARTS", "TRAINABLE", "VLV", "compose_embeddings"]


class VLV(nn.Module):
    """A VLV model. Build one with `vlv.load(preset_name_or_directory)`."""

    def __init__(self, config: VLVConfig, *, pretrained: bool = True, _directory: Path | None = None):
        """pretrained: load each part's `source` weights (False: architecture only, random init)."""
        super().__init__()
        self.config = config
        self.pretrained = pretrained
        self.parts = nn.ModuleDict()
        self._directory = _directory  # the checkpoint this model was loaded from: relative sources, stored weights
        # Sub-parts whose weights are ours to save (the stage-1 copy's are decided at save time).
        self._trained: set[str] = {w for w in config.weights if w not in STAGE1_SUBPARTS}
        # The encoder that embeds for reconstruction when it is not `encoder` (see `reconstruction_encoder`).
        self.stage1_encoder: encoder.VLVEncoder | None = None
        self._warned_no_stage1 = False
        # An empty buffer that follows `.to()`, so that parts built later land on the model's device and dtype.
        self.register_buffer("_anchor", torch.empty(0), persistent=False)
        self._compile_options: dict | None = None  # set by `compile_networks`
        self._compiled: weakref.WeakSet[nn.Module] = weakref.WeakSet()  # the networks compiled so far

    @property
    def device(self) -> torch.device:
        return self._anchor.device

    @property
    def directory(self) -> Path | None:
        """The checkpoint directory this model was loaded from (None for a preset)."""
        return self._directory

    # ----- parts, built on demand ----------------------------------------------------------------------------

    @property
    def encoder(self) -> encoder.VLVEncoder:
        return self.part("encoder")

    @property
    def conditioner(self) -> TextConditioner:
        return self.part("conditioner")

    @property
    def decoder(self) -> DiffusionDecoder:
        return self.part("decoder")

    @property
    def caption_decoder(self) -> CaptionDecoder:
        return self.part("caption_decoder")

    def built_parts(self) -> list[str]:
        return list(self.parts.keys())

    def part(self, name: str) -> nn.Module:
        """The part called `name`, built (and its stored weights loaded) the first time it is asked for."""
        if name not in self.parts:
            if name not in PARTS:
                raise ValueError(f"unknown part '{name}'; choose one of {PARTS}")
            meta = self._anchor.device.type == "meta"
            # Each part draws its random init from its own stream, whatever was built before it.
            with torch.random.fork_rng(devices=[]), torch.device("meta") if meta else contextlib.nullcontext():
                torch.manual_seed(derive_seed(self.config.seed, name))
                module = self._build_from_source(name, pretrained=self.pretrained and not meta)
            if not meta:
                self._load_stored(name, module)
                # Every part in the model's dtype, whatever its source was saved in (Qwen2.5 ships bf16 weights).
                module = module.to(device=self._anchor.device, dtype=self._anchor.dtype)
            self.parts[name] = module
            if getattr(self, "_gradient_checkpointing", False):  # a part built after `set_gradient_checkpointing(True)`
                self.set_gradient_checkpointing(True)
            if self._compile_options is not None:  # a part built after `compile_networks`
                self._compile_part(name)
        return self.parts[name]

    def resolved_source(self, section: str) -> str | None:
        """A config section's source; a relative path is relative to the checkpoint directory."""
        source = getattr(self.config, section).source
        if source is not None and self._directory is not None and not os.path.isabs(source):
            if (self._directory / source).is_dir():
                return str((self._directory / source).resolve())
        return source

    def _build_from_source(self, name: str, *, pretrained: bool) -> nn.Module:
        """`_build`, with a source that cannot be read (no such directory, offline hub, no such repository, missing
        files) reported as one `SourceUnavailableError` naming the part, the source tried and how to use a local
        copy. A source that is read but does not match (`CheckpointMismatchError`) is not caught."""
        try:
            return self._build(name, pretrained=pretrained)
        except (OSError, HFValidationError) as e:
            section, component, option = SOURCES[name]
            source = self.resolved_source(section)
            if source is None or isinstance(e, SourceUnavailableError):
                raise
            # `from None`: the hub's and the loaders' chained errors add nothing the message does not say.
            raise source_unavailable(component, source, option, e) from None

    def _build(self, name: str, *, pretrained: bool) -> nn.Module:
        cfg = self.config
        # A sourced part whose weights are all stored is built from its architecture: no download to overwrite.
        stored = set(cfg.weights) if self._directory is not None else set()
        if name == "encoder":
            enc = dataclasses.replace(cfg.encoder, source=self.resolved_source("encoder"))
            from_source = pretrained and not {"encoder.vision", "encoder.language_model"} <= stored
            florence = encoder.build_florence(enc, pretrained=from_source)
            # An architecture-only build (e.g. on the meta device) needs no task prompt.
            prompt_ids = encoder.resolve_prompt_ids(enc) if pretrained or enc.prompt_token_ids else ()
            self.config = dataclasses.replace(
                cfg, encoder=dataclasses.replace(cfg.encoder, prompt_token_ids=tuple(prompt_ids) or None)
            )
            module = encoder.VLVEncoder(enc, florence, prompt_ids)
            if enc.empty_prompt_offset and "encoder.projection" not in stored and self._anchor.device.type != "meta":
                module.projection[-1].start_at(self.conditioner.prompt_embeddings([""])[0])  # a new φ: z starts there
            return module
        if name in ("conditioner", "decoder"):
            teacher = dataclasses.replace(cfg.teacher, source=self.resolved_source("teacher"))
            build = build_text_conditioner if name == "conditioner" else build_diffusion_decoder
            return build(teacher, pretrained=pretrained)
        tokenizer = None
        if self._directory is not None and (self._directory / checkpoint.TOKENIZER_DIR).is_dir():
            tokenizer = AutoTokenizer.from_pretrained(self._directory / checkpoint.TOKENIZER_DIR)
        clip_dim = cfg.teacher.text_encoder_arch["hidden_size"]
        if cfg.encoder.z_dim != clip_dim:
            raise ValueError(f"encoder z_dim {cfg.encoder.z_dim} must equal the text encoder width {clip_dim}")
        capt = dataclasses.replace(cfg.captioner, source=self.resolved_source("captioner"))
        from_source = pretrained and "caption_decoder.llm" not in stored
        module = build_caption_decoder(capt, clip_dim, pretrained=from_source, tokenizer=tokenizer)
        if from_source and capt.source is not None:
            # Record the loaded LLM's architecture, so that a checkpoint storing it rebuilds it without the source.
            arch = {k: v for k, v in module.llm.config.to_diff_dict().items() if k != "transformers_version"}
            self.config = dataclasses.replace(cfg, captioner=dataclasses.replace(cfg.captioner, arch=arch))
        return module

    def _load_stored(self, name: str, module: nn.Module) -> None:
        """Load this part's tensors from the checkpoint's model.safetensors (strictly), if it stores any."""
        subparts = subparts_of(name, self.config.weights)
        if self._directory is None or not subparts:
            return
        found = checkpoint.read_tensors(self._directory, name + ".")
        # Checkpoints written before tied weights were stored once hold copies under the tied names: the same values.
        found = {k: v for k, v in found.items() if k not in tied_aliases(module)}
        expected = subpart_state(module, subparts)
        check_state_dict(expected, found, str(self._directory / checkpoint.WEIGHTS_NAME))
        # strict=False only because the other sub-parts come from their source; the check above is the strict one.
        module.load_state_dict(found, strict=False)

    # ----- training ------------------------------------------------------------------------------------------

    def set_trainable(self, parts: tuple[str, ...] | list[str], *, lora: LoraSettings | None = None) -> None:
        """Train exactly these sub-parts (names in `TRAINABLE`, e.g. `encoder.language_model`); freeze the rest.

        Trained weights become float32 whatever the model's dtype (frozen parts keep theirs, e.g. bf16). A sub-part
        that trains once is saved by `save_pretrained` from then on, whatever trains later.

        lora: train the LLM, when it is among `parts`, through LoRA adapters added now (their random init drawn
        from the model's own `lora` stream) while its weights stay frozen; it counts as trained once `merge_lora`
        has folded them in.
        """
        unknown = set(parts) - set(TRAINABLE)
        if unknown:
            raise ValueError(f"unknown trainable parts {sorted(unknown)}; choose from {sorted(TRAINABLE)}")
        encoder_parts = [p.split(".", 1)[1] for p in parts if p.startswith("encoder.")]
        if encoder_parts and any(p.startswith("caption_decoder.") for p in parts):
            self._keep_stage1_encoder(encoder_parts)
        if "caption_decoder.llm" in parts and (lora is not None or "caption_decoder" in self.parts):
            carried = self.caption_decoder.lora
            if carried is not None and carried != lora:
                raise ValueError(f"the LLM carries LoRA adapters {carried}, not {lora}: call merge_lora first")
            if carried is None and lora is not None:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(derive_seed(self.config.seed, "lora"))
                    self.caption_decoder.add_lora(lora)
        for name in ("encoder", "caption_decoder"):
            mine = [p.split(".", 1)[1] for p in parts if p.startswith(name + ".")]
            if mine or name in self.parts:
                self.part(name).set_trainable(mine)
                for p in self.parts[name].parameters():
                    if p.requires_grad and p.dtype != torch.float32:
                        # Trained weights are fp32 master weights even in a bf16 model: an AdamW step at lr 1e-5
                        # on a bf16 weight near 1.0 is below its resolution and would be lost. The forward then
                        # needs autocast (the training driver's mixed precision) to mix the two dtypes.
                        p.data = p.data.float()
        # An LLM that trains through adapters keeps its own weights until they are merged (merge_lora).
        self._trained |= set(parts) - ({"caption_decoder.llm"} if lora is not None else set())

    def _keep_stage1_encoder(self, changing: list[str]) -> None:
        """Before a captioning phase trains the encoder sub-parts `changing`: keep them, as they are now, in the
        frozen stage-1 copy that reconstruction embeds with. Nothing to keep when the encoder never trained (the
        paired-only baseline: no teacher decodes its z) or is no stage-1 encoder (a converted captioner)."""
        if self.reconstruction_encoder() is self.encoder:
            trained_encoder = any(p.startswith("encoder.") for p in self._trained)
            if self.config.reconstructs and trained_encoder:
                self.stage1_encoder = self._copy_encoder(own=changing)
            return
        # A copy exists (an earlier phase, or a checkpoint): it must own what trains now instead of sharing it.
        prefixes = tuple(p for sub in changing for p in encoder.SUBPARTS[sub])
        shared = {id(p) for p in self.encoder.parameters()}
        clones: dict[int, nn.Parameter] = {}
        for name, p in list(self.stage1_encoder.named_parameters(remove_duplicate=False)):
            if name.startswith(prefixes) and id(p) in shared:
                # Tied weights (BART's shared embeddings) are reached under several names: one clone for all of them.
                clone = clones.setdefault(id(p), nn.Parameter(p.detach().clone(), requires_grad=False))
                owner, _, leaf = name.rpartition(".")
                setattr(self.stage1_encoder.get_submodule(owner), leaf, clone)

    def _copy_encoder(self, own: list[str]) -> encoder.VLVEncoder:
        """A frozen, eval-mode copy of the encoder with its own tensors for the sub-parts `own` (names in
        `encoder.SUBPARTS`) and the very same parameters as the encoder for the others: no memory for what is equal.
        The shared ones must not train while shared (`_keep_stage1_encoder` gives the copy its own first)."""
        prefixes = tuple(p for sub in own for p in encoder.SUBPARTS[sub])
        memo = {id(p): p for name, p in self.encoder.named_parameters() if not name.startswith(prefixes)}
        copied = copy.deepcopy(self.encoder, memo)
        for name, p in copied.named_parameters():
            if name.startswith(prefixes):
                p.requires_grad_(False)
        copied.vision_trainable = False
        return copied.eval()

    def reconstruction_encoder(self) -> encoder.VLVEncoder:
        """The encoder whose z the teacher decodes: the kept stage-1 encoder when the model has one (stage 2 trained
        the encoder further, or `use_stage1`), else the model's own. Captions always use `encoder`."""
        stored = [s.split(".", 1)[1] for s in self.config.weights if s in STAGE1_SUBPARTS]
        if self.stage1_encoder is None and stored and self._directory is not None:
            copied = self._copy_encoder(own=stored)
            found = checkpoint.read_tensors(self._directory, STAGE1 + ".")
            expected = subpart_state(copied, [f"encoder.{sub}" for sub in stored])
            check_state_dict(expected, found, str(self._directory / checkpoint.WEIGHTS_NAME))
            copied.load_state_dict(found, strict=False)  # the other sub-parts are the encoder's own tensors
            self.stage1_encoder = copied
        return self.stage1_encoder if self.stage1_encoder is not None else self.encoder

    def merge_lora(self) -> None:
        """Fold the LLM's LoRA adapters into its weights (W ← W + (alpha / rank)·B·A) and drop them: the LLM is a
        plain Qwen2ForCausalLM again, and is saved as a trained part from now on."""
        self.caption_decoder.merge_lora()
        self._trained.add("caption_decoder.llm")

    def cast_untrained(self, dtype: torch.dtype, *, keep: set[str] | tuple[str, ...] = ()) -> None:
        """Store the built parts' weights in `dtype` (e.g. bf16 for mixed-precision training), except those of the
        sub-parts in `keep` (names in `TRAINABLE`) and any that train now, which stay fp32 master weights."""
        for name, module in self.parts.items():
            prefixes = tuple(p for sub in keep if sub.split(".")[0] == name for p in TRAINABLE[sub])
            for key, param in module.named_parameters():
                if not param.requires_grad and not (prefixes and key.startswith(prefixes)):
                    param.data = param.data.to(dtype)

    def autoencoder(self, **sampling) -> Autoencoder:
        """The stage-1 composition over this model's parts (encoder, conditioner, decoder); `sampling`
        (noises_per_image, timesteps, timestep_logit_normal, antithetic_noise) as `Autoencoder` takes it."""
        return Autoencoder(self.encoder, self.conditioner, self.decoder, **sampling)

    def captioner(self, *, denoising_weight: float = 0.0, cache_bytes: int = CONDITIONING_CACHE_BYTES) -> Captioner:
        """The stage-2 composition over this model's parts (encoder, conditioner, caption decoder); with a
        `denoising_weight` > 0 it adds that times the stage-1 loss of the same images (teacher's UNet, VAE too).
        cache_bytes: memory for the conditionings of named images while the encoder is frozen (`Captioner`)."""
        denoising = self.autoencoder() if denoising_weight > 0 else None
        return Captioner(
            self.encoder,
            self.conditioner,
            self.caption_decoder,
            self.config.teacher.image_size,
            denoising=denoising,
            denoising_weight=denoising_weight,
            cache_bytes=cache_bytes,
        )

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Recompute activations during backward instead of keeping them from the forward, in the big networks on
        the gradient path: the teacher UNet, the encoder's BART and the LLM. Gradients are unchanged; a step costs
        about one more forward. Applies to the parts built so far and to those built later.

        The frozen UNet is checkpointed in eval mode too: diffusers 0.42 checkpoints its blocks whenever grad is
        enabled. transformers checkpoints a layer only in training mode, so a frozen BART or LLM, which the encoder
        and the caption decoder keep in eval mode, runs without it. The CLIP text encoder is not checkpointed.
        """
        self._gradient_checkpointing = enabled
        if "decoder" in self.parts:
            if enabled:
                self.decoder.unet.enable_gradient_checkpointing()
            else:
                self.decoder.unet.disable_gradient_checkpointing()
        networks = [self.encoder.florence.language_model] if "encoder" in self.parts else []
        networks += [self.caption_decoder.llm] if "caption_decoder" in self.parts else []
        for network in networks:
            if enabled:
                # Non-reentrant checkpointing carries gradients to parameters even when no input requires grad.
                network.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
                # So the hook transformers adds to make the input embeddings require grad (which only reentrant
                # checkpointing needs) goes: it would also make inference outputs require grad.
                network.disable_input_require_grads()
            else:
                network.activation_checkpointing_disable()

    def compile_networks(self, **options) -> None:
        """`torch.compile` (`options` as it takes them) the encoder, the text encoder, the UNet and the LLM, in place
        (`nn.Module.compile`: state dicts unchanged), now and as parts are built later (`vlv train --compile`). Each
        new input shape compiles again (minutes on a CPU), so it pays back on long runs only."""
        self._compile_options = dict(options)
        for name in self.parts:
            self._compile_part(name)

    def _compile_part(self, name: str) -> None:
        part = self.parts[name]
        network = part.unet if name == "decoder" else part.llm if name == "caption_decoder" else part
        if network not in self._compiled:
            network.compile(**self._compile_options)
            self._compiled.add(network)

    # ----- inference API -------------------------------------------------------------------------------------

    def preprocess(self, images: ImageInput | list) -> torch.Tensor:
        """PIL images, paths or a (B, 3, H, W) tensor in [0, 1] → (B, 3, S, S) on the model's device.

        S is the resolution the model trains at (the teacher's, paper: 384): resize the short side, center-crop —
        the transform the training data goes through — and the encoder resizes that crop to its own input size
        (768 for Florence-2) inside, as in training. So the encoder sees the same pixels at training and inference.
        """
        return to_batch(images, self.config.teacher.image_size).to(self.device)

    @torch.no_grad()
    def embed(self, images: ImageInput | list) -> torch.Tensor:
        """Caption embeddings z: (B, 77, D). Usable as diffusers `prompt_embeds` after `condition`. From the
        stage-1 encoder when one was given (`use_stage1`)."""
        return self.reconstruction_encoder().eval()(self.preprocess(images))

    @torch.no_grad()
    def condition(self, z: torch.Tensor) -> torch.Tensor:
        """z: (B, 77, D) → c: (B, 77, D), the UNet's `encoder_hidden_states`."""
        return self.conditioner(z)

    @torch.no_grad()
    def caption(self, images: ImageInput | list, **options) -> list[str]:
        """One caption per image; generation stops at EOS. options: fields of `GenerateOptions` (max_new_tokens,
        num_beams, repetition_penalty, no_repeat_ngram_size); None or absent = the model's default."""
        # Always this model's own encoder: the one its caption decoder was trained on.
        c = self.condition(self.encoder.eval()(self.preprocess(images)))
        return self.caption_decoder.eval().generate(c, _options(self.config.generation, options))

    @torch.no_grad()
    def reconstruct(self, images: ImageInput | list, *, seed: int | None = 0, **options) -> torch.Tensor:
        """Decode each image's z with the frozen diffusion model → (B, 3, S, S) in [0, 1].

        options: fields of `SampleOptions` (steps, guidance, sampler, timestep_spacing)."""
        self._warn_without_stage1()
        return self.sample(self.condition(self.embed(images)), seed=seed, **options)

    @torch.no_grad()
    def compose(
        self, images: ImageInput | list, *, splits: list[int] | None = None, seed: int | None = 0, **options
    ) -> torch.Tensor:
        """One image from several: splice their z (see `compose_embeddings`) and decode → (1, 3, S, S).

        images: the K images of one composition, or a (P, K, 3, H, W) tensor of P compositions of K images each,
        decoded together in one batch → (P, 3, S, S) (the same splits for all)."""
        self._warn_without_stage1()
        if isinstance(images, torch.Tensor) and images.ndim == 5:
            z = self.embed(images.flatten(0, 1)).unflatten(0, images.shape[:2])  # (P, K, 77, D)
        else:
            z = self.embed(images)  # (K, 77, D)
        return self.sample(self.condition(compose_embeddings(z, splits)), seed=seed, **options)

    def use_stage1(self, directory: str | os.PathLike) -> None:
        """Embed, reconstruct and compose with the encoder of the stage-1 checkpoint at `directory` (trained with
        this model's teacher); captions keep this model's own encoder. For a converted official captioner, whose
        encoder is the stage-2 one (`config.reconstructs` False). Not written by `save_pretrained`."""
        stage1 = VLV.from_pretrained(directory)
        if not stage1.config.reconstructs:
            raise ValueError(f"{directory} holds no stage-1 encoder either (its config says reconstructs: false)")
        if stage1.config.encoder.z_dim != self.config.encoder.z_dim:
            raise ValueError(
                f"{directory}: z width {stage1.config.encoder.z_dim} ≠ this model's {self.config.encoder.z_dim}"
            )
        self.stage1_encoder = stage1.encoder.to(device=self.device, dtype=self._anchor.dtype)

    def _warn_without_stage1(self) -> None:
        """Warn once per model when reconstructing without a stage-1 encoder (see `VLVConfig.reconstructs`)."""
        if (
            not self.config.reconstructs
            and self.reconstruction_encoder() is self.encoder
            and not self._warned_no_stage1
        ):
            self._warned_no_stage1 = True
            warnings.warn(
                "reconstruction needs a stage-1 encoder, and this model's is not one (a converted official "
                "captioner: its Florence language model trained on in stage 2), so its reconstructions are poor; "
                "give one with vlv.load(..., stage1=DIR) or vlv reconstruct --stage1 DIR",
                stacklevel=4,  # the caller of reconstruct / compose (under their no_grad wrapper)
            )

    @torch.no_grad()
    def sample(self, c: torch.Tensor, *, seed: int | None = 0, **options) -> torch.Tensor:
        """Images from conditionings c: (B, 77, D), guided against the teacher's empty prompt → (B, 3, S, S)."""
        generator = torch.Generator(self.device).manual_seed(seed) if seed is not None else None
        uncond = self.conditioner.encode_prompts([""])  # (1, 77, D)
        return self.decoder.sample(c, uncond, _options(self.config.sampling, options), generator)

    # ----- save / load ---------------------------------------------------------------------------------------

    def stored_parts(self) -> list[str]:
        """The sub-parts `save_pretrained` writes: those that trained, and those with no source to rebuild from."""
        stored = set(self._trained)
        for sub in TRAINABLE:
            part = sub.split(".")[0]
            if part in self.parts and (sub not in SOURCED or getattr(self.config, SOURCED[sub]).source is None):
                stored.add(sub)
        return sorted(stored)

    def save_pretrained(self, directory: str | os.PathLike, *, training: dict | None = None) -> None:
        """Write config.json + model.safetensors (+ tokenizer/, teacher/ when it has no other source) to
        `directory`; `training` (recipe, log) is written beside them as training.json (`vlv.checkpoint.save`)."""
        checkpoint.save(self, Path(directory), training=training)

    @classmethod
    def from_pretrained(
        cls,
        directory: str | os.PathLike,
        *,
        florence: str | None = None,
        teacher: str | None = None,
        llm: str | None = None,
        seed: int | None = None,
    ) -> VLV:
        """Load a directory written by `save_pretrained`; strict about every weight.

        florence, teacher, llm: a local directory (or hub id) to use instead of the checkpoint's source of that part
        (parts whose weights the checkpoint stores are not read from it).
        seed: initialise the parts the checkpoint does not store (e.g. a stage-1 checkpoint's caption decoder) from
        this seed instead of the checkpoint's own; stored weights are unaffected.
        """
        d = Path(directory)
        config = with_sources(checkpoint.read_config(d), florence=florence, teacher=teacher, llm=llm)
        if seed is not None:
            config = dataclasses.replace(config, seed=seed)
        with torch.device("meta"):  # nothing is allocated
            probe = cls(config, pretrained=False)
        checkpoint.check_weights(config, d, probe)
        return cls(config, _directory=d)


def _options(defaults, overrides: dict):
    """The default options with the overrides that are not None."""
    return dataclasses.replace(defaults, **{k: v for k, v in overrides.items() if v is not None})
