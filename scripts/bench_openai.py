"""mtpchatd's OpenAI endpoint against llama-server on the demo model, in one run: TTFT, decode tok/s, acceptance.

What a client of either server sees, measured the same way on both: `mtpchatd serve --openai` serving the
demo as it ships (int4 group 32 on the Q4_1 codes, its MTP head, draft "auto", draft vocabulary 8192) and
llama-server (llama.cpp b11434, built once by ../shared/peer/build-llamacpp.sh as for scripts/bench_peer.py)
on the same Q4_1 GGUF with n-gram speculation as scripts/check_llama_server.sh runs it (the GGUF has no MTP
head; n-gram drafts are what llama.cpp can speculate with here), both with --threads threads. The daemon
runs in a throwaway MTPCHAT_HOME whose cache links to the real one (no second download or conversion).
Neither server resumes a cached prompt (llama-server: `cache_prompt` false; the daemon: a state cache of
0 bytes), so every TTFT is a whole prompt's prefill, whatever ran before it.

Each variant — llama-server, mtpchatd with MTP, mtpchatd with `draft: 0` (plain decoding, the same
server) — gets one warm-up request, then every built-in bench prompt of `mtpchatd bench` once per round,
streamed over plain HTTP, greedy, with no repetition penalty (the demo's generation_config.json sets 1.1,
llama-server's default is none), at most --max-tokens tokens. The variants take turns prompt by prompt,
in an order rotated at each prompt, so none always runs right after another. Per request: TTFT (request
sent -> first content delta), decode tok/s ((completion tokens - 1) / (last content delta - first)),
tokens from `usage`, acceptance from mtpchatd's `mtp` field or llama-server's `timings`.

Prints JSON: per variant the median and range of each figure and the pooled acceptance, the ratios of
mtpchatd's medians to llama-server's, how many replies were the same text, the CPU, the load average
before and after, how the daemon held the demo, and the command lines (and the daemon's config.toml) that
started both servers. Not part of the test command (tests/test_bench_openai.py checks the pieces that
need no server).

    .venv/bin/python scripts/bench_openai.py --rounds 5
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from daemon.serve.remote_engine import remote_stats, sse_events  # noqa: E402
from daemon.tools.bench import BENCH_PROMPTS  # noqa: E402
from mtpchat.client import DaemonClient  # noqa: E402
from mtpchat.machine import machine  # noqa: E402
from mtpchat.paths import cache_dir  # noqa: E402
from mtpchat.protocol import (  # noqa: E402
    ACCEPTED_TOKENS,
    CACHED_TOKENS,
    DECODE_TOK_S,
    DRAFTED_TOKENS,
    DRAFTS,
    GENERATED_TOKENS,
    PROMPT_TOKENS,
)
from scripts.bench_peer import build_llama, summary  # noqa: E402

GGUF = "smollm2-135m-q4_1.gguf"  # the demo's shipped file, linked into the llama.cpp build's models/
LLAMA = "llama-server"
MTP, PLAIN = "mtpchatd mtp", "mtpchatd plain"
# label -> extra request fields. Neither server reuses a cached prompt (so TTFT is a whole prompt's prefill on
# both, not whatever the previous request left): llama-server by `cache_prompt`, the daemon by DAEMON_CONFIG.
VARIANTS = {LLAMA: {"cache_prompt": False}, MTP: {}, PLAIN: {"draft": 0}}  # MTP: the demo's configured draft
DAEMON_CONFIG = "[state_cache]\nbudget = 0\n"  # config.toml: no conversation state kept; the models as default
SAMPLING = {"temperature": 0.0, "repetition_penalty": 1.0}
WARM_UP = "Say hello in one short sentence."
READY_TIMEOUT_S = 600.0  # the daemon converts the demo on a first run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port: int, path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@contextlib.contextmanager
def server(name: str, command: list[str], env: dict, log: Path, port: int, ready):
    """A server process, up once `ready(port)` holds, stopped (SIGTERM) at the end; its log's tail on failure."""
    with log.open("w") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not _answers(ready, port):
            if process.poll() is not None or time.monotonic() > deadline:
                tail = "".join(log.read_text().splitlines(keepends=True)[-20:])
                raise SystemExit(f"{name} did not become ready (exit {process.poll()}):\n{tail}")
            time.sleep(0.5)
        yield
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _answers(ready, port: int) -> bool:
    try:
        return ready(port)
    except OSError:  # not listening yet
        return False


def llama_ready(port: int) -> bool:
    return get(port, "/health")[0] == 200


def demo_resident(port: int) -> bool:
    status, body = get(port, "/v1/models")
    return status == 200 and any(m["id"] == "demo" and m["state"] == "resident" for m in json.loads(body)["data"])


def served_demo(home: Path) -> dict:
    """How the daemon holds the demo (precision, draft, MTP head), asked over its own wire: the check that it
    is the shipped configuration being measured."""
    with DaemonClient(f"ipc://{home / 'runtime' / 'mtpchatd.sock'}") as client:
        entry = next(m for m in client.request("models")["models"] if m["name"] == "demo")
    return {key: entry.get(key) for key in ("quantize", "draft", "draft_vocab", "mtp_head", "dtype", "device")}


def stream(port: int, body: dict) -> tuple[float, list[tuple[float, dict]]]:
    """POST a streamed chat completion: when it was sent, and each event with when it arrived."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        connection.connect()
        sent = time.perf_counter()
        connection.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
        response = connection.getresponse()
        if response.status != 200:
            raise SystemExit(f"127.0.0.1:{port} answered {response.status}: {response.read()[:300]!r}")
        return sent, [(time.perf_counter(), event) for event in sse_events(response)]
    finally:
        connection.close()


def measure(sent: float, timed: list[tuple[float, dict]]) -> dict:
    """One request's figures from its send time and timed events: TTFT and decode tok/s as the client saw
    them, the reply's text, and the stats the server reported (wire keys, daemon.serve.remote_engine)."""
    stats, text, content_at = {}, [], []
    for at, event in timed:
        for choice in event.get("choices") or []:
            if piece := (choice.get("delta") or {}).get("content"):
                text.append(piece)
                content_at.append(at)
        stats.update(remote_stats(event))
    if not content_at:
        raise ValueError("the stream carried no content")
    tokens, span = stats.get(GENERATED_TOKENS, 0), content_at[-1] - content_at[0]
    return {"ttft_ms": (content_at[0] - sent) * 1000, "text": "".join(text), "stats": stats,
            "decode_tok_s": (tokens - 1) / span if tokens > 1 and span > 0 else None}


def report(results: dict[str, list[dict]]) -> dict:
    """Per variant: medians and ranges, pooled acceptance; mtpchatd / llama-server ratios of the medians;
    how many replies had the same text (requests line up: every variant ran every prompt of every round)."""
    variants = {label: _variant(measured) for label, measured in results.items()}
    ratios = {f"{label} / {LLAMA}": {figure: round(variants[label][figure]["median"]
                                                   / variants[LLAMA][figure]["median"], 3)
                                     for figure in ("decode_tok_s", "ttft_ms")}
              for label in results if label != LLAMA}
    same = {f"{a} = {b}": f"{sum(x['text'] == y['text'] for x, y in zip(results[a], results[b]))}/{len(results[a])}"
            for a, b in ((MTP, PLAIN), (PLAIN, LLAMA))}
    return {"variants": variants, "ratios": ratios, "same_text": same}


def _variant(measured: list[dict]) -> dict:
    def figures(key):
        return [m["stats"][key] for m in measured if key in m["stats"]]

    drafted, accepted, drafts = sum(figures(DRAFTED_TOKENS)), sum(figures(ACCEPTED_TOKENS)), figures(DRAFTS)
    acceptance = {"drafted_tokens": drafted, "accepted_tokens": accepted,
                  "rate": round(accepted / drafted, 3) if drafted else None}
    if drafts and len(drafts) == len(measured) and sum(drafts):  # mtpchatd counts verify steps; llama-server not
        acceptance["mean_acceptance_length"] = round(1 + accepted / sum(drafts), 3)
    table = {"ttft_ms": [m["ttft_ms"] for m in measured],
             "decode_tok_s": [m["decode_tok_s"] for m in measured if m["decode_tok_s"] is not None],
             "server_decode_tok_s": figures(DECODE_TOK_S), "completion_tokens": figures(GENERATED_TOKENS),
             "prompt_tokens": figures(PROMPT_TOKENS), "cached_prompt_tokens": figures(CACHED_TOKENS)}
    return {**{key: summary(values) for key, values in table.items() if values}, "acceptance": acceptance}


def request(prompt: str, max_tokens: int, extra: dict) -> dict:
    return {"model": "demo", "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "stream": True, "stream_options": {"include_usage": True}, **SAMPLING, **extra}


def run(ports: dict[str, int], prompts: list[str], rounds: int, max_tokens: int) -> dict[str, list[dict]]:
    """Every variant's measurements after a warm-up each: the variants take turns on each prompt, their
    order rotated one place per prompt."""
    for label, extra in VARIANTS.items():
        stream(ports[label], request(WARM_UP, max_tokens, extra))
    results: dict[str, list[dict]] = {label: [] for label in VARIANTS}
    labels = list(VARIANTS)
    for turn, prompt in enumerate(prompts * rounds):
        shift = turn % len(labels)
        for label in labels[shift:] + labels[:shift]:
            results[label].append(measure(*stream(ports[label], request(prompt, max_tokens, VARIANTS[label]))))
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=len(BENCH_PROMPTS),
                        help=f"how many of the built-in bench prompts (1..{len(BENCH_PROMPTS)})")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    llama = build_llama()
    prompts = BENCH_PROMPTS[:args.prompts]
    work = Path(tempfile.mkdtemp(prefix="bench-openai-"))
    (work / "home").mkdir()
    (work / "home" / "cache").symlink_to(cache_dir())
    (work / "home" / "config").mkdir()
    (work / "home" / "config" / "config.toml").write_text(DAEMON_CONFIG)
    daemon_port, llama_port = free_port(), free_port()
    daemon_env = {"MTPCHAT_HOME": str(work / "home"), "OMP_NUM_THREADS": str(args.threads)}
    daemon = [sys.executable, "-m", "daemon", "serve", "--openai", f"127.0.0.1:{daemon_port}"]
    llama_server = [str(llama / "build" / "bin" / "llama-server"), "-m", str(llama / "models" / GGUF),
                    "--alias", "demo", "--host", "127.0.0.1", "--port", str(llama_port), "-c", "1024", "-np", "1",
                    "-t", str(args.threads), "--spec-type", "ngram-simple", "--spec-ngram-simple-size-n", "2",
                    "--spec-ngram-simple-size-m", "8"]
    before = machine()
    try:
        with server("mtpchatd", daemon, {**os.environ, **daemon_env}, work / "mtpchatd.log", daemon_port,
                    demo_resident), \
                server(LLAMA, llama_server, dict(os.environ), work / "llama-server.log", llama_port, llama_ready):
            demo = served_demo(work / "home")
            results = run({LLAMA: llama_port, MTP: daemon_port, PLAIN: daemon_port}, prompts, args.rounds,
                          args.max_tokens)
    finally:
        shutil.rmtree(work)
    commands = {"mtpchatd": shlex.join([f"{k}={v}" for k, v in daemon_env.items()] + daemon),
                "mtpchatd config.toml": DAEMON_CONFIG, LLAMA: shlex.join(llama_server)}
    print(json.dumps({"machine": before | {"load_average_after": os.getloadavg()}, "threads": args.threads,
                      "rounds": args.rounds, "prompts": prompts, "max_tokens": args.max_tokens, "sampling": SAMPLING,
                      "mtpchatd_demo": demo, **report(results), "commands": commands}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
