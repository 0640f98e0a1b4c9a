"""Where a fixed-shape step's time goes: the kernels one eager decode or verify step launches, their
summed time and the heaviest of them, from torch's profiler.

On CUDA a captured step replays these kernels back to back, so their count and the gap between their
summed time and the step's time (scripts/bench_steps.py --device cuda) say how much of a step is the
small kernels between the weight products — what the README's GPU section reports. On the CPU it lists
aten ops instead (nested ops counted too), a rough guide only.

Usage: PYTHONPATH=. python scripts/profile_step.py [--device cuda] [--shape qwen3.6-27b] [--layers 8]
       [--vocab N] [--top 12]
"""

from __future__ import annotations

import argparse

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from daemon.engine.step_runner import StepRunner
from daemon.tools.real_shapes import SHAPES, random_model, shape_config
from daemon.tools.step_timing import synchronize
from daemon.weights.loader import default_dtype


def profile_step(runner: StepRunner, name: str, prompt: list[int]) -> list:
    """The profiler's per-kernel (CUDA) or per-op (CPU) averages of one step, after one unprofiled run."""
    device = runner.model.device
    runner.prefill(prompt)
    runner.run(name)
    synchronize(device)
    activity = ProfilerActivity.CUDA if device.type == "cuda" else ProfilerActivity.CPU
    with profile(activities=[activity]) as prof:
        runner.run(name)
        synchronize(device)
    kind = DeviceType.CUDA if device.type == "cuda" else DeviceType.CPU
    return [event for event in prof.key_averages() if event.device_type == kind]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--shape", default="qwen3.6-27b", choices=tuple(SHAPES))
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--vocab", type=int, help="default: the shape's (248,320)")
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()
    model = random_model(shape_config(args.shape, args.layers, args.vocab), args.device,
                         default_dtype(torch.device(args.device)))
    time_of = "self_device_time_total" if args.device == "cuda" else "self_cpu_time_total"
    for k, name in ((0, "decode"), (3, "verify")):
        events = profile_step(StepRunner(model, 128, k, capture=False), name, list(range(1, 33)))
        total = sum(getattr(event, time_of) for event in events)
        print(f"{args.shape}, {args.layers} layers, {name}: {sum(event.count for event in events)} kernels, "
              f"{total / 1e3:.2f} ms summed")
        for event in sorted(events, key=lambda event: -getattr(event, time_of))[:args.top]:
            print(f"  {getattr(event, time_of) / 1e3:8.3f} ms {event.count:5d}x  {event.key[:100]}")


if __name__ == "__main__":
    main()
