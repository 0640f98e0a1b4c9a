"""`mtpchatd`'s serving loop: one ZeroMQ ROUTER socket, resident models, interleaved streams.

Scheduling: one loop on one thread. Each turn it drains every waiting frame (so requests, cancels
and status are answered between decode steps), then advances every active generation by one token,
round robin — several clients stream at once, each at a fair share, and a cancel takes effect
before the next step. Tokens are batched into a chunk per stream at most every FLUSH_S seconds.
A client that vanished or stops reading (its queue is full) has its generation cancelled: sends use
ROUTER_MANDATORY and never block. Bad frames get an error reply and never reach the engine.
Any other exception — a bug, a chat template that raises, a device failure — is isolated: it ends the
one request or stream it happened in with an `internal` error (traceback to stderr, the daemon's log)
while every other stream keeps streaming.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from dataclasses import dataclass, field

import zmq

from daemon.engine.options import GenerationOptions
from daemon.engine.reply import ReplyStream, render_prompt, turn_boundary
from daemon.engine.sampling import SamplingParams
from daemon.engine.state_cache import PromptReuse
from daemon.serve.registry import ModelEntry, ModelRegistry
from mtpchat import __version__
from mtpchat.curve import secure_server
from mtpchat.protocol import (
    DRAFT_AUTO,
    MAX_DRAFT,
    MAX_FRAME_BYTES,
    RUNNING_STATS,
    VERSION,
    CancelRequest,
    GenerateRequest,
    HelloRequest,
    LoadRequest,
    ModelsRequest,
    ProtocolError,
    Request,
    StatusRequest,
    UnloadRequest,
    error_reply,
    pack,
    parse_request,
    reply,
    unpack,
)

FLUSH_S = 0.03
IDLE_POLL_MS = 200
SEND_HWM = 10_000
# ZeroMQ drops the connection of a peer sending a bigger frame, without a word and taking that client's
# streams with it: frames up to 4x the protocol's limit are read, to be answered with frame_too_large.
RECEIVE_LIMIT = 4 * MAX_FRAME_BYTES
FAULT_MESSAGE_CHARS = 300  # an `internal` error's message: the exception, not its traceback


@dataclass
class ClientStream:
    """One client's generate request being served: who asked, the engine's reply, what is not yet sent."""
    identity: bytes
    request: GenerateRequest
    entry: ModelEntry
    stream: ReplyStream | None = None
    text: list[str] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    drafted: list[bool] = field(default_factory=list)
    pieces: list[str] = field(default_factory=list)  # text each token released, for per-token views
    flushed_at: float = 0.0


class DaemonServer:
    def __init__(self, endpoint: str, registry: ModelRegistry, curve: bool = False):
        """With `curve`, only clients holding an authorized CURVE key get in (mtpchat/curve.py)."""
        self.endpoint, self.registry = endpoint, registry
        self.started = time.time()
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.ROUTER)
        self.authenticator = secure_server(self.context, self.socket) if curve else None
        self.socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.socket.setsockopt(zmq.SNDHWM, SEND_HWM)
        self.socket.setsockopt(zmq.MAXMSGSIZE, RECEIVE_LIMIT)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.bind(endpoint)
        self.generations: dict[tuple[bytes, str], ClientStream] = {}
        self.stopping = False

    # --- sending -------------------------------------------------------------------------------
    def _send(self, identity: bytes, message: dict) -> bool:
        """False when the client is gone or not reading; the caller drops its generation."""
        try:
            frame = pack(message)
        except ProtocolError:  # a very long reply's final text: the chunks already carried it
            frame = pack({**message, "text": "", "token_ids": [], "truncated": True})
        try:
            self.socket.send_multipart([identity, frame], flags=zmq.NOBLOCK)
            return True
        except zmq.ZMQError:
            return False

    # --- requests ------------------------------------------------------------------------------
    def _receive(self) -> None:
        while self.socket.poll(0):
            frames = self.socket.recv_multipart()
            identity, payload = frames[0], frames[1:]
            request = None
            try:
                if len(payload) != 1:
                    raise ProtocolError("malformed_frame", f"expected 1 frame per message, got {len(payload)}")
                request = parse_request(unpack(payload[0]))
                self._handle(identity, request)
            except ProtocolError as exc:
                self._send(identity, error_reply(exc.request_id, exc.code, exc.message))
            except Exception as exc:
                self._send(identity, error_reply(request.id if request else None, "internal", fault(exc)))

    def _handle(self, identity: bytes, request: Request) -> None:
        rid = request.id
        if isinstance(request, HelloRequest):
            self._send(identity, reply(rid, "hello", server_version=__version__, protocol=VERSION, pid=os.getpid()))
        elif isinstance(request, StatusRequest):
            self._send(identity, reply(rid, "status", **self.status()))
        elif isinstance(request, ModelsRequest):
            self._send(identity, reply(rid, "models", models=self.registry.describe()))
        elif isinstance(request, (LoadRequest, UnloadRequest)):
            if request.model not in self.registry.entries:
                raise ProtocolError("unknown_model", self._unknown_model(request.model), rid)
            if isinstance(request, LoadRequest):
                self.registry.load(request.model)
            else:
                self._cancel_model(request.model)
                self.registry.unload(request.model)
            self._send(identity, reply(rid, "ok", model=request.model))
        elif isinstance(request, CancelRequest):
            generation = self.generations.pop((identity, request.target), None)
            if generation is not None:
                self._finish_cancelled(generation)
            self._send(identity, reply(rid, "ok", cancelled=generation is not None))
        elif isinstance(request, GenerateRequest):
            self._start_generation(identity, request)

    def _unknown_model(self, name: str) -> str:
        return f"unknown model {name!r}; configured: {', '.join(sorted(self.registry.entries))}"

    def _start_generation(self, identity: bytes, request: GenerateRequest) -> None:
        entry = self.registry.entry(request.model, request.quantize)
        if entry is None:
            raise ProtocolError("unknown_model", self._unknown_model(request.model), request.id)
        if (identity, request.id) in self.generations:
            raise ProtocolError("invalid_request", f"id: request {request.id!r} is already streaming", request.id)
        if entry.state in ("unloaded", "failed"):
            self.registry.load(entry.settings.name)  # a request for a model loads it; it waits meanwhile
        self.generations[(identity, request.id)] = ClientStream(identity, request, entry)

    # --- generations ---------------------------------------------------------------------------
    def _open_stream(self, generation: ClientStream) -> None:
        request, entry = generation.request, generation.entry
        messages = list(request.messages)
        if request.system:
            messages.insert(0, {"role": "system", "content": request.system})
        prompt = render_prompt(entry.tokenizer, messages, request.thinking)
        context = entry.context
        if len(prompt) >= context:
            raise ProtocolError("prompt_too_long", f"the prompt has {len(prompt)} tokens; {entry.settings.name} "
                                                   f"takes at most {context - 1}")
        boundary = turn_boundary(entry.tokenizer, messages, prompt)
        reuse = PromptReuse(self.registry.states, entry.settings.name, boundary)
        generation.stream = ReplyStream(entry.model, entry.tokenizer, prompt, generation_options(request, entry),
                                        reuse)

    def _advance(self, key, generation: ClientStream) -> None:
        """One token for this generation; flush its chunk when due; end it when done."""
        entry = generation.entry
        if generation.stream is None:
            if entry.state == "failed":
                self._end(key, error_reply(generation.request.id, "model_not_ready",
                                           f"model {entry.settings.name!r} failed to load: {entry.error}"))
                return
            if entry.state != "resident":
                return  # still loading: wait
            try:
                self._open_stream(generation)
            except ProtocolError as exc:
                self._end(key, error_reply(generation.request.id, exc.code, exc.message))
                return
        piece = next(generation.stream, None)
        if piece is not None:
            generation.text.append(piece.text)
            if piece.token is not None:
                generation.tokens.append(piece.token)
                generation.drafted.append(piece.drafted)
                generation.pieces.append(piece.text)
        now = time.perf_counter()
        if piece is None or now - generation.flushed_at >= FLUSH_S:
            if not self._flush(generation):
                self._drop(key)
                return
            generation.flushed_at = now
        if piece is None:
            result = generation.stream.result
            self._end(key, reply(generation.request.id, "done", finish_reason=result.finish_reason,
                                 text=result.text, token_ids=result.token_ids, stats=result.stats.as_dict()))

    def _flush(self, generation: ClientStream) -> bool:
        if not generation.tokens and not any(generation.text):
            return True
        stats = generation.stream.result.stats.as_dict(RUNNING_STATS)
        chunk = reply(generation.request.id, "chunk", text="".join(generation.text), tokens=generation.tokens,
                      drafted=generation.drafted, pieces=generation.pieces, stats=stats)
        generation.text, generation.tokens, generation.drafted, generation.pieces = [], [], [], []
        return self._send(generation.identity, chunk)

    def _end(self, key, message: dict) -> None:
        generation = self.generations.pop(key, None)
        if generation is not None:
            self._send(generation.identity, message)

    def _fail(self, key, exc: Exception) -> None:
        """A fault in one stream (opening it, its prompt, a step) ends that stream alone, with `internal`."""
        message = fault(exc)
        generation = self.generations.pop(key, None)
        if generation is None:  # it had ended already (its client was gone): nobody to tell
            return
        if generation.stream is not None:
            try:
                generation.stream.close()
            except Exception as closing:  # the stream is gone either way; say so in the log only
                fault(closing)
        self._send(generation.identity, error_reply(generation.request.id, "internal", message))

    def _drop(self, key) -> None:
        """The client is gone or not reading: stop its generation without a word."""
        generation = self.generations.pop(key, None)
        if generation is not None and generation.stream is not None:
            generation.stream.close()

    def _finish_cancelled(self, generation: ClientStream) -> None:
        if generation.stream is not None:
            self._flush(generation)
            generation.stream.close()
        text = generation.stream.result.text if generation.stream is not None else ""
        self._send(generation.identity, reply(generation.request.id, "cancelled", text=text))

    def _cancel_model(self, name: str) -> None:
        for key, generation in list(self.generations.items()):
            if generation.entry.settings.name == name:
                del self.generations[key]
                self._send(generation.identity, error_reply(generation.request.id, "model_not_ready",
                                                            f"model {name!r} was unloaded"))
                if generation.stream is not None:
                    generation.stream.close()

    # --- loop ----------------------------------------------------------------------------------
    def status(self) -> dict:
        from daemon.serve.footprint import describe_devices

        devices = describe_devices()
        return {"version": __version__, "pid": os.getpid(), "uptime_s": round(time.time() - self.started, 3),
                "endpoint": self.endpoint, "curve": self.authenticator is not None,
                "models": self.registry.describe(), "devices": devices,
                "state_cache": self.registry.states.describe(),
                "active_streams": len(self.generations)}

    def serve_forever(self) -> None:
        try:
            while not self.stopping:
                runnable = any(g.entry.state in ("resident", "failed") for g in self.generations.values())
                if self.socket.poll(0 if runnable else IDLE_POLL_MS):
                    self._receive()
                for key, generation in list(self.generations.items()):
                    if key in self.generations:
                        try:
                            self._advance(key, generation)
                        except Exception as exc:
                            self._fail(key, exc)
        finally:
            for key in list(self.generations):
                self._end(key, error_reply(key[1], "shutdown", "the daemon is shutting down"))
            self.socket.close(linger=100)
            if self.authenticator is not None:
                self.authenticator.stop()
            self.context.term()


def fault(exc: Exception) -> str:
    """Log an unexpected exception's traceback (stderr is the daemon's log); the short message for the client."""
    traceback.print_exception(exc, file=sys.stderr)
    sys.stderr.flush()
    return f"{type(exc).__name__}: {exc}"[:FAULT_MESSAGE_CHARS]


def generation_options(request: GenerateRequest, entry: ModelEntry) -> GenerationOptions:
    """The engine's options for a wire request on a model: the one place the two meet. A request that
    leaves `draft` out gets the model's configured setting; a model without an MTP head decodes plainly."""
    draft = entry.settings.draft if request.draft is None else request.draft
    adaptive = draft == DRAFT_AUTO
    draft_k = (MAX_DRAFT if adaptive else draft) if entry.model.mtp is not None else 0
    return GenerationOptions(max_tokens=request.max_tokens,
                             sampling=SamplingParams(request.temperature, request.top_k, request.top_p, request.seed),
                             draft_k=draft_k, adaptive=adaptive, draft_vocab=entry.settings.draft_vocab,
                             context=entry.context, stop=request.stop)
