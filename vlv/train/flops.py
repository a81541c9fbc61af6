"""Training compute, counted: the FLOPs of one optimizer step of a composition (`forward(batch) → loss`).

Counted by `torch.utils.flop_counter` over the forward and the backward pass: matrix products, convolutions and
attention (the ops that dominate), each multiply-add as 2 FLOPs. Attention counts the same whichever kernel runs it:
torch's counter knows the GPU's fused kernels, and `ATTENTION_ON_CPU` adds the CPU's, whose calls it would otherwise
count as zero. Elementwise ops, normalisations and the optimizer's update are not counted. Frozen parts count as
autograd runs them: their forward, and in the backward only the gradient *through* them (no weight gradient), which
is what a stage that trains upstream of them pays.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from vlv.train.loop import rng_state, set_rng_state


def _attention(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _attention_backward(grad_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_shape, query_shape, key_shape, value_shape)


# The CPU's fused attention (what `scaled_dot_product_attention` runs there), counted as the GPU's fused kernels are.
_aten = torch.ops.aten
ATTENTION_ON_CPU = {
    getattr(_aten, name): formula
    for name, formula in (
        ("_scaled_dot_product_flash_attention_for_cpu", _attention),
        ("_scaled_dot_product_flash_attention_for_cpu_backward", _attention_backward),
    )
    if hasattr(_aten, name)
}


def step_flops(composition: nn.Module, batch: dict) -> int:
    """FLOPs of one training step (forward + backward) of `composition` on `batch`.

    Leaves no trace: gradients are cleared and the global RNG state (which the step's noise draws from) restored.
    """
    state = rng_state()
    try:
        with FlopCounterMode(display=False, custom_mapping=ATTENTION_ON_CPU) as counter:
            loss = composition(batch)
            if loss.requires_grad:
                loss.backward()
    finally:
        composition.zero_grad(set_to_none=True)
        set_rng_state(state)
    return int(counter.get_total_flops())


def training_flops(schedule: list[tuple[int, int]]) -> int:
    """Total FLOPs of a run given as (steps, FLOPs per step) segments."""
    return sum(steps * per_step for steps, per_step in schedule)
