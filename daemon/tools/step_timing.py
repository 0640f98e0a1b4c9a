"""Timing of a runner's captured steps: what `device_check` and `scripts/bench_steps.py` report.

Each step is replayed on its own state (decode from a prefilled prompt, verify and draft the same),
timed with a device synchronisation after every replay, and the median kept: on a shared, loaded
machine the median of alternating runs is what stays stable.
"""

from __future__ import annotations

import statistics
import time

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


def alternating_medians(runners: dict[str, StepRunner], name: str, prompt: list[int], rounds: int,
                        reps: int = 3) -> dict[str, float]:
    """Median seconds of step `name` per runner, the runners taking turns `rounds` times."""
    samples: dict[str, list[float]] = {label: [] for label in runners}
    for _ in range(rounds):
        for label, runner in runners.items():
            samples[label] += time_step(runner, name, prompt, reps)
    return {label: statistics.median(times) for label, times in samples.items()}
