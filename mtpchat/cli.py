"""`mtpchat` command line.

`mtpchat` alone opens the TUI (mtpchat/tui; `--ssh user@host` runs it against a remote daemon);
`mtpchat ask PROMPT` streams one reply through the daemon (starting it in the background when none
answers), as long as the model's context allows unless --max-tokens says less, and says on stderr when
the reply stopped at that limit; `mtpchat daemon start|stop|status`, `mtpchat models [list|load|unload]` manage it;
`mtpchat bench` and `mtpchat train-head` are spellings of `mtpchatd bench|train-head`: this process
hands them to the daemon's command line (a new interpreter) and never imports `daemon`, so the client
stays torch-free.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import sys
import time
from pathlib import Path

from mtpchat.client import BUSY, DOWN, DaemonClient, DaemonUnavailable, daemon_liveness, local_daemon_pid, start_daemon
from mtpchat.config import format_size
from mtpchat.paths import daemon_log, pid_file
from mtpchat.protocol import (
    DRAFT_AUTO,
    MAX_DRAFT,
    MAX_REPETITION_PENALTY,
    MIN_REPETITION_PENALTY,
    QUANTIZE_CHOICES,
    SAMPLING_FIELDS,
)
from mtpchat.status_text import model_state, placement_line, state_cache_line


def _progress(text: str) -> None:
    print(text, end="", file=sys.stderr, flush=True)


def _ensure_daemon(args) -> None:
    start_daemon(args.endpoint, progress=_progress if sys.stderr.isatty() else lambda text: None)


ASK_MAX_TOKENS = 4096  # when the daemon does not say the model's context (not yet placed)
STOPPED_AT = {"length": "the reply stopped at the --max-tokens limit ({max_tokens} tokens); raise it for more",
              "context": "the reply stopped because the model's context is full; a shorter prompt leaves more room"}


def _reply_room(client: DaemonClient, model: str | None) -> int:
    """The most tokens a reply can have: the model's context as the daemon reports it (`context` in the
    `models` reply), or ASK_MAX_TOKENS when it does not (yet) say, or does not answer at once."""
    try:
        models = client.request("models", timeout_ms=2000).get("models", [])
    except DaemonUnavailable:  # the generate request that follows finds out what is wrong, and says it
        return ASK_MAX_TOKENS
    for entry in models:
        if (entry["name"] == model or entry.get("path") == model or (model is None and entry.get("default"))) \
                and entry.get("context"):
            return entry["context"]
    return ASK_MAX_TOKENS


def _ask(args: argparse.Namespace) -> int:
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    if not prompt.strip():  # a model answers an empty turn with whatever it likes: say so instead
        print("mtpchat: the prompt is empty; nothing to ask", file=sys.stderr)
        return 2
    fields = {"model": args.model, "messages": [{"role": "user", "content": prompt}], "system": args.system,
              "max_tokens": args.max_tokens, "seed": args.seed, "thinking": not args.no_think, "stop": args.stop}
    # a sampling flag left out is left out of the request: the daemon then uses the model's default
    fields.update({name: getattr(args, name) for name in SAMPLING_FIELDS if getattr(args, name) is not None})
    if args.quantize:
        fields["quantize"] = args.quantize
    if args.no_mtp:
        fields["draft"] = 0
    elif args.draft is not None:
        fields["draft"] = args.draft if args.draft == DRAFT_AUTO else int(args.draft)
    try:
        _ensure_daemon(args)
        with DaemonClient(args.endpoint) as client:
            fields["max_tokens"] = fields["max_tokens"] or _reply_room(client, args.model)
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
    if final["type"] == "done" and final.get("finish_reason") in STOPPED_AT:
        print(f"mtpchat: {STOPPED_AT[final['finish_reason']].format(max_tokens=fields['max_tokens'])}",
              file=sys.stderr)
    return 0


def _daemon(args: argparse.Namespace) -> int:
    if args.action == "start":
        running = daemon_liveness(args.endpoint) != DOWN
        try:
            _ensure_daemon(args)
            with DaemonClient(args.endpoint) as client:
                pid = client.request("hello")["pid"]
        except DaemonUnavailable as exc:
            print(f"mtpchat: {exc}", file=sys.stderr)
            return 1
        if args.json:
            return _daemon_status(args)
        print(f"mtpchatd {'was already running' if running else 'started'} (pid {pid})")
        return 0
    if args.action == "stop":
        return _daemon_stop(args)
    return _daemon_status(args)


STATUS_WAIT_S = 2.0
STATUS_HELP = (f"status exits 0 when mtpchatd runs, also when it is busy (a long prefill: the process runs but "
               f"does not answer within {STATUS_WAIT_S:g} s; it says so, and --json gives \"busy\": true), "
               "3 when it is not running, and 1 when it answers with an error or dies while answering")


def _daemon_status(args: argparse.Namespace) -> int:
    liveness = daemon_liveness(args.endpoint, timeout_s=STATUS_WAIT_S)
    if liveness == DOWN:
        print(json.dumps({"running": False}) if args.json else "mtpchatd is not running")
        return 3
    if liveness == BUSY:
        pid = local_daemon_pid(args.endpoint)
        print(json.dumps({"running": True, "busy": True, "pid": pid}) if args.json else
              f"mtpchatd is running, busy (pid {pid}; not answering within {STATUS_WAIT_S:g} s)")
        return 0
    try:
        with DaemonClient(args.endpoint) as client:
            status = client.request("status")
    except DaemonUnavailable as exc:  # it answered hello, then went away
        print(f"mtpchat: {exc}", file=sys.stderr)
        return 1
    if status["type"] == "error":  # with --json too: stdout holds only a status
        print(f"mtpchat: mtpchatd runs but could not report its status: {status.get('message')} "
              f"({status.get('code')}); its log may say more: {daemon_log()}", file=sys.stderr)
        return 1
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


def _daemon_stop(args: argparse.Namespace, timeout_s: float = 30.0) -> int:
    try:
        pid = int(pid_file().read_text().strip())
    except (FileNotFoundError, ValueError):
        pid = None
    if pid is None or not _is_our_daemon(pid, args.endpoint):
        print("mtpchatd is not running" if pid is None else
              f"mtpchatd is not running (the pid file {pid_file()} names process {pid}, which is not mtpchatd; "
              "left alone)")
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            print(f"mtpchatd (pid {pid}) stopped")
            return 0
        time.sleep(0.05)
    print(f"mtpchat: mtpchatd (pid {pid}) did not stop within {timeout_s:g} s; see {daemon_log()}", file=sys.stderr)
    return 1


def _is_our_daemon(pid: int, endpoint: str | None) -> bool:
    """Whether `pid` is mtpchatd: it says so over the socket, or (busy, not answering) its command line
    is ours. A stale pid file may name any process; that one must never get our SIGTERM."""
    try:
        with DaemonClient(endpoint) as client:
            if client.request("hello", timeout_ms=2000).get("pid") == pid:
                return True
    except DaemonUnavailable:
        pass
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    launched_as = [Path(os.fsdecode(arg)).name for arg in argv[:3]]
    return "mtpchatd" in launched_as[:2] or launched_as[1:3] == ["-m", "daemon"]  # script, or python -m daemon


def _models(args: argparse.Namespace) -> int:
    try:
        _ensure_daemon(args)
        with DaemonClient(args.endpoint) as client:
            if args.action == "list":
                answer = client.request("models")
            else:
                answer = client.request(args.action, model=args.name)
                if args.action == "load" and answer["type"] == "ok":
                    answer = _wait_loaded(client, answer["model"])
    except DaemonUnavailable as exc:
        print(f"mtpchat: {exc}", file=sys.stderr)
        return 1
    if answer["type"] == "error":
        print(f"mtpchat: {answer['message']}", file=sys.stderr)
        return 1
    if args.action == "list":
        for model in answer["models"]:
            print(_model_line(model))
    elif args.action == "unload":
        print(f"{answer['model']} unloaded")
    return 0


def _wait_loaded(client: DaemonClient, name: str, poll_s: float = 0.2) -> dict:
    """Follow a load the daemon accepted until the model is resident (said on stdout) or failed (an error)."""
    told = False
    while True:
        model = next((m for m in client.request("models")["models"] if m["name"] == name), None)
        if model is not None and model["state"] == "resident":
            print(f"{name} resident")
            return {"type": "ok"}
        if model is None or model["state"] != "loading":  # failed, or unloaded meanwhile by another client
            why = (model["error"] or f"it is {model['state']}") if model else "it is no longer listed"
            return {"type": "error", "message": f"{name} did not load: {why}"}
        if not told:
            print(f"loading {name}…", file=sys.stderr, flush=True)
            told = True
        time.sleep(poll_s)


def _model_line(model: dict) -> str:
    extra = f" — {model['error']}" if model["error"] else ""
    quantized = f" [{model['quantize']}]" if model.get("quantize", "none") != "none" else ""
    compiled = COMPILE_NOTES.get(model.get("compile", "off"), "")
    if model.get("compile_error"):
        compiled += f" ({model['compile_error']})"
    graphs = GRAPH_NOTES.get(model.get("graphs", "off"), "")
    if model.get("graphs_error"):
        graphs += f" ({model['graphs_error']})"
    return (f"{'*' if model['default'] else ' '} {model['name']:<16} {model_state(model):<12} {model['path']}"
            f"{quantized}{compiled}{graphs}{extra}")


COMPILE_NOTES = {"compiling": " [compiling steps; eager meanwhile]", "on": " [compiled steps]",
                 "failed": " [compile failed; eager]"}  # a model's `compile` state, as `models list` shows it
GRAPH_NOTES = {"on": " [CUDA graphs]", "failed": " [CUDA graphs failed; eager]"}  # its `graphs` state


ENGINE_COMMANDS = {"bench": "plain vs MTP decoding side by side, JSON out (runs mtpchatd bench)",
                   "train-head": "train an MTP head for a checkpoint without one (runs mtpchatd train-head)"}


def _hand_off(argv: list[str]) -> int:
    """Run `mtpchatd ARGV` in place of this process: the engine-side commands need torch and `daemon`."""
    if importlib.util.find_spec("daemon") is None or importlib.util.find_spec("torch") is None:
        print(f"mtpchat: `{argv[0]}` runs the engine, which is not installed here; run it on the machine with "
              "the models, or install mtpchat[daemon] (torch, transformers, safetensors)", file=sys.stderr)
        return 1
    os.execv(sys.executable, [sys.executable, "-m", "daemon", *argv])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] and argv[0] in ENGINE_COMMANDS:
        return _hand_off(argv)
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
    ask.add_argument("--quantize", choices=QUANTIZE_CHOICES,
                     help="quantized weights of the model (default: its configured setting); another "
                          "than that loads a variant of the model beside it")
    ask.add_argument("--max-tokens", type=int, help="most tokens in the reply (default: as many as the model's "
                     f"context leaves, or {ASK_MAX_TOKENS} when the daemon does not report it); a reply that stops "
                     "there says so on stderr")
    ask.add_argument("--no-mtp", action="store_true", help="plain decoding (the same engine with k = 0)")
    ask.add_argument("--draft", choices=[*map(str, range(1, MAX_DRAFT + 1)), DRAFT_AUTO], metavar="K",
                     help=f"MTP draft tokens per step, 1..{MAX_DRAFT}, or {DRAFT_AUTO} (adaptive); default: the "
                          "model's setting")
    # sampling: each left out takes the model's default (the models reply's `sampling` map shows them)
    ask.add_argument("--temperature", type=float, help="0 is greedy; default: the model's")
    ask.add_argument("--top-p", type=float, help="nucleus sampling, (0, 1]")
    ask.add_argument("--top-k", type=int, help="0 keeps every token")
    ask.add_argument("--min-p", type=float, help="drop tokens less likely than MIN_P times the top one, [0, 1]")
    ask.add_argument("--repetition-penalty", type=float,
                     help=f"{MIN_REPETITION_PENALTY:g}..{MAX_REPETITION_PENALTY:g}; > 1 discourages tokens of the "
                          "prompt and the reply (vLLM/HF semantics; 1 is off)")
    ask.add_argument("--presence-penalty", type=float, help="-2..2, subtracted from tokens the reply holds")
    ask.add_argument("--frequency-penalty", type=float, help="-2..2, subtracted per occurrence in the reply")
    ask.add_argument("--seed", type=int, help="makes sampled replies reproducible")
    ask.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    ask.add_argument("--no-think", action="store_true", help="ask the model to skip its thinking block")
    ask.add_argument("--json", action="store_true", help="print one JSON object instead of streaming")
    ask.set_defaults(run=_ask)
    daemon = commands.add_parser("daemon", help="start, stop or inspect mtpchatd", epilog=STATUS_HELP)
    daemon.add_argument("action", choices=["start", "stop", "status"])
    daemon.add_argument("--json", action="store_true")
    daemon.set_defaults(run=_daemon)
    models = commands.add_parser("models", help="list, load or unload models in the daemon")
    models.add_argument("action", nargs="?", default="list", choices=["list", "load", "unload"])
    models.add_argument("name", nargs="?")
    models.set_defaults(run=_models)
    for name, help_text in ENGINE_COMMANDS.items():
        commands.add_parser(name, help=help_text, add_help=False)
    args = parser.parse_args(argv)
    if args.command is None:
        return _tui(args)
    return args.run(args)


def _tui(args: argparse.Namespace) -> int:
    from mtpchat.store import StoreError
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
    except (ValueError, RuntimeError, StoreError) as exc:  # a bad config.toml, a conversation file that cannot be used
        print(f"mtpchat: {exc}", file=sys.stderr)
        return 1
    finally:
        if tunnel is not None:
            tunnel.terminate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
