"""Whether bf16 pays on a device.

bf16 halves the weights' memory everywhere, but it is only faster where the device has bf16 kernels: a GPU of
compute capability 8.0 or newer, a CPU whose oneDNN has them (x86 with AVX-512 or newer, Arm with bf16). On a CPU
without (x86 with AVX2 only) torch falls back to generic kernels: on 2 cores of an AVX2-only AMD EPYC, shapes
captioning ran 5.7× and reconstruction 17× slower in bf16 than in float32 (`python -m bench`, docs/bench.md).
`vlv.load` and the training driver say so when asked for bf16 there.
"""

from __future__ import annotations

import torch


def bf16_is_native(device: str | torch.device) -> bool:
    """Whether `device` runs bf16 matrix products and convolutions on bf16 kernels: on a CPU, oneDNN's own test
    (`torch.ops.mkldnn._is_mkldnn_bf16_supported`); on a GPU, compute capability 8.0 or newer (older ones emulate
    it). Where it cannot be asked (no such device here, another device type), no claim is made (True)."""
    device = torch.device(device)
    if device.type == "cuda":
        return not torch.cuda.is_available() or torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type != "cpu":
        return True
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return True if check is None else bool(check())


def slow_bf16_message(device: str | torch.device) -> str | None:
    """A one-line warning when bf16 on `device` runs without native kernels, else None."""
    if bf16_is_native(device):
        return None
    if torch.device(device).type == "cuda":
        return "bf16 on this GPU is emulated (native bf16 needs compute capability 8.0 or newer); float32 may be faster"
    return (
        "bf16 on this CPU has no native kernels (oneDNN's bf16 needs AVX-512 or newer on x86): it runs several times "
        "slower than float32 here (5.7x for captioning, 17x for reconstruction on an AVX2-only CPU); float32 is the "
        "faster choice on this machine"
    )
