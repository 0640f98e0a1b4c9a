"""A model served by another engine over the OpenAI HTTP API: vLLM, SGLang, llama-server, another mtpchatd.

A config entry with `engine = "openai"` names a URL and the remote model instead of a checkpoint
(mtpchat.config.ModelSettings); the registry marks it resident at once and the scheduler steps a
`RemoteStream` where it would step a local `ReplyStream`. The HTTP stream is read on a thread of its
own, so a slow remote never holds the engine thread: each step takes what arrived without waiting,
and only while every active stream is remote and quiet does the engine wait (STEP_WAIT_S at most).
Cancelling shuts the connection, which ends the remote generation (servers cancel on disconnect). Remote
HTTP errors become the wire's error codes (RemoteError).

Only what the remote reports is passed on: text (no token ids — the OpenAI API gives none), usage, and
speculative-decoding figures where the server gives them — another mtpchatd's `mtp` field, llama-server's
`timings` (`draft_n`, `draft_n_accepted`), SGLang's `meta_info` where a response carries it, or else the
movement of vLLM's Prometheus counters over the request (daemon/serve/vllm_metrics.py, marked approximate
when another of this daemon's streams to the same engine overlapped); otherwise those stats are absent,
not zero. The time to first token is measured here.
"""

from __future__ import annotations

import http.client
import json
import queue
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from daemon.engine.reply import Piece
from daemon.serve.vllm_metrics import EngineVisits, Visit, metrics_url, request_stats, scrape
from mtpchat.config import ModelSettings
from mtpchat.protocol import (
    ACCEPTANCE_APPROXIMATE,
    ACCEPTANCE_PER_POSITION,
    ACCEPTANCE_RATE,
    ACCEPTED_PER_POSITION,
    ACCEPTED_TOKENS,
    CACHED_TOKENS,
    DECODE_TOK_S,
    DRAFTED_TOKENS,
    DRAFTS,
    GENERATED_TOKENS,
    MEAN_ACCEPTANCE_LENGTH,
    PREFILL_TOK_S,
    PROMPT_TOKENS,
    STATS,
    TIME_TO_FIRST_TOKEN_S,
    GenerateRequest,
    ProtocolError,
)

STEP_WAIT_S = 0.02  # how long the engine waits for pieces when only remote streams are active
CONNECT_TIMEOUT_S = 30.0
FINISH = {"length": "length"}  # every other remote finish reason ends the turn: "stop"
# SGLang's meta_info names, current first, then older releases' (its tokenizer manager sets them)
SGLANG_ACCEPTED = ("spec_num_correct_drafts", "spec_accepted_drafts", "spec_accept_token_num")
SGLANG_DRAFTED = ("spec_num_proposed_drafts", "spec_proposed_drafts", "spec_draft_token_num")
SGLANG_HISTOGRAM = ("spec_correct_drafts_histogram", "spec_accept_histogram")
END = object()


class RemoteError(ProtocolError):
    """The remote engine refused or failed; `code` is the wire's error code."""


@dataclass
class RemoteStats:
    """The stats the remote reported, under wire keys; `as_dict` leaves out what it did not report, and
    adds the approximate mark whenever it applies (it qualifies whatever acceptance figures go out)."""
    known: dict = field(default_factory=dict)

    def as_dict(self, keys=STATS) -> dict:
        return {key: self.known[key] for key in (*keys, ACCEPTANCE_APPROXIMATE) if key in self.known}


@dataclass
class RemoteResult:
    stats: RemoteStats = field(default_factory=RemoteStats)
    text: str = ""
    token_ids: list[int] = field(default_factory=list)  # the OpenAI API reports none
    finish_reason: str = ""


class RemoteStream:
    """Iterate to get text Pieces (token None), as the scheduler does a ReplyStream; `close` cancels.
    `visits`: the daemon's streams at each engine, shared by all its remote streams (to mark overlaps)."""

    def __init__(self, settings: ModelSettings, messages: list[dict], request: GenerateRequest,
                 visits: EngineVisits | None = None):
        self.url = urllib.parse.urlsplit(settings.url)
        self.metrics_url = metrics_url(settings.url)
        self.name = settings.name
        self._visits = visits or EngineVisits()
        self.result = RemoteResult()
        self._pieces: queue.Queue = queue.Queue()
        self._socket: socket.socket | None = None
        self._closed = False
        self._started = time.perf_counter()
        body = request_body(settings.model, messages, request)
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if (key := settings.api_key()) is not None:
            headers["Authorization"] = f"Bearer {key}"
        threading.Thread(target=self._read, args=(json.dumps(body), headers), name=f"remote-{self.name}",
                         daemon=True).start()

    def __iter__(self) -> RemoteStream:
        return self

    @property
    def ready(self) -> bool:
        """Whether a piece (or the end, or an error) has arrived and not been taken."""
        return not self._pieces.empty()

    def __next__(self) -> Piece:
        try:
            item = self._pieces.get_nowait()  # never holds up local streams (the scheduler paces an idle loop)
        except queue.Empty:
            return Piece(None, False, "")
        if isinstance(item, Exception):
            raise item
        if item is END:
            raise StopIteration
        self.result.text += item
        self.result.stats.known.setdefault(TIME_TO_FIRST_TOKEN_S, time.perf_counter() - self._started)
        return Piece(None, False, item)

    def close(self) -> None:
        self._closed = True
        if self._socket is not None:
            try:
                self._socket.shutdown(socket.SHUT_RDWR)  # wakes the reader; the remote sees a disconnect
            except OSError:
                pass
        if not self.result.finish_reason:
            self.result.finish_reason = "cancelled"

    # --- the reader thread ---------------------------------------------------------------------
    def _read(self, body: str, headers: dict) -> None:
        visit = self._visits.enter(self.metrics_url)
        try:
            self._exchange(body, headers, visit)
        finally:
            self._visits.leave(visit)

    def _exchange(self, body: str, headers: dict, visit: Visit) -> None:
        kind = http.client.HTTPSConnection if self.url.scheme == "https" else http.client.HTTPConnection
        connection = kind(self.url.hostname, self.url.port, timeout=CONNECT_TIMEOUT_S)
        auth = {name: value for name, value in headers.items() if name == "Authorization"}
        try:
            before = scrape(self.metrics_url, auth)  # vLLM's counters, before this request moves them
            connection.connect()
            connection.sock.settimeout(None)  # a long prefill is silence, not failure; close() ends it
            self._socket = connection.sock
            if self._closed:
                return
            connection.request("POST", f"{self.url.path.rstrip('/')}/chat/completions", body, headers)
            response = connection.getresponse()
            if response.status != 200:
                raise remote_error(self.name, response.status, response.read())
            for event in sse_events(response):
                self._event(event)
            known = self.result.stats.known
            if before is not None and DRAFTS not in known and DRAFTED_TOKENS not in known:
                if (after := scrape(self.metrics_url, auth)) is not None:
                    known.update(request_stats(before, after, visit.overlapped))
            self._pieces.put(END)
        except RemoteError as exc:
            self._pieces.put(exc)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            if not self._closed:
                self._pieces.put(RemoteError("model_not_ready", f"remote engine of {self.name!r} at "
                                                                f"{self.url.geturl()}: {exc}"))
        finally:
            connection.close()

    def _event(self, event: dict) -> None:
        """Take one server-sent event."""
        if "error" in event:
            raise RemoteError("internal", f"remote engine of {self.name!r}: {event['error'].get('message')}")
        for choice in event.get("choices") or []:
            if text := (choice.get("delta") or {}).get("content"):
                self._pieces.put(text)
            if choice.get("finish_reason"):
                self.result.finish_reason = FINISH.get(choice["finish_reason"], "stop")
        self.result.stats.known.update(remote_stats(event))


def sse_events(lines: Iterable[bytes]) -> Iterator[dict]:
    """The JSON events of an OpenAI-style server-sent event stream, each as soon as its line arrives (a
    reader that times them, scripts/bench_openai.py, relies on that); `data: [DONE]` ends it."""
    for line in lines:
        if line.startswith(b"data:"):
            data = line[5:].strip()
            if data == b"[DONE]":
                return
            yield json.loads(data)


def request_body(model: str, messages: list[dict], request: GenerateRequest) -> dict:
    """The chat completions request for a wire generate (the remote applies its own chat template)."""
    if request.system:
        messages = [{"role": "system", "content": request.system}, *messages]
    body = {"model": model, "messages": messages, "max_tokens": request.max_tokens, "stream": True,
            "stream_options": {"include_usage": True},
            # the sampling fields the request sets (top_k, min_p, repetition_penalty: vLLM, SGLang,
            # llama-server and mtpchatd read them); the others are the remote's model defaults
            **request.sampling}
    if request.seed is not None:
        body["seed"] = request.seed
    if request.stop:
        body["stop"] = list(request.stop)
    if not request.thinking:
        body["chat_template_kwargs"] = {"enable_thinking": False}
    return body


def remote_stats(event: dict) -> dict:
    """Wire stats from what a chunk reports: `usage`, another mtpchatd's `mtp`, llama-server's `timings`,
    SGLang's `meta_info` in a choice."""
    stats = dict(event.get("mtp") or {})
    for choice in event.get("choices") or []:
        if isinstance(meta := choice.get("meta_info"), dict):
            stats.update(sglang_stats(meta))
    stats.pop(TIME_TO_FIRST_TOKEN_S, None)  # measured here, where the client waits
    if usage := event.get("usage"):
        stats[PROMPT_TOKENS], stats[GENERATED_TOKENS] = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if (cached := (usage.get("prompt_tokens_details") or {}).get("cached_tokens")) is not None:
            stats[CACHED_TOKENS] = cached
    timings = event.get("timings") or {}
    if "draft_n" in timings and "draft_n_accepted" in timings:
        stats[DRAFTED_TOKENS], stats[ACCEPTED_TOKENS] = timings["draft_n"], timings["draft_n_accepted"]
        if timings["draft_n"]:
            stats[ACCEPTANCE_RATE] = timings["draft_n_accepted"] / timings["draft_n"]
    for ours, theirs in ((DECODE_TOK_S, "predicted_per_second"), (PREFILL_TOK_S, "prompt_per_second")):
        if theirs in timings:
            stats[ours] = timings[theirs]
    return {key: value for key, value in stats.items() if value is not None}


def sglang_stats(meta: dict) -> dict:
    """Wire stats from SGLang's per-request `meta_info`: `spec_verify_ct` verification steps (drafts), the
    draft tokens accepted and proposed in them, and the histogram of steps by tokens accepted (entry i:
    steps that accepted i), which gives the steps whose (j+1)-th token was accepted. Only what it holds."""
    stats = {}
    if (verify := meta.get("spec_verify_ct")) is not None:
        stats[DRAFTS] = verify
    for ours, theirs in ((ACCEPTED_TOKENS, SGLANG_ACCEPTED), (DRAFTED_TOKENS, SGLANG_DRAFTED)):
        if (value := next((meta[name] for name in theirs if meta.get(name) is not None), None)) is not None:
            stats[ours] = value
    if stats.get(DRAFTED_TOKENS) and ACCEPTED_TOKENS in stats:
        stats[ACCEPTANCE_RATE] = stats[ACCEPTED_TOKENS] / stats[DRAFTED_TOKENS]
    if verify and ACCEPTED_TOKENS in stats:
        stats[MEAN_ACCEPTANCE_LENGTH] = 1 + stats[ACCEPTED_TOKENS] / verify
    histogram = next((meta[name] for name in SGLANG_HISTOGRAM if meta.get(name)), None)
    if verify and isinstance(histogram, list):
        stats[ACCEPTED_PER_POSITION] = [sum(histogram[j + 1:]) for j in range(len(histogram) - 1)]
        stats[ACCEPTANCE_PER_POSITION] = [count / verify for count in stats[ACCEPTED_PER_POSITION]]
    return stats


def remote_error(name: str, status: int, body: bytes) -> RemoteError:
    """An HTTP error of the remote as the wire's error: its request errors are the client's (a prompt beyond
    the context: OpenAI's `context_length_exceeded` code, llama-server's `exceed_context_size_error` type),
    its refusals (key, model, availability) make the model not ready, its overload is `busy`."""
    try:
        error = json.loads(body)["error"]
        error = error if isinstance(error, dict) else {"message": str(error)}
    except (ValueError, TypeError, KeyError):
        error = {"message": body[:300].decode(errors="replace")}
    message = error.get("message")
    too_long = error.get("code") == "context_length_exceeded" or error.get("type") == "exceed_context_size_error"
    code = "prompt_too_long" if too_long else (
        "invalid_request" if status == 400 else "busy" if status == 429
        else "model_not_ready" if status in (401, 403, 404, 503) else "internal")
    return RemoteError(code, f"remote engine of {name!r} answered {status}: {message}")
