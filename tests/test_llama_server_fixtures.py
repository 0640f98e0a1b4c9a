"""llama-server's own responses, fed to the remote engine's reader (daemon/serve/remote_engine.py).

The files under tests/fixtures/llama_server/ are what scripts/check_llama_server.sh received from
llama-server (llama.cpp b11434) serving the demo GGUF with n-gram speculative decoding: a streamed chat
completion whose last chunk carries `timings` with `draft_n` / `draft_n_accepted`, and the error for a
prompt beyond the context. A loopback server replays each file byte for byte, so the reader meets
llama-server's framing, not a hand-made imitation. Fast: no llama.cpp needed."""

from __future__ import annotations

import contextlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from daemon.serve.remote_engine import RemoteError, RemoteStream
from mtpchat.config import ModelSettings
from mtpchat.protocol import GenerateRequest

FIXTURES = Path(__file__).parent / "fixtures" / "llama_server"
MESSAGES = [{"role": "user", "content": "Repeat this line five times."}]


@contextlib.contextmanager
def replaying(body: bytes, status: int, content_type: str, hold: threading.Event | None = None):
    """The URL of a server answering every POST with `status` and `body`, as recorded (once `hold` is
    set, when given)."""

    class Replay(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            if hold is not None:
                hold.wait(30)
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Replay)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/v1"
    finally:
        server.shutdown()
        server.server_close()


def read(url: str) -> RemoteStream:
    """A RemoteStream on `url`, read to its end."""
    settings = ModelSettings("llama", engine="openai", url=url, model="smollm2")
    stream = RemoteStream(settings, MESSAGES, GenerateRequest(id="t", messages=tuple(MESSAGES), max_tokens=48))
    for _ in stream:
        pass
    return stream


def events(raw: bytes) -> list[dict]:
    lines = [line[5:].strip() for line in raw.splitlines() if line.startswith(b"data:")]
    assert lines[-1] == b"[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def test_a_streamed_completion_gives_text_finish_and_llama_servers_draft_figures():
    raw = (FIXTURES / "chat_stream_ngram.sse").read_bytes()
    recorded = events(raw)
    timings = recorded[-1]["timings"]
    usage = next(e["usage"] for e in recorded if e.get("usage"))
    assert timings["draft_n"] > 0  # the recording did speculate
    with replaying(raw, 200, "text/event-stream") as url:
        result = read(url).result
    text = "".join(c["delta"].get("content") or "" for e in recorded for c in e["choices"])
    assert text and result.text == text
    assert result.finish_reason == "stop"  # the recording ends with finish_reason "stop"
    stats = result.stats.known
    assert stats["drafted_tokens"] == timings["draft_n"]
    assert stats["accepted_tokens"] == timings["draft_n_accepted"]
    assert stats["acceptance_rate"] == pytest.approx(timings["draft_n_accepted"] / timings["draft_n"])
    assert stats["decode_tok_s"] == timings["predicted_per_second"]
    assert (stats["prompt_tokens"], stats["generated_tokens"]) == (usage["prompt_tokens"], usage["completion_tokens"])
    assert stats["time_to_first_token_s"] > 0


def test_a_prompt_beyond_the_context_is_prompt_too_long():
    raw = (FIXTURES / "error_exceed_context.json").read_bytes()
    assert json.loads(raw)["error"]["type"] == "exceed_context_size_error"
    with replaying(raw, 400, "application/json") as url, pytest.raises(RemoteError) as caught:
        read(url)
    assert caught.value.code == "prompt_too_long" and "llama" in str(caught.value)


def test_a_quiet_remote_stream_never_holds_up_a_local_one_and_the_engine_waits_only_when_all_are_remote():
    """Stepping a remote stream takes what has arrived without waiting; the engine's round waits for
    commands (STEP_WAIT_S) only while every active stream is remote and none has a piece waiting."""
    from types import SimpleNamespace

    from daemon.serve.remote_engine import STEP_WAIT_S
    from daemon.serve.scheduler import WAIT_S, Scheduler
    from mtpchat.config import DaemonLimits

    raw = (FIXTURES / "chat_stream_ngram.sse").read_bytes()
    answer = threading.Event()

    with replaying(raw, 200, "text/event-stream", hold=answer) as url:
        settings = ModelSettings("llama", engine="openai", url=url, model="smollm2")
        remote = RemoteStream(settings, MESSAGES, GenerateRequest(id="t", messages=tuple(MESSAGES)))
        assert not remote.ready and next(remote).text == ""  # nothing yet: an empty step, no wait
        scheduler = Scheduler(None, None, "inproc://unused", DaemonLimits())
        resident = SimpleNamespace(state="resident")
        scheduler.generations = {(b"a", "r"): SimpleNamespace(entry=resident, stream=remote)}
        assert scheduler._idle_wait() == STEP_WAIT_S  # only a quiet remote stream: poll it
        scheduler.generations[(b"b", "l")] = SimpleNamespace(entry=resident, stream=iter(()))
        assert scheduler._idle_wait() == 0  # a local stream can step: no waiting
        del scheduler.generations[(b"b", "l")]
        answer.set()
        while not remote.ready:
            threading.Event().wait(0.01)
        assert scheduler._idle_wait() == 0  # a piece is waiting: take it now
        scheduler.generations.clear()
        assert scheduler._idle_wait() == WAIT_S  # nothing to step
        text = "".join(piece.text for piece in remote)
        assert text and remote.result.finish_reason == "stop"
