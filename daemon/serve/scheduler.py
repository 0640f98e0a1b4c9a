"""The engine thread: every generation's steps, kept off the socket loop.

A forward can take seconds (a long prompt's prefill on a CPU), and ZeroMQ sockets belong to one
thread, so the daemon runs two: the socket loop (daemon/serve/server.py) answers hello, status, models
and cancel at once, and this scheduler runs the model. It takes commands (start, cancel, load, unload,
drop) from a queue between steps, then advances each active generation by one step, round robin — a
prompt by one prefill chunk, so a long prompt never stalls the other streams by more than a chunk.
At most `max_streams` generations step at once; later ones wait in arrival order. Replies leave
through an inproc PUSH socket the socket loop forwards to clients; tokens are batched into one chunk
per stream at most every FLUSH_S seconds.

Any exception other than a protocol error — a bug, a chat template that raises, a device failure —
ends the one generation it happened in with an `internal` error (traceback to stderr, the daemon's
log), while every other stream keeps streaming.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

import zmq

from daemon.engine.options import GenerationOptions
from daemon.engine.reply import ReplyStream, render_prompt, turn_boundary
from daemon.engine.sampling import SamplingParams
from daemon.engine.state_cache import PromptReuse
from daemon.serve.registry import ModelEntry, ModelRegistry
from daemon.serve.remote_engine import STEP_WAIT_S, RemoteStream
from daemon.serve.vllm_metrics import EngineVisits
from mtpchat.config import DaemonLimits
from mtpchat.protocol import (
    DRAFT_AUTO,
    MAX_DRAFT,
    RUNNING_STATS,
    GenerateRequest,
    LoadRequest,
    ProtocolError,
    UnloadRequest,
    error_reply,
    pack,
    reply,
)

FLUSH_S = 0.03
WAIT_S = 0.2  # how often an idle engine looks at models that are loading
FAULT_MESSAGE_CHARS = 300  # an `internal` error's message: the exception, not its traceback
# what each outgoing frame is, for the socket loop: a stream's chunk, its terminal reply, another reply
CHUNK, END, OTHER = b"c", b"e", b"o"

Key = tuple[bytes, str]  # (client identity, request id): one generation


@dataclass
class ClientStream:
    """One client's generate request being served (who asked is its key's): the engine's reply, what is
    not yet sent."""
    request: GenerateRequest
    entry: ModelEntry | None = None
    stream: ReplyStream | None = None
    text: list[str] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    drafted: list[bool] = field(default_factory=list)
    pieces: list[str] = field(default_factory=list)  # text each token released, for per-token views
    flushed_at: float = 0.0


class Scheduler:
    """Runs on its own thread (`start`); the socket loop calls only `submit`, `stop` and reads the counts."""

    def __init__(self, registry: ModelRegistry, context: zmq.Context, outbox: str, limits: DaemonLimits):
        self.registry, self.context, self.outbox_address, self.limits = registry, context, outbox, limits
        self.commands: queue.Queue[Callable[[], None]] = queue.Queue()
        self.generations: dict[Key, ClientStream] = {}
        self.engine_visits = EngineVisits()  # remote streams at each engine: overlaps make counters approximate
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="engine", daemon=True)

    # --- the socket loop's side ----------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    @property
    def active(self) -> int:
        """Generations stepping (or waiting for their model to load)."""
        return min(len(self.generations), self.limits.max_streams)

    @property
    def waiting(self) -> int:
        """Generations waiting for a slot."""
        return len(self.generations) - self.active

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def submit(self, command: Callable[[], None]) -> None:
        """Run `command` on the engine thread before its next step."""
        self.commands.put(command)

    def stop(self, patience_s: float) -> None:
        """End every generation with `shutdown` once the step in progress is done (waits up to `patience_s`)."""
        self.submit(lambda: setattr(self, "_stopping", True))
        self._thread.join(patience_s)

    def generate(self, identity: bytes, request: GenerateRequest) -> None:
        self.submit(lambda: self._start(identity, request))

    def cancel(self, key: Key) -> None:
        self.submit(lambda: self._cancel(key))

    def drop(self, key: Key) -> None:
        """The client is gone or not reading: end its generation without a word."""
        self.submit(lambda: self._drop(key))

    def load_or_unload(self, identity: bytes, request: LoadRequest | UnloadRequest) -> None:
        self.submit(lambda: self._load_or_unload(identity, request))

    # --- the engine thread ---------------------------------------------------------------------
    def _run(self) -> None:
        self.outbox = self.context.socket(zmq.PUSH)
        self.outbox.setsockopt(zmq.LINGER, -1)
        self.outbox.connect(self.outbox_address)
        try:
            while not self._stopping:
                self._take_commands()
                for key in list(self.generations)[:self.limits.max_streams]:
                    generation = self.generations.get(key)
                    if generation is not None and not self._stopping:
                        try:
                            self._advance(key, generation)
                        except ProtocolError as exc:
                            # a refused request or a remote engine's refusal, in the wire's terms
                            self._end(key, error_reply(key[1], exc.code, exc.message))
                        except Exception as exc:
                            self._fail(key, exc)
        finally:
            for key in list(self.generations):
                self._end(key, error_reply(key[1], "shutdown", "the daemon is shutting down"))
            self.outbox.close()

    def _idle_wait(self) -> float:
        """How long the engine may wait for a command before its next round: not at all while a local
        stream can step or a remote one has pieces waiting; a remote stream's poll interval while only
        remote streams are active and quiet (their pieces arrive on their own threads); WAIT_S while
        nothing can step (models loading, no streams)."""
        runnable = [g for g in list(self.generations.values())[:self.limits.max_streams]
                    if g.entry is None or g.entry.state in ("resident", "failed")]
        if any(not isinstance(g.stream, RemoteStream) or g.stream.ready for g in runnable):
            return 0.0
        return STEP_WAIT_S if runnable else WAIT_S

    def _take_commands(self) -> None:
        """Every waiting command; when no local stream can step, wait for one up to `_idle_wait`."""
        wait = self._idle_wait()
        while True:
            try:
                command = self.commands.get(True, wait) if wait else self.commands.get_nowait()
            except queue.Empty:
                return
            wait = 0.0
            try:
                command()
            except Exception as exc:  # a bug in a command: logged; the engine goes on
                fault(exc)

    def _send(self, key: Key, kind: bytes, message: dict) -> None:
        try:
            frame = pack(message)
        except ProtocolError:  # a very long reply's final text: the chunks already carried it
            frame = pack({**message, "text": "", "token_ids": [], "truncated": True})
        self.outbox.send_multipart([key[0], key[1].encode(), kind, frame])

    def _unknown_model(self, name: str) -> str:
        return f"unknown model {name!r}; configured: {', '.join(sorted(self.registry.configured))}"

    def _start(self, identity: bytes, request: GenerateRequest) -> None:
        key = (identity, request.id)
        self.generations[key] = generation = ClientStream(request)
        try:
            entry = self.registry.entry(request.model, self._models_in_use(), request.quantize)
        except ProtocolError as exc:
            self._end(key, error_reply(request.id, exc.code, exc.message))
            return
        if entry is None:
            self._end(key, error_reply(request.id, "unknown_model", self._unknown_model(request.model)))
            return
        generation.entry = entry
        if entry.state in ("unloaded", "failed"):
            self.registry.load(entry.settings.name)  # a request for a model loads it; it waits meanwhile

    def _models_in_use(self) -> set[str]:
        return {g.entry.settings.name for g in self.generations.values() if g.entry is not None}

    def _load_or_unload(self, identity: bytes, request: LoadRequest | UnloadRequest) -> None:
        """`load` takes a configured name, a checkpoint directory or a repo id; `unload` a loaded one."""
        key = (identity, request.id)
        try:
            if isinstance(request, LoadRequest):
                entry = self.registry.entry(request.model, self._models_in_use())
            else:
                entry = self.registry.known(request.model)
        except ProtocolError as exc:
            self._send(key, OTHER, error_reply(request.id, exc.code, exc.message))
            return
        if entry is None:
            self._send(key, OTHER, error_reply(request.id, "unknown_model", self._unknown_model(request.model)))
            return
        name = entry.settings.name
        if isinstance(request, LoadRequest):
            self.registry.load(name)
        else:
            self._cancel_model(name)
            self.registry.unload(name)
        self._send(key, OTHER, reply(request.id, "ok", model=name))

    def _open_stream(self, generation: ClientStream) -> None:
        request, entry = generation.request, generation.entry
        if entry.settings.engine == "openai":
            generation.stream = RemoteStream(entry.settings, list(request.messages), request, self.engine_visits)
        else:
            generation.stream = local_reply(request, entry, self.registry.states, self.limits.prefill_chunk)

    def _advance(self, key: Key, generation: ClientStream) -> None:
        """One step for this generation; flush its chunk when due; end it when done."""
        entry = generation.entry
        if generation.stream is None:
            if entry.state == "failed":
                self._end(key, error_reply(generation.request.id, "model_not_ready",
                                           f"model {entry.settings.name!r} failed to load: {entry.error}"))
                return
            if entry.state != "resident":
                return  # still loading: wait
            self._open_stream(generation)  # a ProtocolError ends it in `_run`, as any step's does
        piece = next(generation.stream, None)
        if piece is not None:
            generation.text.append(piece.text)
            if piece.token is not None:
                generation.tokens.append(piece.token)
                generation.drafted.append(piece.drafted)
                generation.pieces.append(piece.text)
        now = time.perf_counter()
        if piece is None or now - generation.flushed_at >= FLUSH_S:
            self._flush(key, generation)
            generation.flushed_at = now
        if piece is None:
            result = generation.stream.result
            self._end(key, reply(generation.request.id, "done", finish_reason=result.finish_reason,
                                 text=result.text, token_ids=result.token_ids, stats=result.stats.as_dict()))

    def _flush(self, key: Key, generation: ClientStream) -> None:
        if not generation.tokens and not any(generation.text):
            return
        stats = generation.stream.result.stats.as_dict(RUNNING_STATS)
        chunk = reply(generation.request.id, "chunk", text="".join(generation.text), tokens=generation.tokens,
                      drafted=generation.drafted, pieces=generation.pieces, stats=stats)
        generation.text, generation.tokens, generation.drafted, generation.pieces = [], [], [], []
        self._send(key, CHUNK, chunk)

    def _end(self, key: Key, message: dict) -> None:
        if self.generations.pop(key, None) is not None:
            self._send(key, END, message)

    def _close(self, generation: ClientStream) -> None:
        if generation.stream is not None:
            generation.stream.close()

    def _fail(self, key: Key, exc: Exception) -> None:
        """A fault in one stream (opening it, its prompt, a step) ends that stream alone, with `internal`."""
        message = fault(exc)
        generation = self.generations.get(key)
        if generation is None:
            return
        try:
            self._close(generation)
        except Exception as closing:  # the stream is gone either way; say so in the log only
            fault(closing)
        self._end(key, error_reply(generation.request.id, "internal", message))

    def _drop(self, key: Key) -> None:
        generation = self.generations.pop(key, None)
        if generation is not None:
            self._close(generation)

    def _cancel(self, key: Key) -> None:
        generation = self.generations.get(key)
        if generation is None:  # it ended meanwhile: its terminal reply is on its way
            return
        if generation.stream is not None:
            self._flush(key, generation)
            self._close(generation)
        text = generation.stream.result.text if generation.stream is not None else ""
        self._end(key, reply(generation.request.id, "cancelled", text=text))

    def _cancel_model(self, name: str) -> None:
        for key, generation in list(self.generations.items()):
            if generation.entry is not None and generation.entry.settings.name == name:
                self._close(generation)
                self._end(key, error_reply(generation.request.id, "model_not_ready", f"model {name!r} was unloaded"))


def fault(exc: Exception) -> str:
    """Log an unexpected exception's traceback (stderr is the daemon's log); the short message for the client."""
    traceback.print_exception(exc, file=sys.stderr)
    sys.stderr.flush()
    return f"{type(exc).__name__}: {exc}"[:FAULT_MESSAGE_CHARS]


def local_reply(request: GenerateRequest, entry: ModelEntry, states=None, prefill_chunk: int = 0) -> ReplyStream:
    """A resident local model's reply to `request`: the system message, the chat template, the context
    check (ProtocolError), the model's defaults under the request's settings; with `states` (a
    StateCache), the prompt resumes from and saves into the conversation state cache."""
    messages = list(request.messages)
    if request.system:
        messages.insert(0, {"role": "system", "content": request.system})
    prompt = render_prompt(entry.tokenizer, messages, request.thinking)
    if len(prompt) >= entry.context:
        raise ProtocolError("prompt_too_long", f"the prompt has {len(prompt)} tokens; {entry.settings.name} "
                                               f"takes at most {entry.context - 1}")
    reuse = None
    if states is not None:
        reuse = PromptReuse(states, entry.settings.name, turn_boundary(entry.tokenizer, messages, prompt))
    return ReplyStream(entry.model, entry.tokenizer, prompt, generation_options(request, entry, prefill_chunk), reuse)


def generation_options(request: GenerateRequest, entry: ModelEntry, prefill_chunk: int = 0) -> GenerationOptions:
    """The engine's options for a wire request on a model: the one place the two meet. A request that
    leaves `draft` out gets the model's configured setting; a model without an MTP head decodes plainly.
    Each sampling setting comes from the request, else the model's defaults for its thinking mode."""
    draft = entry.settings.draft if request.draft is None else request.draft
    adaptive = draft == DRAFT_AUTO
    draft_k = (MAX_DRAFT if adaptive else draft) if entry.model.mtp is not None else 0
    sampling = {**entry.sampling_defaults(request.thinking), **request.sampling}
    return GenerationOptions(max_tokens=request.max_tokens, sampling=SamplingParams(**sampling, seed=request.seed),
                             draft_k=draft_k, adaptive=adaptive, draft_vocab=entry.settings.draft_vocab,
                             context=entry.context, stop=request.stop, prefill_chunk=prefill_chunk)
