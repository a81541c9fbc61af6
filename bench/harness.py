"""Measuring: repeated timings with warm-up, interleaved comparisons, peak memory and the machine's matmul rate.

Every comparison in `python -m bench` is *ours* against *baseline* on the same model, data and device, run
interleaved (ours, baseline, ours, …) so that a slow minute on a shared machine hits both; results are ratios.
"""

from __future__ import annotations

import gc
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable

import torch


def synchronize(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def summary(values: list[float]) -> dict:
    """median and spread of repeated measurements."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "values": values}


def interleaved(
    cases: dict[str, Callable[[], object]], *, repeats: int = 5, warmup: int = 1, device: str = "cpu"
) -> dict[str, dict]:
    """Seconds per call of each case, run in turn `repeats` times after `warmup` calls each."""
    for fn in cases.values():
        for _ in range(warmup):
            fn()
    synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            start = time.perf_counter()
            fn()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: summary(values) for name, values in times.items()}


def compare(ours: float, baseline: float, unit: str, *, higher_is_better: bool = True) -> dict:
    """The JSON record of one comparison; ratio = ours / baseline for rates, baseline / ours for costs."""
    ratio = ours / baseline if higher_is_better else baseline / ours
    return {"ours": ours, "baseline": baseline, "unit": unit, "ratio": ratio}


def compare_rates(ours: dict, baseline: dict, unit: str, *, work: tuple[float, float] = (1.0, 1.0)) -> dict:
    """`compare` of two `interleaved` timings as rates (work per call / median seconds; `work` = ours', baseline's),
    plus `paired_ratio`: the ratio of each round. A round times both within seconds, so the median of these follows
    the machine's drifts less than the ratio of the two medians (`ratio`); the JSON keeps both."""
    n_ours, n_baseline = work
    result = compare(n_ours / ours["median"], n_baseline / baseline["median"], unit)
    scale = n_ours / n_baseline
    result["paired_ratio"] = summary([scale * b / o for o, b in zip(ours["values"], baseline["values"], strict=True)])
    return result


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_memory(fn: Callable[[], object], device: str = "cpu", *, interval: float = 0.0005) -> int:
    """Peak memory of one call in bytes, above what was in use before it: max allocated on CUDA; on the CPU the
    process's resident set, sampled every `interval` seconds by a thread while `fn` runs (Linux)."""
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    before, peak, done = _rss_bytes(), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        fn()
    finally:
        done.set()
        sampler.join()
    return max(peak[0], _rss_bytes()) - before


def matmul_flops_per_second(
    device: str = "cpu", dtype: torch.dtype = torch.float32, n: int = 2048, repeats: int = 5
) -> float:
    """The machine's dense-matmul rate in this dtype: the best of `repeats` (n × n) @ (n × n) products."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def machine(device: str) -> dict:
    info = {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": device,
        "platform": platform.platform(),
    }
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
