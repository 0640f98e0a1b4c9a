"""Soak the daemon: many requests of mixed sizes from several clients, with cancels and vanishing clients.

--clients threads each send requests until --requests have gone out in all: prompts of 5 to
--max-prompt-words words, replies of 1 to --max-tokens tokens. Each request ends one of three ways,
drawn at random: read to its end, cancelled after its first chunk, or its client disconnects
mid-stream without a word (the socket is closed; a new one takes its place). Reported as JSON: the
daemon's resident memory before, after and after it went idle, stuck streams (a request with no
terminal reply within --stuck-s; must be 0), streams still counted by `status` once idle (must be 0),
errors by code, and time to first chunk (p50, p99, max). Uses the running mtpchatd or starts one.

    .venv/bin/python scripts/soak.py --model tiny --requests 1000 --clients 4
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mtpchat.client import DaemonClient, start_daemon  # noqa: E402
from mtpchat.machine import machine  # noqa: E402
from mtpchat.protocol import TERMINAL  # noqa: E402
from scripts.ping_latency import nearest_rank_ms  # noqa: E402


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.sent = 0
        self.endings: collections.Counter = collections.Counter()
        self.first_chunk_s: list[float] = []
        self.stuck = 0


def one_request(client: DaemonClient, rng: random.Random, args, tally: Tally) -> bool:
    """Send one generate and end it as drawn; False when the client must be replaced (it vanished)."""
    words = " ".join(f"w{rng.randrange(500)}" for _ in range(rng.randint(5, args.max_prompt_words)))
    fate = rng.choices(["read", "cancel", "vanish"], weights=[8, 1, 1])[0]
    fields = {"messages": [{"role": "user", "content": words}], "max_tokens": rng.randint(1, args.max_tokens),
              **({"model": args.model} if args.model else {})}
    sent = time.perf_counter()
    request_id = client.send("generate", **fields)
    first = True
    while True:
        message = client.poll(request_id, int(args.stuck_s * 1000))
        if message is None:
            with tally.lock:
                tally.stuck += 1
            return False
        if message["type"] == "chunk" and first:
            first = False
            with tally.lock:
                tally.first_chunk_s.append(time.perf_counter() - sent)
            if fate == "vanish":
                with tally.lock:
                    tally.endings["vanished"] += 1
                return False
            if fate == "cancel":
                client.send("cancel", target=request_id)
        if message["type"] in TERMINAL:
            with tally.lock:
                tally.endings[message.get("code") or message["type"]] += 1
            return True


def worker(seed: int, args, tally: Tally) -> None:
    rng = random.Random(seed)
    client = DaemonClient(timeout_s=args.stuck_s)
    try:
        while True:
            with tally.lock:
                if tally.sent >= args.requests:
                    return
                tally.sent += 1
            if not one_request(client, rng, args, tally):
                client.close()
                client = DaemonClient(timeout_s=args.stuck_s)
    finally:
        client.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--max-prompt-words", type=int, default=400)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--stuck-s", type=float, default=120.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start_daemon()
    with DaemonClient(timeout_s=600) as control:
        pid = control.request("hello")["pid"]
        if args.model:
            control.request("load", model=args.model)
        warm = list(control.generate(messages=[{"role": "user", "content": "hi"}], max_tokens=2,
                                     **({"model": args.model} if args.model else {})))
        assert warm[-1]["type"] == "done", warm[-1]
        before = rss_bytes(pid)
        tally = Tally()
        started = time.perf_counter()
        threads = [threading.Thread(target=worker, args=(args.seed + i, args, tally)) for i in range(args.clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        seconds = time.perf_counter() - started
        after = rss_bytes(pid)
        deadline = time.monotonic() + 30
        while (status := control.request("status"))["active_streams"] and time.monotonic() < deadline:
            time.sleep(0.5)  # vanished clients' streams end at their next send
        print(json.dumps({
            "machine": machine(), "requests": tally.sent, "clients": args.clients, "seconds": round(seconds, 1),
            "endings": dict(tally.endings), "stuck_streams": tally.stuck,
            "streams_left_when_idle": status["active_streams"] + status.get("queued_streams", 0),
            "rss_mib": {"before": round(before / 2**20, 1), "after": round(after / 2**20, 1),
                        "idle": round(rss_bytes(pid) / 2**20, 1)},
            "first_chunk_ms": {label: nearest_rank_ms(tally.first_chunk_s, q)
                               for label, q in (("p50", 0.5), ("p99", 0.99), ("max", 1.0))},
        }, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
