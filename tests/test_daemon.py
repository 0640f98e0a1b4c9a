"""The daemon as users meet it: a real `mtpchatd` process on a real ipc socket, real clients.

Two tiny models resident, alternating requests, concurrent and cancelled streams, vanished clients,
restarts, stale sockets, a second daemon, permissions, refused TCP, and a fuzz of bad frames."""

from __future__ import annotations

import random
import signal
import stat
import time

import msgpack
import pytest
import torch
import zmq

from daemon.generate import generate
from daemon.loader import load_model
from mtpchat.client import DaemonClient
from mtpchat.protocol import pack, unpack
from tests.helpers import chat_prompt, start_daemon_process, stop_process, wait_resident, write_tiny_config

MESSAGES = [{"role": "user", "content": "Hello there"}]


@pytest.fixture
def home(tmp_path, tiny, monkeypatch):
    home = tmp_path / "h"
    write_tiny_config(home, tiny)
    monkeypatch.setenv("MTPCHAT_HOME", str(home))
    return home


@pytest.fixture
def daemon(home):
    process = start_daemon_process(home)
    with DaemonClient(timeout_s=30) as client:
        client.request("hello")
        wait_resident(client, ["dense", "moe"])
    yield process
    if process.poll() is None:
        assert stop_process(process) == 0


def _collect(client, **fields):
    replies = list(client.generate(**{"messages": MESSAGES, **fields}))
    assert replies[-1]["type"] in ("done", "error", "cancelled")
    assert all(r["type"] == "chunk" for r in replies[:-1])
    return replies


def test_two_resident_models_answer_alternating_requests_exactly(daemon, tiny):
    expected = {}
    for name, path in (("dense", tiny["qwen3.6-dense-tiny"]), ("moe", tiny["qwen3.6-moe-tiny"])):
        model = load_model(path, device="cpu")
        stop = set(model.config.eos_token_ids)
        tokens = list(generate(model, chat_prompt(path, "Hello there"), 16, stop))
        expected[name] = [t for t in tokens if t not in stop]
    with DaemonClient() as client:
        for name in ("dense", "moe", "dense", "moe"):
            for draft in (0, 3):
                replies = _collect(client, model=name, max_tokens=16, draft=draft)
                done = replies[-1]
                assert done["type"] == "done" and done["token_ids"] == expected[name]
                streamed = [t for r in replies[:-1] for t in r["tokens"]]
                assert streamed == done["token_ids"]
                assert "".join(r["text"] for r in replies[:-1]) == done["text"]
                flags = [f for r in replies[:-1] for f in r["drafted"]]
                assert len(flags) == len(streamed) and sum(flags) == done["stats"]["accepted_tokens"]
                pieces = [p for r in replies[:-1] for p in r["pieces"]]
                assert len(pieces) == len(streamed) and done["text"].startswith("".join(pieces))
                assert done["stats"]["draft_k"] == draft


def test_concurrent_streams_are_interleaved(daemon):
    clients = [DaemonClient() for _ in range(3)]
    try:
        ids = []
        for i, client in enumerate(clients):
            client.socket.send(pack({"id": f"c{i}", "op": "generate", "messages": MESSAGES, "max_tokens": 40,
                                     "draft": 0}))
            ids.append(f"c{i}")
        arrivals = []  # (time, client, type)
        pending = set(range(3))
        poller = zmq.Poller()
        for client in clients:
            poller.register(client.socket, zmq.POLLIN)
        deadline = time.monotonic() + 60
        while pending and time.monotonic() < deadline:
            for socket, _ in poller.poll(1000):
                i = next(n for n, c in enumerate(clients) if c.socket is socket)
                message = unpack(socket.recv())
                arrivals.append((i, message["type"]))
                if message["type"] == "done":
                    pending.discard(i)
        assert not pending
        first_done = next(n for n, (_, kind) in enumerate(arrivals) if kind == "done")
        assert {i for i, kind in arrivals[:first_done] if kind == "chunk"} == {0, 1, 2}, "all three progress together"
    finally:
        for client in clients:
            client.close()


def _recv(socket, timeout_ms=30_000) -> dict:
    assert socket.poll(timeout_ms), "no reply from the daemon"
    return unpack(socket.recv())


def test_cancel_mid_stream_keeps_what_arrived(daemon):
    with DaemonClient() as client:
        client.socket.send(pack({"id": "long", "op": "generate", "messages": MESSAGES, "max_tokens": 2000}))
        replies = [_recv(client.socket)]
        assert replies[0]["type"] == "chunk"
        client.socket.send(pack({"id": "stop-it", "op": "cancel", "target": "long"}))
        ok = None
        while ok is None or replies[-1]["type"] != "cancelled":
            message = _recv(client.socket)
            if message["id"] == "stop-it":
                ok = message
            else:
                replies.append(message)
        assert ok["type"] == "ok" and ok["cancelled"] is True
        text = "".join(r["text"] for r in replies[:-1])
        assert replies[-1]["text"].startswith(text) and len(replies) < 200
        assert client.request("status")["active_streams"] == 0


def test_vanished_client_does_not_stall_or_leak(daemon):
    gone = DaemonClient()
    gone.socket.send(pack({"id": "x", "op": "generate", "messages": MESSAGES, "max_tokens": 3000, "draft": 0}))
    time.sleep(0.3)
    gone.close()
    with DaemonClient() as client:
        assert _collect(client, max_tokens=8)[-1]["type"] == "done"
        deadline = time.monotonic() + 30
        while client.request("status")["active_streams"] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert client.request("status")["active_streams"] == 0


def test_bad_requests_get_precise_errors(daemon):
    with DaemonClient() as client:
        unknown = _collect(client, model="nope")[-1]
        assert unknown["type"] == "error" and unknown["code"] == "unknown_model" and "dense" in unknown["message"]
        assert unknown["id"] is not None
        assert client.request("load", model="nope")["code"] == "unknown_model"
        bad = client.request("generate", messages=MESSAGES, temperature=-1)
        assert bad["code"] == "invalid_request" and "temperature" in bad["message"]
        long = _collect(client, model="dense", messages=[{"role": "user", "content": "word " * 5000}])[-1]
        assert long["code"] == "prompt_too_long"
        missing = _collect(client, model="/nowhere/at/all")[-1]
        assert missing["code"] == "model_not_ready" and "not found" in missing["message"]
        assert client.request("hello")["type"] == "hello"


def _rss_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_fuzzed_frames_never_kill_the_daemon(daemon):
    rng = random.Random(0)
    valid = pack({"id": "f", "op": "generate", "messages": MESSAGES, "max_tokens": 1})
    context = zmq.Context.instance()
    raw = context.socket(zmq.DEALER)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(DaemonClient().endpoint)

    def burst(count):
        for n in range(count):
            kind = n % 4
            if kind == 0:
                frame = bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 64)))
            elif kind == 1:
                frame = valid[:rng.randrange(1, len(valid))]
            elif kind == 2:
                mutated = bytearray(valid)
                mutated[rng.randrange(len(mutated))] = rng.getrandbits(8)
                frame = bytes(mutated)
            else:
                frame = msgpack.packb({"v": rng.choice([0, 1, 2, "1"]), "id": rng.choice(["a", 5, None]),
                                       "op": rng.choice(["generate", "load", "zzz", 3])})
            raw.send(frame)
        answered = 0
        while raw.poll(2000):
            answered += 1
            raw.recv()
        return answered

    burst(200)
    before = _rss_kib(daemon.pid)
    answered = burst(2000)
    assert answered >= 2000  # one reply per frame (a valid mutant may stream chunks too)
    raw.send(b"\x00" * (2 << 20))  # oversized: dropped by the socket or refused, never processed
    assert _rss_kib(daemon.pid) - before < 20_000
    raw.close()
    with DaemonClient() as client:
        assert client.request("hello")["type"] == "hello"


def test_restart_stale_socket_second_daemon_and_permissions(home, daemon):
    runtime = home / "runtime"
    assert stat.S_IMODE(runtime.stat().st_mode) == 0o700
    assert stat.S_IMODE((runtime / "mtpchatd.sock").stat().st_mode) == 0o600
    second = start_daemon_process(home)
    assert second.wait(timeout=30) == 1 and "another daemon is running" in second.stdout.read()
    with DaemonClient(timeout_s=30) as client:
        assert client.request("hello")["pid"] == daemon.pid
        daemon.send_signal(signal.SIGKILL)  # dies without cleaning up: the socket file stays
        daemon.wait()
        assert (runtime / "mtpchatd.sock").exists()
        replacement = start_daemon_process(home)
        try:
            # the same client reconnects by itself
            assert client.request("hello")["pid"] == replacement.pid
            wait_resident(client, ["dense"])
            assert _collect(client, max_tokens=4)[-1]["type"] == "done"
        finally:
            assert stop_process(replacement) == 0
    assert not (runtime / "mtpchatd.sock").exists()


def test_non_loopback_tcp_is_refused(home):
    process = start_daemon_process(home, "--listen", "tcp://0.0.0.0:5599")
    assert process.wait(timeout=30) == 2
    assert "CURVE" in process.stdout.read()


def test_daemon_overhead_bench_runs_the_same_request_both_ways(daemon, tiny):
    from transformers import AutoTokenizer

    from daemon.bench import bench_daemon_overhead

    path = tiny["qwen3.6-dense-tiny"]
    with DaemonClient() as client:
        result = bench_daemon_overhead(load_model(path, device="cpu"), AutoTokenizer.from_pretrained(path), client,
                                       "dense", max_tokens=24, draft=2, repeats=1)
    assert result["in_process_tok_s"] > 0 and result["daemon_tok_s"] > 0
    assert result["daemon_vs_in_process"] == result["daemon_tok_s"] / result["in_process_tok_s"]
