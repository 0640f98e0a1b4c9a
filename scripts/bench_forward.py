#!/usr/bin/env python
"""Prefill and decode speed of our engine vs transformers' eager forward, measured in one run.

Both run greedy decoding from the same random prompt on the same checkpoint, device and dtype;
each is timed after a warm-up. Prints one JSON object; ratios are ours / transformers.
Example: .venv/bin/python scripts/bench_forward.py --model /path/to/checkpoint --prompt-tokens 512
"""

from __future__ import annotations

import argparse
import json

import torch

from daemon.tools.bench import timed


@torch.inference_mode()
def measure(prefill, step, prompt_tokens: int, steps: int, device: torch.device) -> dict:
    """prefill() -> state, step(state) -> state; timed after one untimed warm-up pass of both."""
    def decode(state):
        for _ in range(steps):
            state = step(state)

    decode(prefill())
    state, prefill_s = timed(prefill, device)
    _, decode_s = timed(lambda: decode(state), device)
    return {"prefill_tok_s": prompt_tokens / prefill_s, "decode_tok_s": steps / decode_s}


def bench_ours(model, prompt: torch.Tensor, steps: int) -> dict:
    def prefill():  # state: (cache, logits, next position)
        cache = model.new_cache(prompt.shape[1] + steps + 1)
        return cache, model(prompt, cache, 0, last_only=True)[0], prompt.shape[1]

    def step(state):
        cache, logits, position = state
        return cache, model(logits[:, -1:].argmax(-1), cache, position)[0], position + 1

    return measure(prefill, step, prompt.shape[1], steps, model.device)


def bench_transformers(model, prompt: torch.Tensor, steps: int) -> dict:
    def prefill():  # state: (cache, logits)
        out = model(input_ids=prompt, use_cache=True, logits_to_keep=1)
        return out.cache, out.logits

    def step(state):
        out = model(input_ids=state[1][:, -1:].argmax(-1), cache=state[0], use_cache=True)
        return out.cache, out.logits

    return measure(prefill, step, prompt.shape[1], steps, prompt.device)


def main() -> None:
    from transformers import AutoModelForCausalLM

    from daemon.weights.builtin_models import tiny_checkpoint
    from daemon.weights.checkpoint import resolve_checkpoint
    from daemon.weights.loader import DTYPES, default_device, default_dtype, load_model
    from mtpchat.config import DTYPE_NAMES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="checkpoint directory or repo id (default: the tiny demo checkpoint)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--decode-tokens", type=int, default=64)
    parser.add_argument("--dtype", choices=DTYPE_NAMES, help="default: bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    directory = resolve_checkpoint(args.model) if args.model else tiny_checkpoint()
    device = torch.device(args.device) if args.device else default_device()
    dtype = DTYPES[args.dtype] if args.dtype else default_dtype(device)
    ours = load_model(directory, device=device, dtype=dtype)
    reference = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype).to(device).eval()
    prompt = torch.randint(0, ours.config.vocab_size, (1, args.prompt_tokens),
                           generator=torch.Generator().manual_seed(0)).to(device)
    results = {
        "checkpoint": str(directory),
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "prompt_tokens": args.prompt_tokens,
        "decode_tokens": args.decode_tokens,
        "transformers_attention": reference.config._attn_implementation,
        "ours": bench_ours(ours, prompt, args.decode_tokens),
        "transformers": bench_transformers(reference, prompt, args.decode_tokens),
    }
    results["ratio"] = {k: results["ours"][k] / results["transformers"][k] for k in results["ours"]}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
