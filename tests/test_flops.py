"""Counted training compute (`vlv.train.flops`): exact on layers whose FLOPs are known by hand."""

import torch
from torch import nn

from vlv.train.flops import step_flops, training_flops


class Loss(nn.Module):
    """forward(batch) → loss, like the compositions."""

    def __init__(self, *layers: nn.Module):
        super().__init__()
        self.net = nn.Sequential(*layers)

    def forward(self, batch: dict) -> torch.Tensor:
        return self.net(batch["x"]).square().mean()


def test_a_trained_linear_costs_forward_and_the_gradients_autograd_needs():
    b, i, o = 8, 16, 32
    matmul = 2 * b * i * o
    assert step_flops(Loss(nn.Linear(i, o)), {"x": torch.randn(b, i)}) == 2 * matmul  # forward, weight gradient
    x = torch.randn(b, i, requires_grad=True)  # a trained part upstream needs the input's gradient too
    assert step_flops(Loss(nn.Linear(i, o)), {"x": x}) == 3 * matmul


def test_a_frozen_layer_costs_its_forward_and_the_gradient_through_it_only():
    b, d = 4, 8
    frozen, trained = nn.Linear(d, d), nn.Linear(d, d)
    frozen.requires_grad_(False)
    # trained first, frozen after it: the gradient flows through the frozen layer to the trained one
    flops = step_flops(Loss(trained, frozen), {"x": torch.randn(b, d)})
    per_matmul = 2 * b * d * d
    # trained: forward + weight grad (its input needs no grad); frozen: forward + input grad
    assert flops == 2 * per_matmul + 2 * per_matmul
    # nothing trains: the forward only
    trained.requires_grad_(False)
    assert step_flops(Loss(trained, frozen), {"x": torch.randn(b, d)}) == 2 * per_matmul


def test_counting_leaves_no_gradient_and_no_rng_trace():
    module = Loss(nn.Linear(4, 4))
    torch.manual_seed(0)
    step_flops(module, {"x": torch.randn(2, 4)})
    after = torch.rand(3)
    torch.manual_seed(0)
    torch.randn(2, 4)
    assert torch.equal(after, torch.rand(3))
    assert all(p.grad is None for p in module.parameters())
    assert training_flops([(10, 5), (3, 7)]) == 71


class Attention(nn.Module):
    def __init__(self, fused: bool):
        super().__init__()
        self.fused = fused

    def forward(self, batch: dict) -> torch.Tensor:
        q, k, v = batch["q"], batch["k"], batch["v"]
        if self.fused:
            out = nn.functional.scaled_dot_product_attention(q, k, v)
        else:
            out = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1) @ v
        return out.square().mean()


def test_attention_on_the_cpu_counts_as_the_gpus_fused_kernels_do():
    # torch's counter knows only the GPU's fused attention: the CPU's would count as 0 FLOPs
    B, H, L, S, D = 2, 4, 77, 50, 32
    batch = {name: torch.randn(B, H, n, D, requires_grad=True) for name, n in (("q", L), ("k", S), ("v", S))}
    forward = 2 * (2 * B * H * L * S * D)  # scores and the weighted sum
    # the fused backward recomputes the scores: 5 products of the forward's size in all (torch's formula for the
    # GPU's kernels), against 4 for the unfused products
    assert step_flops(Attention(fused=True), batch) == forward + 5 * forward // 2
    assert step_flops(Attention(fused=False), batch) == forward + 2 * forward
