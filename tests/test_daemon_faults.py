"""One request must never take the daemon down: a fault ends only the request or stream it happened
in (`internal`), every setting the protocol accepts decodes, and the other streams and clients go on.

A real `mtpchatd` with the tiny dense model twice: `dense` (default) and `strict`, whose chat template
raises as Qwen3's does when no user message is given. A load that runs out of memory is injected into an
in-process daemon (its registry's loader monkeypatched): that model fails alone, saying why and what to do,
while the other one streams on."""

from __future__ import annotations

import json
import shutil
import threading

import msgpack
import pytest
import torch
import zmq

from daemon.serve.server import DaemonServer
from mtpchat.client import DaemonClient
from mtpchat.protocol import MAX_FRAME_BYTES, pack, unpack
from tests.helpers import running_daemon, stop_process, wait_resident

MESSAGES = [{"role": "user", "content": "Hello there"}]
# each accepted by the protocol, each once a NaN distribution that killed the daemon in torch.multinomial
SAMPLING_PROBES = [{"temperature": 1e-40}, {"temperature": 1e-50}, {"temperature": 5e-324},
                   {"temperature": 1.0, "top_p": 1e-300}, {"temperature": 1.0, "top_p": 1e-46}]
NO_USER_QUERY = ("{%- if messages | selectattr('role', 'equalto', 'user') | list | length == 0 -%}"
                 "{{- raise_exception('No user query found in messages.') -}}{%- endif -%}")


def _frame(value) -> bytes:
    return msgpack.packb(value)


def _nested(depth: int):
    value = []
    for _ in range(depth):
        value = [value]
    return value


def _generate(**fields) -> bytes:
    return _frame({"v": 1, "id": "probe", "op": "generate", "messages": MESSAGES, "max_tokens": 4, **fields})


# wire inputs found by probing the daemon from outside (issue 13), each to be refused with a clear error
PROBES: dict[str, list[bytes]] = {
    "empty frame": [b""],
    "not msgpack": [b"\xc1"],
    "text": [b"GET / HTTP/1.1\r\n\r\n"],
    "truncated map": [_frame({"v": 1, "id": "x", "op": "hello"})[:-3]],
    "a list": [_frame([1, 2, 3])],
    "an int": [_frame(5)],
    "no version": [_frame({"id": "x", "op": "hello"})],
    "version 2": [_frame({"v": 2, "id": "x", "op": "hello"})],
    "version as text": [_frame({"v": "1", "id": "x", "op": "hello"})],
    "unknown op": [_frame({"v": 1, "id": "x", "op": "fly"})],
    "op not text": [_frame({"v": 1, "id": "x", "op": 5})],
    "id not text": [_frame({"v": 1, "id": [1], "op": "hello"})],
    "over-deep nesting": [_frame({"v": 1, "id": "x", "op": "hello", "x": _nested(500)})],
    "ext type": [_frame({"v": 1, "id": "x", "op": "hello", "x": msgpack.ExtType(1, b"boom")})],
    "two frames": [_frame({"v": 1, "id": "x", "op": "hello"}), b"extra"],
    "no messages": [_frame({"v": 1, "id": "x", "op": "generate"})],
    "messages not a list": [_generate(messages="hi")],
    "bad role": [_generate(messages=[{"role": "root", "content": "hi"}])],
    "content not text": [_generate(messages=[{"role": "user", "content": 7}])],
    "negative max_tokens": [_generate(max_tokens=-1)],
    "max_tokens as text": [_generate(max_tokens="many")],
    "NaN temperature": [_generate(temperature=float("nan"))],
    "infinite temperature": [_generate(temperature=float("inf"))],
    "top_p zero": [_generate(top_p=0.0)],
    "top_p above one": [_generate(top_p=2.0)],
    "negative top_k": [_generate(top_k=-1)],
    "seed as text": [_generate(seed="x")],
    "draft 99": [_generate(draft=99)],
    "empty stop string": [_generate(stop=[""])],
    "unknown model": [_generate(model="nope")],
    "a path that is no checkpoint": [_generate(model="/nowhere/at/all")],
    "prompt too long": [_generate(messages=[{"role": "user", "content": "word " * 5000}])],
    "load nothing": [_frame({"v": 1, "id": "x", "op": "load", "model": "nope"})],
    "load a bad path": [_frame({"v": 1, "id": "x", "op": "load", "model": "/nowhere/x"})],
    "unload nothing": [_frame({"v": 1, "id": "x", "op": "unload", "model": "nope"})],
    "cancel without target": [_frame({"v": 1, "id": "x", "op": "cancel"})],
    "template that raises": [_generate(model="strict", messages=[{"role": "assistant", "content": "Hi"}])],
}
DOCUMENTED_CODES = {"frame_too_large", "malformed_frame", "unsupported_version", "unknown_op", "invalid_request",
                    "unknown_model", "model_not_ready", "prompt_too_long", "busy", "internal"}


@pytest.fixture
def daemon(tmp_path, tiny, monkeypatch):
    strict = tmp_path / "strict"
    shutil.copytree(tiny["qwen3.6-dense-tiny"], strict)
    tokenizer_config = json.loads((strict / "tokenizer_config.json").read_text())
    tokenizer_config["chat_template"] = NO_USER_QUERY + tokenizer_config["chat_template"]
    (strict / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    home = tmp_path / "h"
    (home / "config").mkdir(parents=True)
    (home / "config" / "config.toml").write_text(
        f'default = "dense"\n[models.dense]\npath = "{tiny["qwen3.6-dense-tiny"]}"\n'
        f'[models.strict]\npath = "{strict}"\n')
    monkeypatch.setenv("MTPCHAT_HOME", str(home))
    with running_daemon(home, ["dense", "strict"]) as process:
        yield process


def _recv(socket, timeout_ms=30_000) -> dict:
    assert socket.poll(timeout_ms), "no reply from the daemon"
    return unpack(socket.recv())


def _terminals(socket, ids: set[str]) -> dict[str, dict]:
    """Read until every id in `ids` has had its terminal reply; those replies by id."""
    ended = {}
    while set(ended) != ids:
        message = _recv(socket)
        if message["type"] != "chunk":
            ended[message["id"]] = message
    return ended


def test_faulty_requests_end_alone_while_another_stream_completes(daemon):
    with DaemonClient() as normal, DaemonClient() as prober:
        normal.socket.send(pack({"id": "normal", "op": "generate", "messages": MESSAGES, "max_tokens": 200,
                                 "draft": 0}))
        assert _recv(normal.socket)["type"] == "chunk"  # it is streaming when the probes arrive
        for index, fields in enumerate(SAMPLING_PROBES):
            prober.socket.send(pack({"id": f"p{index}", "op": "generate", "messages": MESSAGES, "max_tokens": 8,
                                     **fields}))
        prober.socket.send(pack({"id": "template", "op": "generate", "model": "strict",
                                 "messages": [{"role": "assistant", "content": "Hi"}]}))
        ended = _terminals(prober.socket, {f"p{i}" for i in range(len(SAMPLING_PROBES))} | {"template"})
        failed = ended.pop("template")
        assert failed["type"] == "error" and failed["code"] == "internal"
        assert failed["message"] == "TemplateError: No user query found in messages."
        assert all(m["type"] == "done" and m["finish_reason"] in ("stop", "length") for m in ended.values()), ended
        assert _terminals(normal.socket, {"normal"})["normal"]["type"] == "done"
        assert prober.request("hello")["type"] == "hello"
    assert stop_process(daemon) == 0
    log = daemon.stdout.read()
    assert "Traceback" in log and "No user query found in messages." in log


def test_an_oversized_frame_is_refused_and_the_same_clients_stream_still_ends(daemon):
    with DaemonClient() as client:
        client.socket.send(pack({"id": "g", "op": "generate", "messages": MESSAGES, "max_tokens": 200, "draft": 0}))
        assert _recv(client.socket)["type"] == "chunk"
        oversized = msgpack.packb({"v": 1, "id": "big", "op": "hello", "client": "x" * (3 * MAX_FRAME_BYTES // 2)})
        client.socket.send(oversized)  # 1.5 MiB: over the protocol's limit, within what the daemon reads
        ended = _terminals(client.socket, {None, "g"})
        assert ended[None]["type"] == "error" and ended[None]["code"] == "frame_too_large"
        assert ended["g"]["type"] == "done"
        assert client.request("hello")["type"] == "hello"


def test_every_probe_is_answered_with_a_clear_error_and_the_daemon_keeps_serving(daemon):
    with DaemonClient() as client:
        for name, frames in PROBES.items():
            client.socket.send_multipart(frames)
            answer = _recv(client.socket)
            while answer["type"] == "chunk":  # none expected: a probe that streams still ends in an error
                answer = _recv(client.socket)
            assert answer["type"] == "error", (name, answer)
            assert answer["code"] in DOCUMENTED_CODES and len(answer["message"]) > 10, (name, answer)
            assert client.request("hello")["type"] == "hello", name
        reply = list(client.generate(messages=MESSAGES, max_tokens=4))[-1]
        assert reply["type"] == "done"
    assert daemon.poll() is None


class BrokenRegistry:
    """A registry whose every description fails: a bug in answering `models`."""
    def describe(self):
        raise RuntimeError("disk on fire")


def test_a_failure_answering_a_request_is_internal_and_the_next_one_is_answered(capsys):
    server = DaemonServer("tcp://127.0.0.1:*", BrokenRegistry())
    client = server.context.socket(zmq.DEALER)
    client.connect(server.socket.getsockopt(zmq.LAST_ENDPOINT).decode())
    try:
        for request in ({"id": "m", "op": "models"}, {"id": "h", "op": "hello"}):
            client.send(pack(request))
            assert server.socket.poll(10_000)
            server._receive()
            assert client.poll(10_000)
            answers = unpack(client.recv())
            assert answers["id"] == request["id"]
            if request["op"] == "models":
                assert answers["type"] == "error" and answers["code"] == "internal"
                assert answers["message"] == "RuntimeError: disk on fire"
        assert answers["type"] == "hello"
        assert "Traceback" in capsys.readouterr().err
    finally:
        client.close(linger=0)
        server.close()


def test_a_load_that_runs_out_of_memory_fails_alone_while_the_other_model_serves(tmp_path, tiny, monkeypatch):
    """The `moe` model's weights do not fit when loaded (a CUDA OOM, injected: the placement plan passed):
    its load fails with the error and advice on the wire and in status, a `dense` stream running meanwhile
    completes, and once memory is there (the fault removed) a new request loads `moe` and it answers."""
    from daemon.serve.registry import OUT_OF_MEMORY_ADVICE, ModelRegistry
    from daemon.weights import chat_model
    from mtpchat.config import load_config
    from mtpchat.paths import default_endpoint

    oom = "CUDA out of memory. Tried to allocate 2.00 GiB"
    real_load, loads = chat_model.load_chat_model, []

    def load(path, **kwargs):
        loads.append(str(path))
        if str(path) == str(tiny["qwen3.6-moe-tiny"]) and not fixed.is_set():
            raise torch.OutOfMemoryError(oom)
        return real_load(path, **kwargs)

    fixed = threading.Event()
    monkeypatch.setattr(chat_model, "load_chat_model", load)  # the registry imports it per load
    home = tmp_path / "h"
    (home / "config").mkdir(parents=True)
    (home / "config" / "config.toml").write_text(
        f'default = "dense"\n[models.dense]\npath = "{tiny["qwen3.6-dense-tiny"]}"\n'
        f'[models.moe]\npath = "{tiny["qwen3.6-moe-tiny"]}"\nload_at_start = false\n')
    monkeypatch.setenv("MTPCHAT_HOME", str(home))
    config = load_config()
    registry = ModelRegistry(config)
    registry.load("dense")
    server = DaemonServer(default_endpoint(), registry, limits=config.daemon)
    serving = threading.Thread(target=server.serve_forever, name="test-daemon")
    serving.start()
    try:
        with DaemonClient() as streaming, DaemonClient() as client:
            wait_resident(client, ["dense"])
            streaming.socket.send(pack({"id": "long", "op": "generate", "messages": MESSAGES, "max_tokens": 200,
                                        "draft": 0}))
            assert _recv(streaming.socket)["type"] == "chunk"  # streaming when the load fails
            failed = list(client.generate(model="moe", messages=MESSAGES, max_tokens=4))[-1]
            assert failed["type"] == "error" and failed["code"] == "model_not_ready"
            assert failed["message"] == f"model 'moe' failed to load: OutOfMemoryError: {oom}{OUT_OF_MEMORY_ADVICE}"
            assert "unload another model" in failed["message"]  # what to do next
            models = {m["name"]: m for m in client.request("status")["models"]}
            assert models["moe"]["state"] == "failed" and oom in models["moe"]["error"]
            assert models["dense"]["state"] == "resident"
            done = _terminals(streaming.socket, {"long"})["long"]
            assert done["type"] == "done" and done["stats"]["generated_tokens"] > 1
            assert list(client.generate(messages=MESSAGES, max_tokens=4))[-1]["type"] == "done"
            fixed.set()  # memory freed elsewhere: a new request for the failed model loads it again
            assert list(client.generate(model="moe", messages=MESSAGES, max_tokens=4))[-1]["type"] == "done"
            assert loads.count(str(tiny["qwen3.6-moe-tiny"])) == 2
    finally:
        server.stopping = True
        serving.join(60)
    assert not serving.is_alive()
