"""Eager vs torch.compile'd fixed-shape steps: compile time, and step medians of alternating runs.

On the CPU in float32; with --device cuda (--shape only) in bfloat16, both runners' steps captured in
CUDA graphs, so what compiling adds there is Inductor's fusion (fewer, larger kernels), not fewer launches.

Usage: PYTHONPATH=. python scripts/bench_steps.py [--shape qwen3.6-27b --layers 4 --vocab 32768 | --demo]
       [--quantize none,int4] [--k 3] [--device cuda]
Without --shape or --demo, the tiny checkpoints (built in a temporary directory). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch

from daemon.engine.step_runner import StepRunner
from daemon.tools.real_shapes import random_model, shape_config
from daemon.tools.step_timing import alternating_medians, time_step
from daemon.weights.loader import default_dtype, load_model
from mtpchat.machine import machine


def _models(args) -> dict[str, torch.nn.Module]:
    if args.demo:
        from daemon.weights.demo_model import demo_checkpoint
        from mtpchat.config import Quantization

        return {f"demo-{method}": load_model(demo_checkpoint(), device="cpu", dtype=torch.float32,
                                             quantization=Quantization(method, 32))
                for method in args.quantize.split(",")}
    if args.shape:
        config = shape_config(args.shape, args.layers, args.vocab)
        return {args.shape: random_model(config, args.device, default_dtype(torch.device(args.device)))}
    from daemon.tiny.qwen_checkpoints import build_all

    paths = build_all(tempfile.mkdtemp())
    return {name: load_model(paths[name], device="cpu", dtype=torch.float32)
            for name in ("qwen3.6-dense-tiny", "qwen3.6-moe-tiny")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shape")
    parser.add_argument("--demo", action="store_true", help="the demo model (its MTP head) instead")
    parser.add_argument("--quantize", default="none,int4", help="--demo: the precisions to measure")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=32768)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = parser.parse_args()
    if args.device == "cuda" and not args.shape:
        parser.error("--device cuda takes --shape (random weights made on the GPU)")
    torch.set_num_threads(args.threads)
    # the machine, and the capability inductor's CPU code is generated for (step_runner.compile_options)
    report = {"machine": machine() | {"cpu_capability": torch.backends.cpu.get_cpu_capability()},
              "torch": torch.__version__}
    if args.device == "cuda":
        report["machine"]["gpu"] = torch.cuda.get_device_name()
    for name, model in _models(args).items():
        prompt = list(range(1, 33))
        eager = StepRunner(model, 128, args.k)
        started = time.perf_counter()
        compiled = StepRunner(model, 128, args.k, compile=True)
        entry = {"compile_s": time.perf_counter() - started}
        for step in eager.steps:  # decode, verify, and the chained draft step where k > 1
            medians = alternating_medians({label: lambda runner=runner: time_step(runner, step, prompt, 3)
                                           for label, runner in (("eager", eager), ("compiled", compiled))},
                                          args.rounds)
            entry[step] = {label: round(seconds * 1e3, 3) for label, seconds in medians.items()} | {
                "speedup": round(medians["eager"] / medians["compiled"], 2)}
        report[name] = entry
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
