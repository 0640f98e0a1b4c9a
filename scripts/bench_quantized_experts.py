"""Quantized MoE experts at Qwen3.6-35B-A3B's expert shape: the eager loop over the experts hit against
`QuantizedExperts.slots` (what a compiled or captured step runs), for one and four tokens.

Random weights (256 experts, hidden 2048, expert ffn 512, top-8, int4 at group 128), both paths checked
equal bit for bit, then timed alternating; prints the median milliseconds per call.

    PYTHONPATH=. .venv/bin/python scripts/bench_quantized_experts.py --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from daemon.model.quantized import QuantizedExperts

EXPERTS, HIDDEN, INTERMEDIATE, TOP_K, GROUP = 256, 2048, 512, 8, 128


def experts_layer(method: str, generator: torch.Generator) -> QuantizedExperts:
    with torch.device("meta"):
        layer = QuantizedExperts(EXPERTS, HIDDEN, INTERMEDIATE, method, GROUP)
    layer.to_empty(device="cpu")
    layer.load("gate_up_proj", torch.randn(EXPERTS, 2 * INTERMEDIATE, HIDDEN, generator=generator) * 0.02)
    layer.load("down_proj", torch.randn(EXPERTS, HIDDEN, INTERMEDIATE, generator=generator) * 0.02)
    return layer


@torch.inference_mode()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reps", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    for method in ("int8", "int4"):
        layer = experts_layer(method, generator)
        for tokens in (1, 4):
            x = torch.randn(tokens, HIDDEN, generator=generator)
            chosen = torch.stack([torch.randperm(EXPERTS, generator=generator)[:TOP_K] for _ in range(tokens)])
            weights = torch.rand(tokens, TOP_K, generator=generator)
            assert torch.equal(layer(x, chosen, weights), layer.slots(x, chosen, weights))
            samples: dict[str, list[float]] = {"loop": [], "slots": []}
            for _ in range(args.rounds):
                for name, run in (("loop", layer.forward), ("slots", layer.slots)):
                    for _ in range(args.reps):
                        started = time.perf_counter()
                        run(x, chosen, weights)
                        samples[name].append(time.perf_counter() - started)
            medians = {name: round(statistics.median(times) * 1e3, 3) for name, times in samples.items()}
            print(f"{method} {tokens} token(s): loop {medians['loop']} ms, slots {medians['slots']} ms", flush=True)


if __name__ == "__main__":
    main()
