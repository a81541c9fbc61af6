"""Shared fixtures: real tiny instances of the real classes, built offline on the CPU."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest  # noqa: E402
import torch  # noqa: E402

from vlv.model import VLV  # noqa: E402
from vlv.presets import preset  # noqa: E402


@pytest.fixture(scope="session")
def tiny_config():
    return preset("tiny")


@pytest.fixture(scope="session")
def tiny_model(tiny_config):
    """A shared tiny model for read-only tests (tests that train, or count built parts, build their own)."""
    return VLV(tiny_config).eval()


@pytest.fixture
def images():
    """(2, 3, 32, 32) in [0, 1], fixed."""
    return torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def train_steps(loss_fn, params, steps: int, lr: float) -> list[float]:
    """Plain Adam steps on `loss_fn()`; returns the losses."""
    opt = torch.optim.Adam(params, lr=lr)
    losses = []
    for _ in range(steps):
        loss = loss_fn()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def free_z_loss(model, images, loss_of_z, steps: int = 150) -> float:
    """The lowest loss an optimised z reaches on this batch: what a perfect encoder could do through the frozen
    teacher. `loss_of_z(z)` → the loss for caption embeddings z (B, 77, D)."""
    with torch.no_grad():
        z = model.encoder(images).clone()
    z.requires_grad_(True)
    opt = torch.optim.Adam([z], lr=3e-2)
    for _ in range(steps):
        loss = loss_of_z(z)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return loss_of_z(z).item()


def reset_accelerate_state() -> None:
    """accelerate keeps its state per process: reset it after a run that built an `Accelerator`."""
    from accelerate.state import AcceleratorState, PartialState

    AcceleratorState._reset_state(reset_partial_state=True)
    PartialState._reset_state()


@pytest.fixture
def fresh_accelerator_state():
    """For modules whose tests each build their own Accelerator (`pytestmark = usefixtures(...)`)."""
    yield
    reset_accelerate_state()
