"""The daemon as users meet it: a real `mtpchatd` process on a real ipc socket, real clients.

Two tiny models resident, alternating requests, concurrent and cancelled streams, vanished clients,
restarts, stale sockets, a second daemon, permissions, refused TCP, and a fuzz of bad frames."""

from __future__ import annotations

import os
import random
import signal
import stat
import subprocess
import sys
import time

import msgpack
import pytest
import torch
import zmq

from daemon.weights.loader import load_model
from mtpchat.client import DaemonClient
from mtpchat.protocol import pack, unpack
from tests.helpers import (
    chat_prompt,
    decode,
    running_daemon,
    start_daemon_process,
    stop_process,
    wait_resident,
)

MESSAGES = [{"role": "user", "content": "Hello there"}]


@pytest.fixture
def daemon(home):
    with running_daemon(home, ["dense", "moe"]) as process:
        yield process


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
        tokens = decode(model, chat_prompt(path, "Hello there"), 16, stop)
        expected[name] = [t for t in tokens if t not in stop]
    with DaemonClient() as client:
        for name in ("dense", "moe", "dense", "moe"):
            for draft in (0, 3):
                replies = _collect(client, model=name, max_tokens=16, draft=draft, temperature=0)
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


def test_sampling_defaults_are_the_models_shown_and_applied_per_thinking_mode(daemon, tiny):
    from daemon.engine.sampling import SamplingParams
    from daemon.weights.sampling_defaults import QWEN_INSTRUCT

    path = tiny["qwen3.6-dense-tiny"]
    with DaemonClient() as client:
        dense = next(m for m in client.request("models")["models"] if m["name"] == "dense")
        # the tiny checkpoint's generation_config.json gives none: greedy; a Qwen3.6 layout without thinking: its card's
        assert dense["sampling"] == {"temperature": 0.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0,
                                     "repetition_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0}
        assert dense["sampling_no_thinking"] == {**dense["sampling"], **QWEN_INSTRUCT}
        assert dense["thinking_mode"] is True  # the tiny Qwen-style template reads enable_thinking
        done = _collect(client, model="dense", max_tokens=16, thinking=False, seed=3, top_k=5)[-1]
    model = load_model(path, device="cpu")
    stop = set(model.config.eos_token_ids)
    sampling = SamplingParams(**{**QWEN_INSTRUCT, "top_k": 5}, seed=3)  # the request's top_k over the card's
    tokens = decode(model, chat_prompt(path, "Hello there", enable_thinking=False), 16, stop, draft_k=2,
                    sampling=sampling)
    assert done["token_ids"] == [t for t in tokens if t not in stop]


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
        # 3 x 40 tokens of a tiny model take ~1 s; the bound only has to outlast a machine shared with
        # other test runs (two suites on 2 cores once took over 60 s here)
        deadline = time.monotonic() + 300
        while pending and time.monotonic() < deadline:
            for socket, _ in poller.poll(1000):
                i = next(n for n, c in enumerate(clients) if c.socket is socket)
                message = unpack(socket.recv())
                arrivals.append((i, message["type"]) if message["type"] != "error" else (i, message))
                if message["type"] in ("done", "error", "cancelled"):
                    pending.discard(i)
        assert not pending and all(kind == "done" for _, kind in arrivals if kind != "chunk"), arrivals
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
        assert missing["code"] == "unknown_model" and "not found" in missing["message"]  # refused, never added
        assert "/nowhere/at/all" not in {m["name"] for m in client.request("models")["models"]}
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


def test_non_loopback_tcp_needs_curve_keys_and_admits_only_authorized_clients(home, tmp_path, monkeypatch):
    import shutil
    import socket

    from mtpchat.client import DaemonUnavailable
    from mtpchat.curve import create_keys

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    refused = start_daemon_process(home, "--listen", f"tcp://0.0.0.0:{port}")
    assert refused.wait(timeout=30) == 2 and "mtpchatd keys" in refused.stdout.read()

    keys = subprocess.run([sys.executable, "-m", "daemon", "keys"], env=dict(os.environ, MTPCHAT_HOME=str(home)),
                          capture_output=True, text=True, check=True)
    assert "server public key" in keys.stdout
    secret = home / "config" / "curve" / "server.key_secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    process = start_daemon_process(home, "--listen", f"tcp://0.0.0.0:{port}")
    endpoint = f"tcp://127.0.0.1:{port}"
    try:
        with DaemonClient(endpoint, timeout_s=30) as client:  # this machine's client key is authorized
            assert client.request("status")["curve"] is True
            wait_resident(client, ["dense"])
            assert _collect(client, max_tokens=4)[-1]["type"] == "done"
        stranger = tmp_path / "stranger"
        monkeypatch.setenv("MTPCHAT_HOME", str(stranger))
        create_keys()  # its own client key, which the daemon has never seen
        shutil.copyfile(home / "config" / "curve" / "server.key", stranger / "config" / "curve" / "server.key")
        with DaemonClient(endpoint, timeout_s=2) as client, pytest.raises(DaemonUnavailable):
            client.request("hello")
        monkeypatch.setenv("MTPCHAT_HOME", str(tmp_path / "no-keys"))
        with DaemonClient(endpoint, timeout_s=2) as client, pytest.raises(DaemonUnavailable):
            client.request("hello")  # plain text to a CURVE server: never answered
    finally:
        assert stop_process(process) == 0


def test_daemon_overhead_bench_runs_the_same_request_both_ways(daemon, tiny):
    from transformers import AutoTokenizer

    from daemon.tools.bench import bench_daemon_overhead

    path = tiny["qwen3.6-dense-tiny"]
    with DaemonClient() as client:
        result = bench_daemon_overhead(load_model(path, device="cpu"), AutoTokenizer.from_pretrained(path), client,
                                       "dense", max_tokens=24, draft=2, repeats=1)
    assert result["in_process_tok_s"] > 0 and result["daemon_tok_s"] > 0
    assert result["daemon_vs_in_process"] == result["daemon_tok_s"] / result["in_process_tok_s"]


def test_placement_is_planned_shown_and_a_model_that_cannot_fit_fails_alone(home, tiny):
    """`max_memory` on the CPU leaves room for the dense model only: the MoE fails before reading a
    weight, saying how much is missing, while the dense model keeps serving."""
    from daemon.serve.footprint import checkpoint_footprint
    from mtpchat.config import format_size

    dense = checkpoint_footprint(tiny["qwen3.6-dense-tiny"], torch.float32, 32768)[0].total
    moe = checkpoint_footprint(tiny["qwen3.6-moe-tiny"], torch.float32, 32768)[0].total
    (home / "config" / "config.toml").write_text(
        f'default = "dense"\n[models.dense]\npath = "{tiny["qwen3.6-dense-tiny"]}"\n'
        f'[models.moe]\npath = "{tiny["qwen3.6-moe-tiny"]}"\nload_at_start = false\n'
        f'[devices.cpu]\nmax_memory = {dense + moe // 2}\n')
    process = start_daemon_process(home)
    try:
        with DaemonClient(timeout_s=30) as client:
            wait_resident(client, ["dense"])
            failed = _collect(client, model="moe", max_tokens=4)[-1]
            assert failed["type"] == "error" and failed["code"] == "model_not_ready"
            assert f"needs {format_size(moe)}" in failed["message"] and "missing" in failed["message"]
            models = {m["name"]: m for m in client.request("status")["models"]}
            assert models["moe"]["state"] == "failed" and "missing" in models["moe"]["error"]
            [row] = models["dense"]["placement"]
            assert row["device"] == "cpu" and row["bytes"] == dense and row["embedding"] and row["head"]
            assert models["dense"]["context"] == 4096  # the configured 32768, capped at the model's limit
            assert _collect(client, model="dense", max_tokens=4)[-1]["type"] == "done"
    finally:
        assert stop_process(process) == 0


def test_a_follow_up_turn_prefills_only_its_new_tokens(daemon):
    with DaemonClient() as client:
        first = _collect(client, max_tokens=6, draft=2)[-1]
        history = MESSAGES + [{"role": "assistant", "content": first["text"]},
                              {"role": "user", "content": "And then?"}]
        second = list(client.generate(messages=history, max_tokens=6, draft=2))[-1]
        fresh = list(client.generate(messages=history, max_tokens=6, draft=2, model="moe"))[-1]
        status = client.request("status")
    assert first["stats"]["cached_tokens"] == 0 and fresh["stats"]["cached_tokens"] == 0  # other model
    stats = second["stats"]
    assert 0 < stats["cached_tokens"] < stats["prompt_tokens"]
    assert stats["prefill_tokens"] == stats["prompt_tokens"] - stats["cached_tokens"]
    cache = status["state_cache"]
    assert cache["hits"] >= 1 and cache["states"] >= 3
    [cpu] = [d for d in cache["devices"] if d["device"] == "cpu"]
    assert 0 < cpu["used"] <= cpu["budget"] == 4 * 2**30
