"""`mtpchat` command line.

`mtpchat ask PROMPT` streams one reply to stdout. Until the daemon exists it runs the engine in this
process (importing the `daemon` package only then, so the rest of the client stays torch-free); with
no `--model` it uses the embedded tiny default checkpoint, which needs no GPU and no download.
"""

from __future__ import annotations

import argparse
import json
import sys

DEFAULT_DRAFT_K = 2


def _ask(args: argparse.Namespace) -> int:
    from daemon.checkpoint import CheckpointError
    from daemon.default_model import default_checkpoint
    from daemon.reply import ReplyResult, load_chat_model, stream_reply
    from daemon.sampling import SamplingParams

    try:
        model, tokenizer = load_chat_model(args.model or default_checkpoint(), device=args.device)
        sampling = SamplingParams(args.temperature, args.top_k, args.top_p, args.seed)
    except (CheckpointError, FileNotFoundError, ValueError) as exc:
        print(f"mtpchat: {exc}", file=sys.stderr)
        return 1
    adaptive = args.draft == "auto"
    draft_k = 0 if args.no_mtp or model.mtp is None else 4 if adaptive else int(args.draft)
    messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
        {"role": "user", "content": args.prompt}
    ]
    result = ReplyResult()
    deltas = stream_reply(model, tokenizer, messages, max_tokens=args.max_tokens, enable_thinking=not args.no_think,
                          draft_k=draft_k, adaptive=adaptive, sampling=sampling, stop=tuple(args.stop),
                          result=result)
    try:
        for delta in deltas:
            if not args.json:
                print(delta, end="", flush=True)
    except KeyboardInterrupt:
        result.finish_reason = "cancelled"
    if args.json:
        print(json.dumps(result.as_dict()))
    else:
        print()
    return 0


def _bench(args: argparse.Namespace) -> int:
    import platform

    import torch

    from daemon import bench
    from daemon.default_model import default_checkpoint
    from daemon.loader import DTYPES, default_device, default_dtype
    from daemon.reply import load_chat_model
    from daemon.shapes import random_model, shape_config

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device) if args.device else default_device()
    ks = [int(k) for k in args.draft.split(",")]
    report = {"device": str(device), "cpu": platform.processor() or platform.machine(),
              "threads": torch.get_num_threads(), "torch": torch.__version__, "max_tokens": args.max_tokens,
              "draft_k": ks, "draft_vocab": args.draft_vocab}
    if args.shape:
        # random weights at a real shape; bf16 by default, where a (k+1)-token verify reads weights once
        dtype = DTYPES[args.dtype or "bfloat16"]
        config = shape_config(args.shape, args.layers, args.vocab)
        model = random_model(config, device, dtype)
        prompt = torch.randint(0, config.vocab_size, (args.prompt_tokens,),
                               generator=torch.Generator().manual_seed(0)).tolist()
        rates = [float(r) for r in (args.oracle or "0.6,0.7,0.8,0.9").split(",")]
        report.update(model=args.shape, layers=config.num_hidden_layers, vocab=config.vocab_size)
        report["step_cost"] = bench.step_costs(model, ks, draft_vocab=args.draft_vocab)
        report["oracle"] = bench.bench_oracle(model, prompt, args.max_tokens, ks, rates, draft_vocab=args.draft_vocab)
    else:
        model, tokenizer = load_chat_model(args.model or default_checkpoint(), device=str(device))
        if args.dtype:
            model = model.to(DTYPES[args.dtype])
        prompts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                                 tokenize=True, enable_thinking=False, return_dict=False)
                   for p in bench.BENCH_PROMPTS[:args.prompts]]
        report.update(model=str(args.model or default_checkpoint()))
        report["checkpoint"] = bench.bench_checkpoint(model, prompts, args.max_tokens, ks,
                                                      draft_vocab=args.draft_vocab)
        report["step_cost"] = bench.step_costs(model, ks, draft_vocab=args.draft_vocab)
    report["dtype"] = str(model.dtype).removeprefix("torch.")
    print(json.dumps(report, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mtpchat", description="Chat with MTP-decoded Qwen models.")
    commands = parser.add_subparsers(dest="command", required=True)
    ask = commands.add_parser("ask", help="stream one reply to stdout")
    ask.add_argument("prompt")
    ask.add_argument("--model", help="checkpoint directory or Hugging Face repo id (default: tiny demo)")
    ask.add_argument("--system", help="system prompt")
    ask.add_argument("--max-tokens", type=int, default=128)
    ask.add_argument("--no-mtp", action="store_true", help="plain decoding (the same engine with k = 0)")
    ask.add_argument("--draft", default=str(DEFAULT_DRAFT_K), choices=["1", "2", "3", "4", "auto"], metavar="K",
                     help=f"MTP draft tokens per step, 1..4, or auto: adaptive up to 4 (default {DEFAULT_DRAFT_K})")
    ask.add_argument("--temperature", type=float, default=0.0, help="0 (default) is greedy")
    ask.add_argument("--top-p", type=float, default=1.0)
    ask.add_argument("--top-k", type=int, default=0, help="0 (default) keeps every token")
    ask.add_argument("--seed", type=int, help="makes sampled replies reproducible")
    ask.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    ask.add_argument("--no-think", action="store_true", help="ask the model to skip its thinking block")
    ask.add_argument("--device", help="cpu, cuda, cuda:1 … (default: cuda if present)")
    ask.add_argument("--json", action="store_true", help="print one JSON object instead of streaming")
    ask.set_defaults(run=_ask)
    bench = commands.add_parser("bench", help="plain vs MTP decoding side by side, JSON out")
    bench.add_argument("--model", help="checkpoint directory or repo id (default: the tiny demo)")
    bench.add_argument("--shape", choices=["qwen3.6-27b", "qwen3.6-35b-a3b"],
                       help="random weights at this real shape, with an oracle drafter, instead of a checkpoint")
    bench.add_argument("--layers", type=int, help="with --shape: fewer layers (a multiple of 4)")
    bench.add_argument("--vocab", type=int, help="with --shape: a smaller vocabulary")
    bench.add_argument("--oracle", help="with --shape: per-token draft accuracies (default 0.6,0.7,0.8,0.9)")
    bench.add_argument("--prompt-tokens", type=int, default=128, help="with --shape: prompt length")
    bench.add_argument("--draft", default="1,2,3,4", help="draft lengths to measure, e.g. 1,2,3,4")
    bench.add_argument("--draft-vocab", type=int, help="draft among the first N token ids only")
    bench.add_argument("--prompts", type=int, default=4, help="how many built-in prompts (1..4)")
    bench.add_argument("--max-tokens", type=int, default=64)
    bench.add_argument("--device")
    bench.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
    bench.add_argument("--threads", type=int, help="torch CPU threads")
    bench.set_defaults(run=_bench)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
