"""`mtpchat` command line.

`mtpchat` alone opens the TUI (mtpchat/tui; `--ssh user@host` runs it against a remote daemon);
`mtpchat ask PROMPT` streams one reply through the daemon (starting it in the background when none
answers); `mtpchat daemon start|stop|status`, `mtpchat models [list|load|unload]` manage it;
`mtpchat bench` measures plain vs MTP decoding in this process. Only `bench` imports torch (the
`daemon` package), and only when it runs, so the client side stays torch-free.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time

from mtpchat.client import DaemonClient, DaemonUnavailable, daemon_answers, start_daemon
from mtpchat.config import BUILTIN, DTYPE_NAMES, format_size, load_config
from mtpchat.paths import daemon_log, pid_file
from mtpchat.status_text import placement_line, state_cache_line


def _progress(text: str) -> None:
    print(text, end="", file=sys.stderr, flush=True)


def _ensure_daemon(args) -> None:
    start_daemon(args.endpoint, progress=_progress if sys.stderr.isatty() else lambda text: None)


def _ask(args: argparse.Namespace) -> int:
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    fields = {"model": args.model, "messages": [{"role": "user", "content": prompt}], "system": args.system,
              "max_tokens": args.max_tokens, "temperature": args.temperature, "top_p": args.top_p,
              "top_k": args.top_k, "seed": args.seed, "thinking": not args.no_think, "stop": args.stop}
    if args.no_mtp:
        fields["draft"] = 0
    elif args.draft is not None:
        fields["draft"] = args.draft if args.draft == "auto" else int(args.draft)
    try:
        _ensure_daemon(args)
        with DaemonClient(args.endpoint) as client:
            final = None
            for message in client.generate(**fields):
                if message["type"] == "chunk" and not args.json:
                    print(message["text"], end="", flush=True)
                elif message["type"] in ("done", "error", "cancelled"):
                    final = message
    except DaemonUnavailable as exc:
        print(f"mtpchat: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\n[cancelled]", file=sys.stderr)
        return 130
    if final["type"] == "error":
        print(f"mtpchat: {final['message']} ({final['code']})", file=sys.stderr)
        return 1
    if args.json:
        keys = ("text", "token_ids", "finish_reason", "stats")
        print(json.dumps({key: final.get(key) for key in keys}))
    else:
        print()
    return 0


def _daemon(args: argparse.Namespace) -> int:
    if args.action == "start":
        try:
            _ensure_daemon(args)
        except DaemonUnavailable as exc:
            print(f"mtpchat: {exc}", file=sys.stderr)
            return 1
        return _daemon_status(args) if args.json else 0
    if args.action == "stop":
        return _daemon_stop()
    return _daemon_status(args)


def _daemon_status(args: argparse.Namespace) -> int:
    if not daemon_answers(args.endpoint):
        print(json.dumps({"running": False}) if args.json else "mtpchatd is not running")
        return 3
    with DaemonClient(args.endpoint) as client:
        status = client.request("status")
    status.pop("v", None), status.pop("id", None), status.pop("type", None)
    if args.json:
        print(json.dumps({"running": True, **status}))
        return 0
    print(f"mtpchatd {status['version']} pid {status['pid']} up {status['uptime_s']:.0f} s on {status['endpoint']}")
    for model in status["models"]:
        print(f"  {_model_line(model)}")
        for part in model.get("placement", []):
            print(f"      {placement_line(part)}")
    for device in status["devices"]:
        used, free, total = (format_size(device[k]) for k in ("memory_used", "memory_free", "memory_total"))
        print(f"  {device['name']:<8} {used} used, {free} free of {total}")
    print(f"  conversation state cache: {state_cache_line(status['state_cache'])}")
    print(f"  active streams: {status['active_streams']}")
    return 0


def _daemon_stop(timeout_s: float = 30.0) -> int:
    try:
        pid = int(pid_file().read_text().strip())
        os.kill(pid, signal.SIGTERM)
    except (FileNotFoundError, ValueError, ProcessLookupError):
        print("mtpchatd is not running")
        return 0
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return 0
        time.sleep(0.05)
    print(f"mtpchat: mtpchatd (pid {pid}) did not stop within {timeout_s:g} s; see {daemon_log()}", file=sys.stderr)
    return 1


def _models(args: argparse.Namespace) -> int:
    try:
        _ensure_daemon(args)
        with DaemonClient(args.endpoint) as client:
            if args.action == "list":
                answer = client.request("models")
            else:
                answer = client.request(args.action, model=args.name)
    except DaemonUnavailable as exc:
        print(f"mtpchat: {exc}", file=sys.stderr)
        return 1
    if answer["type"] == "error":
        print(f"mtpchat: {answer['message']}", file=sys.stderr)
        return 1
    if args.action == "list":
        for model in answer["models"]:
            print(_model_line(model))
    return 0


def _model_line(model: dict) -> str:
    state = f"loading {model['progress']:.0%}" if model["state"] == "loading" else model["state"]
    extra = f" — {model['error']}" if model["error"] else ""
    return f"{'*' if model['default'] else ' '} {model['name']:<16} {state:<12} {model['path']}{extra}"


def _local_checkpoint(model: str | None):
    """What an in-process command (bench, train-head) loads for `--model`: a configured model name (the
    built-in `demo` and `tiny` included) means its path, anything else is a directory or repo id."""
    from daemon.default_model import builtin_checkpoint

    config = load_config()
    settings = config.models.get(model or config.default)
    path = settings.path if settings else model
    return builtin_checkpoint(path, progress=_progress) if path.startswith(BUILTIN) else path


def _bench(args: argparse.Namespace) -> int:
    import platform

    import torch

    from daemon import bench
    from daemon.loader import DTYPES, default_device
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
        checkpoint = _local_checkpoint(args.model)
        model, tokenizer = load_chat_model(checkpoint, device=str(device))
        if args.dtype:
            model = model.to(DTYPES[args.dtype])
        prompts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                                 tokenize=True, enable_thinking=False, return_dict=False)
                   for p in args.prompt or bench.BENCH_PROMPTS[:args.prompts]]
        report.update(model=str(checkpoint), prompts=len(prompts))
        if args.conversation:
            from daemon.bench_conversation import bench_conversation

            turns = [int(t) for t in args.conversation.split(",")]
            report["conversation"] = bench_conversation(model, tokenizer, turns, args.max_tokens, max(ks))
            print(json.dumps(report, indent=2))
            return 0
        report["checkpoint"] = bench.bench_checkpoint(model, prompts, args.max_tokens, ks)
        if args.draft_vocab:
            report["checkpoint_draft_vocab"] = bench.bench_checkpoint(model, prompts, args.max_tokens, ks,
                                                                      draft_vocab=args.draft_vocab)
        report["step_cost"] = bench.step_costs(model, ks, draft_vocab=args.draft_vocab)
        if args.daemon:
            name = str(args.model) if args.model else None
            _ensure_daemon(args)
            with DaemonClient(args.endpoint) as client:
                model_name = name or client.request("models")["models"][0]["name"]
                report["daemon_overhead"] = bench.bench_daemon_overhead(model, tokenizer, client, model_name,
                                                                        args.max_tokens, max(ks))
    report["dtype"] = str(model.dtype).removeprefix("torch.")
    print(json.dumps(report, indent=2))
    return 0


def _train_head(args: argparse.Namespace) -> int:
    import dataclasses
    import shlex

    import torch

    from daemon.checkpoint import resolve_checkpoint
    from daemon.demo_model import DemoModelError
    from daemon.train_head import TrainSettings, progress_line, train_head, trunk_fingerprint
    from mtpchat.paths import cache_dir

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainSettings)}
        settings = TrainSettings(**{name: value for name, value in given.items() if value is not None})
        checkpoint = resolve_checkpoint(_local_checkpoint(args.model))
        work = args.work or cache_dir() / "train-head" / trunk_fingerprint(checkpoint)
        command = shlex.join(["mtpchat", "train-head", *sys.argv[2:]]) if sys.argv[1:2] == ["train-head"] else ""
        record = train_head(checkpoint, args.out or checkpoint, work, settings, show=progress_line, command=command)
    except (DemoModelError, ValueError, OSError) as exc:
        print(f"mtpchat: {exc}", file=sys.stderr)
        return 1
    if sys.stderr.isatty():
        print(file=sys.stderr)
    print(json.dumps(record["history"][-1] | {"head": str(args.out or checkpoint)}))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mtpchat", description="Chat with MTP-decoded Qwen models.")
    commands = parser.add_subparsers(dest="command")
    parser.add_argument("--endpoint", help="daemon endpoint (default: the ipc socket in the runtime dir)")
    parser.add_argument("--ssh", metavar="USER@HOST", help="TUI only: use the daemon on HOST through an ssh "
                                                         "tunnel of its socket (starting it there if needed)")
    parser.add_argument("--remote-mtpchat", default="mtpchat", metavar="PATH",
                        help="with --ssh: the mtpchat command on the remote host (default: mtpchat)")
    parser.add_argument("--max-tokens", type=int, default=2048, dest="tui_max_tokens",
                        help="TUI only: most tokens per reply (default 2048)")
    ask = commands.add_parser("ask", help="stream one reply to stdout")
    ask.add_argument("prompt", help="the prompt, or - to read it from stdin")
    ask.add_argument("--model", help="configured model name, checkpoint directory or Hugging Face repo id "
                                     "(default: the configured default)")
    ask.add_argument("--system", help="system prompt")
    ask.add_argument("--max-tokens", type=int, default=128)
    ask.add_argument("--no-mtp", action="store_true", help="plain decoding (the same engine with k = 0)")
    ask.add_argument("--draft", choices=["1", "2", "3", "4", "auto"], metavar="K",
                     help="MTP draft tokens per step, 1..4, or auto (adaptive); default: the model's setting")
    ask.add_argument("--temperature", type=float, default=0.0, help="0 (default) is greedy")
    ask.add_argument("--top-p", type=float, default=1.0)
    ask.add_argument("--top-k", type=int, default=0, help="0 (default) keeps every token")
    ask.add_argument("--seed", type=int, help="makes sampled replies reproducible")
    ask.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    ask.add_argument("--no-think", action="store_true", help="ask the model to skip its thinking block")
    ask.add_argument("--json", action="store_true", help="print one JSON object instead of streaming")
    ask.set_defaults(run=_ask)
    daemon = commands.add_parser("daemon", help="start, stop or inspect mtpchatd")
    daemon.add_argument("action", choices=["start", "stop", "status"])
    daemon.add_argument("--json", action="store_true")
    daemon.set_defaults(run=_daemon)
    models = commands.add_parser("models", help="list, load or unload models in the daemon")
    models.add_argument("action", nargs="?", default="list", choices=["list", "load", "unload"])
    models.add_argument("name", nargs="?")
    models.set_defaults(run=_models)
    bench = commands.add_parser("bench", help="plain vs MTP decoding side by side, JSON out")
    bench.add_argument("--model", help="configured model name, checkpoint directory or repo id (default: the default model)")
    bench.add_argument("--shape", choices=["qwen3.6-27b", "qwen3.6-35b-a3b"],
                       help="random weights at this real shape, with an oracle drafter, instead of a checkpoint")
    bench.add_argument("--layers", type=int, help="with --shape: fewer layers (a multiple of 4)")
    bench.add_argument("--vocab", type=int, help="with --shape: a smaller vocabulary")
    bench.add_argument("--oracle", help="with --shape: per-token draft accuracies (default 0.6,0.7,0.8,0.9)")
    bench.add_argument("--prompt-tokens", type=int, default=128, help="with --shape: prompt length")
    bench.add_argument("--draft", default="1,2,3,4", help="draft lengths to measure, e.g. 1,2,3,4")
    bench.add_argument("--draft-vocab", type=int, help="draft among the first N token ids only (with a checkpoint: "
                                                       "measured beside the full vocabulary)")
    bench.add_argument("--prompts", type=int, default=4, help="how many built-in prompts (1..4)")
    bench.add_argument("--prompt", action="append", help="your own prompt instead of the built-in ones (repeatable)")
    bench.add_argument("--max-tokens", type=int, default=64)
    bench.add_argument("--device")
    bench.add_argument("--dtype", choices=DTYPE_NAMES)
    bench.add_argument("--threads", type=int, help="torch CPU threads")
    bench.add_argument("--conversation", metavar="TURNS",
                       help="instead: time to first token at these turns (e.g. 1,5,10,20) of a growing "
                            "conversation, conversation state cache off vs on")
    bench.add_argument("--daemon", action="store_true",
                       help="also compare the same request through the daemon (starting it if needed)")
    bench.set_defaults(run=_bench)
    train = commands.add_parser("train-head", help="train an MTP head for a checkpoint without one (self-distillation)")
    train.add_argument("--model", help="configured model name, checkpoint directory or repo id (default: the default model)")
    train.add_argument("--out", help="where mtp_head.safetensors goes (default: beside the checkpoint)")
    train.add_argument("--work", help="work directory for replies, features and resumable state "
                                      "(default: in the cache, per trunk)")
    # defaults: daemon.train_head.TrainSettings (what the committed demo head was trained with)
    train.add_argument("--prompts", type=int, help="built-in prompts to use (default: all 1212)")
    train.add_argument("--held-out", type=int, help="of those, kept for measuring acceptance (default 60)")
    train.add_argument("--max-new-tokens", type=int, help="length limit of the trunk's replies (default 160)")
    train.add_argument("--generate-batch", type=int, help="replies generated per batch (default 32)")
    train.add_argument("--steps", type=int, help="training steps (default 800)")
    train.add_argument("--batch", type=int, help="sequences per training step (default 8)")
    train.add_argument("--lr", type=float, help="peak learning rate (default 1e-3)")
    train.add_argument("--eval-every", type=int, help="steps between held-out measurements (default 100)")
    train.add_argument("--chain", type=int, help="draft steps trained in a chain: the head also learns from its "
                                                 "own outputs (default 2)")
    train.add_argument("--seed", type=int, help="fixes the prompt sample, the initial head, the batch order (default 0)")
    train.add_argument("--threads", type=int, help="torch CPU threads")
    train.set_defaults(run=_train_head)
    args = parser.parse_args(argv)
    if args.command is None:
        return _tui(args)
    return args.run(args)


def _tui(args: argparse.Namespace) -> int:
    from mtpchat.tui.app import MtpChatApp
    from mtpchat.tui.ssh_tunnel import TunnelError, open_tunnel

    tunnel = None
    endpoint, note = args.endpoint, ""
    if args.ssh:
        try:
            print(f"mtpchat: connecting to {args.ssh} …", file=sys.stderr)
            endpoint, tunnel = open_tunnel(args.ssh, args.remote_mtpchat)
        except TunnelError as exc:
            print(f"mtpchat: {exc}", file=sys.stderr)
            return 1
        note = f"via ssh {args.ssh}"
    try:
        MtpChatApp(endpoint, autostart=not args.ssh, max_tokens=args.tui_max_tokens, connection_note=note).run()
    except (ValueError, RuntimeError) as exc:  # a bad config.toml or a store from a newer version
        print(f"mtpchat: {exc}", file=sys.stderr)
        return 1
    finally:
        if tunnel is not None:
            tunnel.terminate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
