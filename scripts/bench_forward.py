#!/usr/bin/env python
"""Prefill and decode speed of our engine vs transformers' eager forward, measured in one run.

Both run greedy decoding from the same random prompt on the same checkpoint, device and dtype;
each is timed after a warm-up. Prints one JSON object; ratios are ours / transformers.
Example: .venv/bin/python scripts/bench_forward.py --model /path/to/checkpoint --prompt-tokens 512
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device):
    _sync(device)
    started = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - started


@torch.inference_mode()
def bench_ours(model, prompt: torch.Tensor, steps: int) -> dict:
    def prefill():
        cache = model.new_cache(prompt.shape[1] + steps + 1)
        logits, _ = model(prompt, cache, 0, last_only=True)
        return cache, logits

    def decode(cache, logits):
        position = prompt.shape[1]
        for _ in range(steps):
            logits, _ = model(logits[:, -1:].argmax(-1), cache, position)
            position += 1

    decode(*prefill())  # warm-up
    (cache, logits), prefill_s = _timed(prefill, model.device)
    _, decode_s = _timed(lambda: decode(cache, logits), model.device)
    return {"prefill_tok_s": prompt.shape[1] / prefill_s, "decode_tok_s": steps / decode_s}


@torch.inference_mode()
def bench_transformers(model, prompt: torch.Tensor, steps: int) -> dict:
    def prefill():
        out = model(input_ids=prompt, use_cache=True, logits_to_keep=1)
        return out.cache, out.logits

    def decode(cache, logits):
        for _ in range(steps):
            out = model(input_ids=logits[:, -1:].argmax(-1), cache=cache, use_cache=True)
            cache, logits = out.cache, out.logits

    decode(*prefill())
    (cache, logits), prefill_s = _timed(prefill, prompt.device)
    _, decode_s = _timed(lambda: decode(cache, logits), prompt.device)
    return {"prefill_tok_s": prompt.shape[1] / prefill_s, "decode_tok_s": steps / decode_s}


def main() -> None:
    from transformers import AutoModelForCausalLM

    from daemon.checkpoint import resolve_checkpoint
    from daemon.default_model import default_checkpoint
    from daemon.loader import default_device, default_dtype, load_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="checkpoint directory or repo id (default: the tiny demo checkpoint)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--decode-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    directory = resolve_checkpoint(args.model) if args.model else default_checkpoint()
    device = torch.device(args.device) if args.device else default_device()
    dtype = default_dtype(device)
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
