"""`mtpchatd`: the inference daemon's command line.

`mtpchatd` (or `mtpchatd serve`) runs the daemon in the foreground: it takes the pid lock in the
runtime dir (a second daemon is refused), replaces a stale socket left by a dead one, loads the
configured models in the background and serves until SIGTERM/SIGINT, then cancels streams, frees
memory and removes its socket. `mtpchatd inspect CHECKPOINT` loads a checkpoint and reports what the
engine would run — how a user checks that a downloaded Qwen3.5/3.6 checkpoint is usable.
`mtpchatd bench` and `mtpchatd train-head` are the engine-side tools (daemon/tools/commands.py);
`mtpchatd keys` creates CURVE keys for listening beyond loopback. `--openai ADDRESS` also serves an
OpenAI-compatible HTTP API (daemon/openai/) from the same process; `mtpchatd openai --connect ENDPOINT`
serves it alone, for a daemon running elsewhere.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from daemon.tools.commands import add_commands
from mtpchat.config import DTYPE_NAMES
from mtpchat.paths import cache_dir


def _inspect(args: argparse.Namespace) -> int:
    import torch

    from daemon.weights.checkpoint import CheckpointError
    from daemon.weights.loader import DTYPES, load_model

    started = time.perf_counter()
    try:
        model = load_model(args.checkpoint, device=args.device, dtype=DTYPES.get(args.dtype))
    except (CheckpointError, FileNotFoundError, ValueError) as exc:
        print(f"mtpchatd: {exc}", file=sys.stderr)
        return 1
    config = model.config
    report = {
        "checkpoint": str(args.checkpoint),
        "model_type": config.model_type,
        "layers": config.num_hidden_layers,
        "full_attention_layers": config.layer_types.count("full_attention"),
        "parameters": sum(p.numel() for p in model.parameters()),
        "mtp_head": model.mtp is not None,
        "device": str(model.device),
        "dtype": str(model.dtype).removeprefix("torch."),
        "load_seconds": round(time.perf_counter() - started, 3),
    }
    if model.device.type == "cuda":
        report["gpu_memory_bytes"] = torch.cuda.memory_allocated(model.device)
    print(json.dumps(report, indent=2))
    return 0


def _serve(args: argparse.Namespace) -> int:
    import dataclasses
    import os
    import signal

    from daemon.serve.listen import ListenError, check_listen_endpoint
    from daemon.serve.registry import ModelRegistry
    from daemon.serve.server import DaemonServer
    from mtpchat.config import load_config
    from mtpchat.curve import has_server_keys
    from mtpchat.paths import default_endpoint, pid_file

    endpoint = args.listen or default_endpoint()
    curve = endpoint.startswith("tcp://") and has_server_keys()
    try:
        check_listen_endpoint(endpoint, curve)
    except ListenError as exc:
        print(f"mtpchatd: {exc}", file=sys.stderr)
        return 2
    if endpoint.startswith("tcp://") and not curve:
        print(f"mtpchatd: warning: {endpoint} without CURVE keys answers every local user of this machine "
              "(they can generate and load checkpoints); `mtpchatd keys` enables CURVE on loopback too",
              file=sys.stderr)
    lock = open(pid_file(), "a+")
    if not _take_lock(lock):
        lock.seek(0)
        print(f"mtpchatd: another daemon is running (pid {lock.read().strip() or '?'}, lock {pid_file()})",
              file=sys.stderr)
        return 1
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    socket_path = endpoint.removeprefix("ipc://") if endpoint.startswith("ipc://") else None
    if socket_path and os.path.exists(socket_path):
        os.unlink(socket_path)  # we hold the lock, so whoever made it is dead
    try:
        config = load_config()
        openai = dataclasses.replace(config.openai, listen=args.openai or config.openai.listen,
                                     api_key_file=args.openai_api_key_file or config.openai.api_key_file)
        gateway = _gateway(openai, endpoint)
    except (ValueError, OSError) as exc:
        print(f"mtpchatd: {exc}", file=sys.stderr)
        return 1
    registry = ModelRegistry(config)
    for name, settings in config.models.items():
        if settings.load_at_start:
            registry.load(name)
    server = DaemonServer(endpoint, registry, curve=curve, limits=config.daemon)
    if socket_path:
        os.chmod(socket_path, 0o600)

    def stop(signum, frame):
        server.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"mtpchatd {os.getpid()} listening on {endpoint}{' (CURVE)' if curve else ''}", flush=True)
    if gateway is not None:
        gateway.start()
        print(f"mtpchatd: OpenAI-compatible API on {gateway.url}", flush=True)
    try:
        server.serve_forever()
    finally:
        if gateway is not None:
            gateway.stop()  # after the daemon ended its streams, so HTTP clients hear why
        if socket_path and os.path.exists(socket_path):
            os.unlink(socket_path)
        pid_file().unlink(missing_ok=True)
        print("mtpchatd stopped", flush=True)
    return 0


def _gateway(settings, endpoint: str):
    """The OpenAI-compatible API when configured (None otherwise), its port bound."""
    if settings.listen is None:
        return None
    from daemon.openai.gateway import Gateway

    try:
        return Gateway(settings, endpoint)
    except OSError as exc:
        raise OSError(f"cannot serve the OpenAI API on {settings.listen}: {exc.strerror}") from None


def _openai(args: argparse.Namespace) -> int:
    """The OpenAI-compatible API alone, in front of a daemon that runs elsewhere (another process of this
    machine, or another machine over tcp:// with CURVE keys): the gateway is a wire-protocol client, so
    nothing but the endpoint differs from `serve --openai`."""
    import dataclasses
    import signal
    import threading

    from mtpchat.config import load_config
    from mtpchat.paths import default_endpoint

    try:
        config = load_config()
        settings = dataclasses.replace(config.openai, listen=args.listen or config.openai.listen or "127.0.0.1:8080",
                                       api_key_file=args.api_key_file or config.openai.api_key_file)
        gateway = _gateway(settings, args.connect or default_endpoint())
    except (ValueError, OSError) as exc:
        print(f"mtpchatd: {exc}", file=sys.stderr)
        return 1
    stopped = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopped.set())
    gateway.start()
    print(f"mtpchatd: OpenAI-compatible API on {gateway.url} for the daemon at {args.connect or default_endpoint()}",
          flush=True)
    stopped.wait()
    gateway.stop()
    return 0


def _take_lock(lock, patience_s: float = 1.0) -> bool:
    """The pid-file lock, tried for `patience_s`: a client asking whether a daemon runs
    (mtpchat.client.local_daemon_pid) holds it for an instant, which must not turn a start away."""
    import fcntl

    deadline = time.monotonic() + patience_s
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)


def _keys(args: argparse.Namespace) -> int:
    from mtpchat.curve import authorized_dir, create_keys

    keys = create_keys()
    print(f"server public key: {keys['server']}\nclient public key: {keys['client']}\n"
          f"authorized client keys: {authorized_dir()}\n"
          "To let another machine in: put its client.key in the authorized directory here, and this "
          "server.key in its curve directory; then listen on tcp://0.0.0.0:PORT.")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mtpchatd", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command")
    serve = commands.add_parser("serve", help="run the daemon in the foreground (the default)")
    serve.add_argument("--listen", help="endpoint, e.g. tcp://127.0.0.1:5555 (default: ipc socket in the runtime dir)")
    serve.add_argument("--openai", metavar="HOST:PORT",
                       help="also serve an OpenAI-compatible HTTP API there, e.g. 127.0.0.1:8080 "
                            "(default: [openai] listen in config.toml)")
    serve.add_argument("--openai-api-key-file", metavar="PATH",
                       help="a file holding the key HTTP clients must send (needed beyond loopback)")
    serve.set_defaults(run=_serve)
    gateway = commands.add_parser("openai", help="serve only the OpenAI-compatible API, for a daemon running "
                                                 "elsewhere (this machine or another)")
    gateway.add_argument("--connect", metavar="ENDPOINT",
                         help="the daemon's endpoint, e.g. tcp://gpu-box:5555 with CURVE keys (default: this "
                              "machine's daemon)")
    gateway.add_argument("--listen", metavar="HOST:PORT",
                         help="where to serve HTTP (default: [openai] listen in config.toml, else 127.0.0.1:8080)")
    gateway.add_argument("--api-key-file", metavar="PATH",
                         help="a file holding the key HTTP clients must send (needed beyond loopback)")
    gateway.set_defaults(run=_openai)
    inspect = commands.add_parser("inspect", help="load a checkpoint and report what the engine runs")
    inspect.add_argument("checkpoint", help="checkpoint directory or Hugging Face repo id (offline cache)")
    inspect.add_argument("--device", default=None, help="cpu, cuda, cuda:1 … (default: cuda if present)")
    inspect.add_argument("--dtype", choices=DTYPE_NAMES,
                         help="weight dtype (default: bfloat16 on CUDA, float32 on CPU)")
    inspect.set_defaults(run=_inspect)
    keys = commands.add_parser("keys", help="create ZeroMQ CURVE keys for listening beyond loopback")
    keys.set_defaults(run=_keys)
    add_commands(commands)
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in commands.choices and argv[0] not in ("-h", "--help"):
        argv = ["serve", *argv]  # `mtpchatd --listen X` is `mtpchatd serve --listen X`
    args = parser.parse_args(argv)
    # torch.compile'd steps (a model's `compile = true`, `bench --compile`) keep their generated code
    # under the user's cache dir: inductor's default, /tmp, is lost at reboot and compiling takes minutes
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir() / "inductor"))
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
