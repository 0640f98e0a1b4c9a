"""The socket loop never waits on the engine: while a forward runs, hello, status, models and cancel
are answered; a long prompt prefills in chunks between other streams' steps; beyond the limits a
generation is refused with `busy`.

A real DaemonServer on a real socket, in this process, with the tiny dense model. Its forward is wrapped
by a gate (fault injection: a step that takes as long as the test wants), so "answered while a forward
runs" is shown by holding the forward until the answer has arrived — no timing in the assertions.
"""

from __future__ import annotations

import threading

import pytest
import zmq

from daemon.serve.registry import ModelRegistry
from daemon.serve.server import DaemonServer
from mtpchat.config import Config, DaemonLimits, ModelSettings
from mtpchat.protocol import pack, unpack
from tests.helpers import wait_until

HOLD_S = 60  # a held forward's own limit: the test releases it long before, unless it fails


class Gate:
    """Wraps a model's forward: records each call's token count; while `hold`, a forward waits for `release`."""

    def __init__(self, model):
        self.calls: list[int] = []
        self.hold = False
        self.entered, self.release, self.left = threading.Event(), threading.Event(), threading.Event()
        forward = model.forward

        def gated(input_ids, *args, **kwargs):
            self.calls.append(input_ids.shape[1])
            if self.hold:
                self.entered.set()
                self.release.wait(HOLD_S)
                self.left.set()
            return forward(input_ids, *args, **kwargs)

        model.forward = gated


@pytest.fixture
def serve(tiny, tmp_path):
    """serve(limits) -> (gate, client socket) for a running in-process server; stopped at the end."""
    running = []

    def start(limits: DaemonLimits = DaemonLimits()):
        settings = ModelSettings("dense", str(tiny["qwen3.6-dense-tiny"]), draft=0)
        registry = ModelRegistry(Config(models={"dense": settings}, default="dense", daemon=limits))
        entry = registry.load("dense")
        wait_until(lambda: entry.state == "resident", 60)
        server = DaemonServer(f"ipc://{tmp_path}/socket", registry, limits=limits)
        thread = threading.Thread(target=server.serve_forever)
        thread.start()
        client = zmq.Context.instance().socket(zmq.DEALER)
        client.setsockopt(zmq.LINGER, 0)
        client.connect(f"ipc://{tmp_path}/socket")
        running.append((server, thread, client))
        return Gate(entry.model), client

    yield start
    for server, thread, client in running:
        client.close()
        server.stopping = True
        thread.join(HOLD_S)


def _send(client, request_id: str, op: str, **fields) -> None:
    client.send(pack({"id": request_id, "op": op, **fields}))


def _next(client, request_id: str, timeout_ms: int = 30_000) -> dict:
    """The next reply to `request_id` (others are skipped)."""
    while True:
        assert client.poll(timeout_ms), f"no reply to {request_id!r}"
        message = unpack(client.recv())
        if message.get("id") == request_id:
            return message


def _terminal(client, request_id: str) -> dict:
    while (message := _next(client, request_id))["type"] == "chunk":
        pass
    return message


def _ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def test_hello_status_models_and_cancel_are_answered_while_a_forward_runs(serve):
    gate, client = serve()
    gate.hold = True
    _send(client, "g", "generate", messages=_ask("Hello"), max_tokens=50)
    assert gate.entered.wait(30)
    try:
        _send(client, "h", "hello")
        assert _next(client, "h")["type"] == "hello"
        _send(client, "s", "status")
        status = _next(client, "s")
        assert status["type"] == "status" and status["active_streams"] == 1
        _send(client, "m", "models")
        assert _next(client, "m")["models"][0]["state"] == "resident"
        _send(client, "c", "cancel", target="g")
        assert _next(client, "c") == {"v": 1, "id": "c", "type": "ok", "cancelled": True}
        assert not gate.left.is_set()  # all of it answered with the forward still held
    finally:
        gate.release.set()
    assert _terminal(client, "g")["type"] == "cancelled"


def test_a_long_prompt_prefills_in_chunks_between_another_streams_steps(serve):
    gate, client = serve(DaemonLimits(prefill_chunk=16))
    _send(client, "short", "generate", messages=_ask("Hi"), max_tokens=120, stop=[])
    assert _next(client, "short")["type"] == "chunk"  # decoding
    before = len(gate.calls)
    _send(client, "long", "generate", messages=_ask("word " * 60), max_tokens=1)
    long_end = _terminal(client, "long")
    assert long_end["type"] == "done" and long_end["stats"]["prompt_tokens"] > 3 * 16
    after = gate.calls[before:]
    chunks = [i for i, n in enumerate(after) if n == 16]
    assert len(chunks) >= 3
    # between any two prefill chunks of the long prompt the short stream took a decode step
    assert all(1 in after[a + 1:b] for a, b in zip(chunks, chunks[1:])), after
    assert _terminal(client, "short")["type"] == "done"


def test_generations_beyond_the_limits_are_refused_with_busy(serve):
    gate, client = serve(DaemonLimits(max_streams=1, max_queued=1))
    gate.hold = True
    _send(client, "first", "generate", messages=_ask("Hello"), max_tokens=3)
    assert gate.entered.wait(30)
    try:
        _send(client, "second", "generate", messages=_ask("Hello"), max_tokens=3)  # waits for the slot
        _send(client, "third", "generate", messages=_ask("Hello"), max_tokens=3)
        refused = _next(client, "third")
        assert refused["type"] == "error" and refused["code"] == "busy" and "max_streams 1" in refused["message"]
        _send(client, "s", "status")
        assert _next(client, "s")["limits"]["max_queued"] == 1
    finally:
        gate.hold = False
        gate.release.set()
    assert _terminal(client, "first")["type"] == "done"
    assert _terminal(client, "second")["type"] == "done"
    _send(client, "fourth", "generate", messages=_ask("Hello"), max_tokens=2)  # room again
    assert _terminal(client, "fourth")["type"] == "done"
