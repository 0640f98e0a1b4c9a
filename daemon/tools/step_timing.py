"""Timing of a runner's captured steps: what `device_check` and `scripts/bench_steps.py` report.

Each step is replayed on its own state (decode from a prefilled prompt, verify and draft the same),
timed with a device synchronisation after every replay, and the median kept: on a shared, loaded
machine the median of alternating runs is what stays stable.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from daemon.engine.step_runner import StepRunner


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_step(runner: StepRunner, name: str, prompt: list[int], reps: int) -> list[float]:
    """Seconds per replay of step `name`, `reps` times, each from the state right after `prompt`
    (so positions never run past the capacity)."""
    device = runner.model.device
    times = []
    for _ in range(reps):
        runner.prefill(prompt)
        synchronize(device)
        started = time.perf_counter()
        runner.run(name)
        synchronize(device)
        times.append(time.perf_counter() - started)
    return times


def alternating_medians(samplers: dict[str, Callable[[], list[float]]], rounds: int) -> dict[str, float]:
    """Median seconds per sampler (each call returns one or more timings), the samplers taking turns
    `rounds` times, so that drift — clock speed, what the caches hold — falls on all of them alike. Timed
    one after the other, 5 each, the demo's int4 decode step (2 threads, Sapphire Rapids) measured 9.2-9.3
    ms and a 4-token verify 1.09-1.19x it; in 20 alternating rounds 6.3-6.6 ms and 1.50-1.51x."""
    samples: dict[str, list[float]] = {label: [] for label in samplers}
    for _ in range(rounds):
        for label, sample in samplers.items():
            samples[label] += sample()
    return {label: statistics.median(times) for label, times in samples.items()}
