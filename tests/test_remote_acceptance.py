"""Acceptance figures of remote engines that do not put them in the stream: vLLM's Prometheus counters,
read around each request (daemon/serve/vllm_metrics.py), and SGLang's per-request `meta_info`.

A loopback stand-in for vLLM exposes the spec-decode counters as vLLM's prometheus_client does (a
`_total` series per engine core, `_created` beside it, accepted tokens per `position`) and moves them by
MOVED while it answers a chat completion. One stream alone gets exactly what moved; two overlapping
streams of the daemon get what moved in their window, marked approximate; an engine whose /metrics is
absent or lacks the counters gives no acceptance figures at all, not zeros."""

from __future__ import annotations

import contextlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from daemon.serve.remote_engine import RemoteStats, RemoteStream, remote_stats
from daemon.serve.vllm_metrics import EngineVisits, metrics_url, parse
from mtpchat.config import ModelSettings
from mtpchat.protocol import ACCEPTANCE_APPROXIMATE, RUNNING_STATS, GenerateRequest
from tests.helpers import wait_until

MESSAGES = [{"role": "user", "content": "Hello"}]
# what one request moves the counters by: 10 verification steps of 2 drafted tokens, 13 accepted
# (8 steps kept their first token, 5 their second)
MOVED = {"drafts": 10, "draft_tokens": 20, "accepted_tokens": 13, "per_pos": [8, 5]}
EXACT = {"drafts": 10, "drafted_tokens": 20, "accepted_tokens": 13, "acceptance_rate": 0.65,
         "mean_acceptance_length": 2.3, "accepted_per_position": [8, 5], "acceptance_per_position": [0.8, 0.5]}
ACCEPTANCE_KEYS = ("drafts", "drafted_tokens", "accepted_tokens", "acceptance_rate", "mean_acceptance_length",
                   "accepted_per_position", "acceptance_per_position", ACCEPTANCE_APPROXIMATE)
REPLY = [{"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
         {"choices": [{"index": 0, "delta": {"content": "Hi there"}}]},
         {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
         {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 24, "total_tokens": 33}}]


def exposition(counts: dict[str, dict], other: str) -> str:
    """/metrics as vLLM's prometheus_client writes it, for two engine cores."""
    lines = [other]
    for name in ("drafts", "draft_tokens", "accepted_tokens"):
        metric = f"vllm:spec_decode_num_{name}"
        lines += [f"# HELP {metric}_total Number of {name}.", f"# TYPE {metric}_total counter"]
        for engine, count in counts.items():
            labels = f'engine="{engine}",model_name="qwen3.6-27b"'
            lines += [f"{metric}_total{{{labels}}} {float(count[name])}", f"{metric}_created{{{labels}}} 1.7e+09"]
    metric = "vllm:spec_decode_num_accepted_tokens_per_pos"
    lines += [f"# TYPE {metric}_total counter"]
    for engine, count in counts.items():
        for position, value in enumerate(count["per_pos"]):
            lines.append(f'{metric}_total{{engine="{engine}",model_name="qwen3.6-27b",position="{position}"}} '
                         f"{float(value)}")
    return "\n".join(lines) + "\n"


OTHER = 'vllm:num_requests_running{engine="0",model_name="qwen3.6-27b"} 1.0'


@contextlib.contextmanager
def fake_vllm(metrics: str = "counters", hold: threading.Event | None = None):
    """(base URL, engine state) of a stand-in vLLM. `metrics`: "counters", "without" (a /metrics without
    spec-decode counters) or "absent" (404). Each chat completion moves engine 0's counters by MOVED
    (once `hold` is set, when given) and then streams REPLY."""
    counts = {"0": {"drafts": 500, "draft_tokens": 1000, "accepted_tokens": 610, "per_pos": [380, 230]},
              "1": {"drafts": 40, "draft_tokens": 80, "accepted_tokens": 50, "per_pos": [30, 20]}}
    state = {"counts": counts, "posts": 0, "lock": threading.Lock()}

    class Engine(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path != "/metrics" or metrics == "absent":
                self._send(404, "text/plain", b"Not Found")
                return
            with state["lock"]:
                text = exposition(counts, OTHER) if metrics == "counters" else OTHER + "\n"
            self._send(200, "text/plain; version=0.0.4", text.encode())

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            with state["lock"]:
                state["posts"] += 1
            if hold is not None:
                hold.wait(30)
            with state["lock"]:
                engine = counts["0"]
                for name in ("drafts", "draft_tokens", "accepted_tokens"):
                    engine[name] += MOVED[name]
                engine["per_pos"] = [a + b for a, b in zip(engine["per_pos"], MOVED["per_pos"])]
            body = b"".join(b"data: " + json.dumps(event).encode() + b"\n\n" for event in REPLY) + b"data: [DONE]\n\n"
            self._send(200, "text/event-stream", body)

        def _send(self, status: int, kind: str, body: bytes):
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Engine)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/v1", state
    finally:
        server.shutdown()
        server.server_close()


def stream(url: str, visits: EngineVisits | None = None) -> RemoteStream:
    settings = ModelSettings("remote", engine="openai", url=url, model="qwen3.6-27b")
    return RemoteStream(settings, MESSAGES, GenerateRequest(id="t", messages=tuple(MESSAGES)), visits)


def read_to_end(remote: RemoteStream) -> dict:
    """The done reply's stats of a stream stepped to its end, as the engine loop steps it."""
    while True:
        try:
            next(remote)
        except StopIteration:
            return remote.result.stats.as_dict()
        threading.Event().wait(0.005)


def test_one_stream_alone_gets_exactly_what_vllms_counters_moved():
    with fake_vllm() as (url, _):
        stats = read_to_end(stream(url))
    assert {key: stats[key] for key in ACCEPTANCE_KEYS if key in stats} == EXACT  # and not approximate
    assert stats["generated_tokens"] == 24 and stats["prompt_tokens"] == 9


def test_overlapping_streams_to_one_engine_are_marked_approximate_and_a_later_lone_one_is_exact():
    visits = EngineVisits()  # the scheduler's: shared by all its remote streams
    hold = threading.Event()
    with fake_vllm(hold=hold) as (url, state):
        first = stream(url, visits)
        wait_until(lambda: state["posts"] == 1, 30)
        second = stream(url, visits)  # starts while the first is at the engine
        wait_until(lambda: state["posts"] == 2, 30)
        hold.set()
        both = [read_to_end(first), read_to_end(second)]
        alone = read_to_end(stream(url, visits))
    for stats in both:
        assert stats[ACCEPTANCE_APPROXIMATE] is True
        assert stats["drafts"] == 2 * MOVED["drafts"]  # the other stream's steps are in the counters too
        assert stats["accepted_per_position"] == [2 * count for count in MOVED["per_pos"]]
    assert {key: alone[key] for key in ACCEPTANCE_KEYS if key in alone} == EXACT
    assert first.metrics_url == second.metrics_url == url.removesuffix("/v1") + "/metrics"


@pytest.mark.parametrize("metrics", ["absent", "without"])
def test_an_engine_without_the_counters_gives_unknown_acceptance_not_zero(metrics):
    with fake_vllm(metrics) as (url, state):
        stats = read_to_end(stream(url))
    assert state["posts"] == 1 and stats["generated_tokens"] == 24  # the reply itself is whole
    assert not set(ACCEPTANCE_KEYS) & set(stats)


def test_the_exposition_parser_sums_engine_cores_and_reads_only_the_totals():
    counts = {"0": {"drafts": 5, "draft_tokens": 10, "accepted_tokens": 7, "per_pos": [4, 3]},
              "1": {"drafts": 3, "draft_tokens": 6, "accepted_tokens": 2, "per_pos": [2, 0]}}
    counters = parse(exposition(counts, OTHER).replace("} 5.0", "} 5.0 1718000000000"))  # a timestamp too
    assert counters.totals == {"drafts": 8.0, "drafted_tokens": 16.0, "accepted_tokens": 9.0}  # no `_created`
    assert counters.per_position == {0: 6.0, 1: 3.0}
    assert parse(OTHER) is None and parse("vllm:spec_decode_num_drafts 3.0") is None  # no `_total`: not these
    assert metrics_url("http://gpu:8000/v1/") == "http://gpu:8000/metrics"
    assert metrics_url("https://gpu/proxy/v1") == "https://gpu/proxy/metrics"


def test_sglang_meta_info_gives_verify_steps_and_acceptance():
    """SGLang puts `meta_info` in a choice of a non-streamed response asked with `return_meta_info`."""
    current = {"spec_verify_ct": 10, "spec_num_correct_drafts": 13, "spec_num_proposed_drafts": 20,
               "spec_correct_drafts_histogram": [2, 3, 5], "spec_accept_length": 2.4, "completion_tokens": 24}
    event = {"choices": [{"index": 0, "message": {"content": "x"}, "meta_info": current}],
             "usage": {"prompt_tokens": 9, "completion_tokens": 24}}
    stats = remote_stats(event)
    assert {key: stats[key] for key in ACCEPTANCE_KEYS if key in stats} == EXACT
    older = {"spec_verify_ct": 10, "spec_accept_token_num": 13, "spec_draft_token_num": 20, "completion_tokens": 24}
    assert remote_stats({"choices": [{"meta_info": older}]}) == {
        "drafts": 10, "drafted_tokens": 20, "accepted_tokens": 13, "acceptance_rate": 0.65,
        "mean_acceptance_length": 2.3}
    assert remote_stats({"choices": [{"meta_info": {"spec_verify_ct": 10}}]}) == {"drafts": 10}
    assert remote_stats({"choices": [{"meta_info": {"completion_tokens": 24}}]}) == {}  # no speculation


def test_the_approximate_mark_goes_out_with_running_and_final_stats():
    stats = RemoteStats({"acceptance_rate": 0.6, ACCEPTANCE_APPROXIMATE: True})
    assert stats.as_dict(RUNNING_STATS) == stats.as_dict() == {"acceptance_rate": 0.6, ACCEPTANCE_APPROXIMATE: True}
    assert RemoteStats({"acceptance_rate": 0.6}).as_dict() == {"acceptance_rate": 0.6}

