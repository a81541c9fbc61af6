"""Whether bf16 pays on a device.

bf16 halves the weights' memory everywhere, but it is only faster where the device has bf16 kernels: a GPU with bf16
support, a CPU whose oneDNN has them (x86 with AVX-512 or newer, Arm with bf16). On a CPU without (x86 with AVX2
only) torch falls back to generic kernels: on 2 cores of an AVX2-only AMD EPYC, shapes captioning ran 5.7× and
reconstruction 17× slower in bf16 than in float32 (`python -m bench`, docs/bench.md). `vlv.load` and the training
driver say so when asked for bf16 there.
"""

from __future__ import annotations

import torch


def bf16_is_native(device: str | torch.device) -> bool:
    """Whether `device` runs bf16 matrix products and convolutions on bf16 kernels. On a CPU that is oneDNN's own
    test (`torch.ops.mkldnn._is_mkldnn_bf16_supported`); where it cannot be asked, no claim is made (True)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return True
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return True if check is None else bool(check())


def slow_bf16_message(device: str | torch.device) -> str | None:
    """A one-line warning when bf16 on `device` falls back to generic kernels, else None."""
    if bf16_is_native(device):
        return None
    return (
        f"bf16 on this {torch.device(device).type} has no native kernels (oneDNN's bf16 needs AVX-512 or newer on "
        "x86): it runs several times slower than float32 here (5.7x for captioning, 17x for reconstruction on an "
        "AVX2-only CPU); float32 is the faster choice on this machine"
    )
