"""Does the daemon answer while it works? Ping `status` every 50 ms during a long prefill and a long reply.

One client sends a long prompt (a prefill of seconds on a CPU) and asks for a long reply; a second
client sends `status` every --interval seconds until the reply ends and times each answer. Reported
as JSON, per phase (prefill: before the first chunk; decode: after it): pings, p50, p99 and max answer
time in ms, plus the machine (CPU model, cores, load average). Uses the running mtpchatd, or starts
one the way `mtpchat` does.

    .venv/bin/python scripts/ping_latency.py --model demo --prompt-words 3000 --max-tokens 200
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mtpchat.client import DaemonClient, start_daemon  # noqa: E402
from mtpchat.machine import machine  # noqa: E402


def nearest_rank_ms(samples: list[float], q: float) -> float:
    """The q-quantile of seconds, in milliseconds (nearest rank; 0 without samples)."""
    ordered = sorted(samples)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2) if ordered else 0.0


def percentiles(samples: list[float]) -> dict:
    if not samples:
        return {"pings": 0}
    return {"pings": len(samples), "p50_ms": round(statistics.median(samples) * 1000, 2),
            "p99_ms": nearest_rank_ms(samples, 0.99), "max_ms": nearest_rank_ms(samples, 1.0)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model name (default: the configured default)")
    parser.add_argument("--prompt-words", type=int, default=3000)
    parser.add_argument("--max-tokens", type=int, default=200)
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between pings")
    args = parser.parse_args()
    start_daemon()
    with DaemonClient(timeout_s=600) as loader:
        loader.request("load", model=args.model or loader.request("models")["models"][0]["name"])
    first_chunk: list[float] = []
    finished = threading.Event()
    outcome: dict = {}

    def reply() -> None:
        with DaemonClient() as client:
            words = " ".join(f"w{i % 97}" for i in range(args.prompt_words))
            fields = {"messages": [{"role": "user", "content": f"Summarise: {words}"}],
                      "max_tokens": args.max_tokens, **({"model": args.model} if args.model else {})}
            for message in client.generate(**fields):
                if message["type"] == "chunk" and not first_chunk:
                    first_chunk.append(time.perf_counter())
                if message["type"] != "chunk":
                    outcome.update(type=message["type"], stats=message.get("stats", {}), error=message.get("message"))
        finished.set()

    thread = threading.Thread(target=reply)
    started = time.perf_counter()
    thread.start()
    phases: dict[str, list[float]] = {"prefill": [], "decode": []}
    with DaemonClient(timeout_s=30) as pinger:
        while not finished.is_set():
            sent = time.perf_counter()
            pinger.request("status")
            answered = time.perf_counter()
            phases["decode" if first_chunk and first_chunk[0] <= sent else "prefill"].append(answered - sent)
            time.sleep(max(0.0, args.interval - (answered - sent)))
    thread.join()
    stats = outcome.get("stats", {})
    print(json.dumps({"machine": machine(), "reply": outcome.get("error") or outcome.get("type"),
                      "seconds": round(time.perf_counter() - started, 1),
                      "prompt_tokens": stats.get("prompt_tokens"), "generated_tokens": stats.get("generated_tokens"),
                      "time_to_first_token_s": stats.get("time_to_first_token_s"),
                      **{phase: percentiles(samples) for phase, samples in phases.items()}}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
