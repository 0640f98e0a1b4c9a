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
    draft_k = 0 if args.no_mtp or model.mtp is None else args.draft
    messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
        {"role": "user", "content": args.prompt}
    ]
    result = ReplyResult()
    deltas = stream_reply(model, tokenizer, messages, max_tokens=args.max_tokens, enable_thinking=not args.no_think,
                          draft_k=draft_k, sampling=sampling, stop=tuple(args.stop), result=result)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mtpchat", description="Chat with MTP-decoded Qwen models.")
    commands = parser.add_subparsers(dest="command", required=True)
    ask = commands.add_parser("ask", help="stream one reply to stdout")
    ask.add_argument("prompt")
    ask.add_argument("--model", help="checkpoint directory or Hugging Face repo id (default: tiny demo)")
    ask.add_argument("--system", help="system prompt")
    ask.add_argument("--max-tokens", type=int, default=128)
    ask.add_argument("--no-mtp", action="store_true", help="plain decoding (the same engine with k = 0)")
    ask.add_argument("--draft", type=int, default=DEFAULT_DRAFT_K, choices=range(1, 5), metavar="K",
                     help=f"MTP draft tokens per step, 1..4 (default {DEFAULT_DRAFT_K})")
    ask.add_argument("--temperature", type=float, default=0.0, help="0 (default) is greedy")
    ask.add_argument("--top-p", type=float, default=1.0)
    ask.add_argument("--top-k", type=int, default=0, help="0 (default) keeps every token")
    ask.add_argument("--seed", type=int, help="makes sampled replies reproducible")
    ask.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    ask.add_argument("--no-think", action="store_true", help="ask the model to skip its thinking block")
    ask.add_argument("--device", help="cpu, cuda, cuda:1 … (default: cuda if present)")
    ask.add_argument("--json", action="store_true", help="print one JSON object instead of streaming")
    ask.set_defaults(run=_ask)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
