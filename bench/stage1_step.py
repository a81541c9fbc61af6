"""Case `stage1-step`: one stage-1 optimizer step, ours against the official recipe, on the `small` preset (the
paper's block structure at small width, 128-px images, a VAE), same model, same images, interleaved.

- official: fp32, the VAE encodes every batch inside the step, the UNet with gradient checkpointing on.
- ours: the latents' VAE moments from the cache (`vlv cache-latents`), per-image seeds, no checkpointing, SDPA
  attention (diffusers' and transformers' default), bf16 autocast on a GPU (what `vlv train autoencoder --latents
  CACHE [--mixed-precision bf16]` runs). Frozen weights get no gradients in both.

Also: FLOPs of the step (counted), for the roofline case, and the peak memory of each. With `compile=True`
(`python -m bench --case stage1-step --compile`), ours again with the networks compiled (`VLV.compile_networks`,
what `vlv train --compile` runs) against ours in eager mode, rounds alternating on the one model
(`torch.compiler.set_stance`), and the seconds the first compiled step took.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time

import torch

from bench.harness import compare_rates, interleaved, peak_memory, synchronize
from vlv.model import VLV
from vlv.presets import STAGE1_PARTS, preset
from vlv.shapes.world import render_batch, sample_scenes
from vlv.train.flops import step_flops
from vlv.train.loop import OptimConfig, Trainer


def _setup(device: str, batch_size: int):
    model = VLV(preset("small")).to(device)
    model.set_trainable(STAGE1_PARTS)
    size = model.config.teacher.image_size
    images = torch.from_numpy(render_batch(sample_scenes(batch_size, seed=0), size)).to(device)
    with torch.no_grad():
        moments = model.decoder.encode_moments(images)
    seeds = torch.arange(batch_size, dtype=torch.int64)
    return model, images, moments, seeds


def _steps(device: str, batch_size: int) -> dict:
    """The two steps on one model (and one optimizer): name → a callable running one optimizer step."""
    model, images, moments, seeds = _setup(device, batch_size)
    composition = model.autoencoder()
    trainer = Trainer(composition, OptimConfig(steps=10**6, lr=1e-5, warmup_steps=0))
    ours_batch = {"images": images, "moments": moments, "seeds": seeds}
    official_batch = {"images": images}  # the VAE runs inside the step
    unet = model.decoder.unet

    # bf16 autocast on a GPU (what `vlv train --mixed-precision bf16` runs); on the CPU it does not pay here.
    cuda = torch.device(device).type == "cuda"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()

    def ours() -> None:
        unet.disable_gradient_checkpointing()
        with autocast:
            trainer.train_step(ours_batch)

    def official() -> None:
        unet.enable_gradient_checkpointing()
        try:
            trainer.train_step(official_batch)
        finally:
            unet.disable_gradient_checkpointing()

    return {"ours": ours, "official": official, "composition": composition, "batch": ours_batch, "model": model}


def fresh_peak(which: str, device: str, batch_size: int) -> int:
    """Peak memory of `which` step in a process of its own (a warm allocator would hide what a step needs): two
    steps after the setup, the first of which allocates the optimizer's state, as training does."""
    code = (
        "import sys; from bench.stage1_step import _child_peak; "
        f"print(_child_peak({which!r}, {device!r}, {batch_size}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


def _child_peak(which: str, device: str, batch_size: int) -> int:
    step = _steps(device, batch_size)[which]
    return peak_memory(lambda: (step(), step()), device)


def compiled_against_eager(steps: dict, device: str, *, batch_size: int, repeats: int, backend: str = "inductor"):
    """Ours with its networks compiled against ours in eager mode, on the same model: the first compiled step's
    seconds (compilation included), then rounds alternating the two."""
    steps["model"].compile_networks(backend=backend)
    start = time.perf_counter()
    steps["ours"]()
    synchronize(device)
    first = time.perf_counter() - start

    def eager() -> None:
        with torch.compiler.set_stance("force_eager"):
            steps["ours"]()

    times = interleaved({"compiled": steps["ours"], "eager": eager}, repeats=repeats, device=device)
    result = compare_rates(times["compiled"], times["eager"], "samples/s", work=(batch_size, batch_size))
    return {**result, "backend": backend, "first_step_seconds": first}


def run(device: str = "cpu", *, batch_size: int = 8, repeats: int = 5, compile: bool = False) -> dict:
    steps = _steps(device, batch_size)
    times = interleaved({"ours": steps["ours"], "official": steps["official"]}, repeats=repeats, device=device)
    memory = {
        "ours_peak_bytes": fresh_peak("ours", device, batch_size),
        "baseline_peak_bytes": fresh_peak("official", device, batch_size),
        "how": "one process per recipe: peak over two steps above the memory in use after setup "
        + ("(max allocated)" if torch.device(device).type == "cuda" else "(resident set, sampled)"),
    }
    flops = step_flops(steps["composition"], steps["batch"])
    compiled = compiled_against_eager(steps, device, batch_size=batch_size, repeats=repeats) if compile else None
    return {
        **({"stage1_step_compiled": compiled} if compiled else {}),
        "stage1_step": compare_rates(times["ours"], times["official"], "samples/s", work=(batch_size, batch_size)),
        "stage1_step_times": times,
        "memory": memory,
        "stage1_step_flops": flops,
        "stage1_step_seconds": times["ours"]["median"],
    }
