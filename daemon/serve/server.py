"""`mtpchatd`'s socket loop: one ZeroMQ ROUTER socket that always answers, whatever the engine does.

The model runs on the engine thread (daemon/serve/scheduler.py); this loop only reads frames, answers
hello, status, models and cancel at once — within milliseconds even while a long prefill runs — and
hands generate, load and unload to the engine, whose replies come back on an inproc PULL socket and
are forwarded here. Sends use ROUTER_MANDATORY and never block: a client that vanished or stops
reading (its queue is full) has its generation dropped. Bad frames get an error reply and never reach
the engine; beyond `max_streams + max_queued` generations a new one is refused with `busy`. A failure
answering one request is that request's `internal` error; the loop goes on.
"""

from __future__ import annotations

import os
import time

import zmq

from daemon.serve.registry import ModelRegistry
from daemon.serve.scheduler import CHUNK, END, Key, Scheduler, fault
from mtpchat import __version__
from mtpchat.config import DaemonLimits
from mtpchat.curve import secure_server
from mtpchat.protocol import (
    MAX_FRAME_BYTES,
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

IDLE_POLL_MS = 200
SEND_HWM = 10_000
# ZeroMQ drops the connection of a peer sending a bigger frame, without a word and taking that client's
# streams with it: frames up to 4x the protocol's limit are read, to be answered with frame_too_large.
RECEIVE_LIMIT = 4 * MAX_FRAME_BYTES
SHUTDOWN_PATIENCE_S = 30.0  # how long a stop waits for the step in progress before leaving anyway


class DaemonServer:
    def __init__(self, endpoint: str, registry: ModelRegistry, curve: bool = False,
                 limits: DaemonLimits = DaemonLimits()):
        """With `curve`, only clients holding an authorized CURVE key get in (mtpchat/curve.py)."""
        self.endpoint, self.registry, self.limits = endpoint, registry, limits
        self.started = time.time()
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.ROUTER)
        self.authenticator = secure_server(self.context, self.socket) if curve else None
        self.socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.socket.setsockopt(zmq.SNDHWM, SEND_HWM)
        self.socket.setsockopt(zmq.MAXMSGSIZE, RECEIVE_LIMIT)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.bind(endpoint)
        inbox = f"inproc://engine-{id(self)}"
        self.inbox = self.context.socket(zmq.PULL)
        self.inbox.bind(inbox)
        self.engine = Scheduler(registry, self.context, inbox, limits)
        self.live: set[Key] = set()  # generations handed to the engine whose terminal reply is not yet sent
        self.stopping = False

    def _send(self, identity: bytes, message: dict) -> bool:
        """False when the client is gone or not reading."""
        return self._send_frame(identity, pack(message))

    def _send_frame(self, identity: bytes, frame: bytes) -> bool:
        try:
            self.socket.send_multipart([identity, frame], flags=zmq.NOBLOCK)
            return True
        except zmq.ZMQError:
            return False

    def _forward(self) -> None:
        """The engine's replies, to their clients; a stream whose client is gone is dropped."""
        while self.inbox.poll(0):
            identity, request_id, kind, frame = self.inbox.recv_multipart()
            key = (identity, request_id.decode())
            sent = self._send_frame(identity, frame)
            if kind == END or (kind == CHUNK and not sent):
                self.live.discard(key)
            if kind == CHUNK and not sent:
                self.engine.drop(key)

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
            self.engine.load_or_unload(identity, request)
        elif isinstance(request, CancelRequest):
            key = (identity, request.target)
            if key in self.live:
                self.engine.cancel(key)  # its `cancelled` reply follows once the step in progress is done
            self._send(identity, reply(rid, "ok", cancelled=key in self.live))
        elif isinstance(request, GenerateRequest):
            self._start_generation(identity, request)

    def _start_generation(self, identity: bytes, request: GenerateRequest) -> None:
        key = (identity, request.id)
        if key in self.live:
            raise ProtocolError("invalid_request", f"id: request {request.id!r} is already streaming", request.id)
        limit = self.limits.max_streams + self.limits.max_queued
        if len(self.live) >= limit:
            raise ProtocolError("busy", f"the daemon is serving {len(self.live)} generations, its limit "
                                        f"(max_streams {self.limits.max_streams} + max_queued "
                                        f"{self.limits.max_queued}); retry later", request.id)
        self.live.add(key)
        self.engine.generate(identity, request)

    # --- loop ----------------------------------------------------------------------------------
    def status(self) -> dict:
        from daemon.serve.footprint import describe_devices

        return {"version": __version__, "pid": os.getpid(), "uptime_s": round(time.time() - self.started, 3),
                "endpoint": self.endpoint, "curve": self.authenticator is not None,
                "models": self.registry.describe(), "devices": describe_devices(),
                "state_cache": self.registry.states.describe(),
                "active_streams": self.engine.active, "queued_streams": self.engine.waiting,
                "limits": self.limits.describe()}

    def serve_forever(self) -> None:
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        poller.register(self.inbox, zmq.POLLIN)
        self.engine.start()
        try:
            while not self.stopping:
                ready = dict(poller.poll(IDLE_POLL_MS))
                if self.inbox in ready:
                    self._forward()
                if self.socket in ready:
                    self._receive()
        finally:
            self.engine.stop(SHUTDOWN_PATIENCE_S)
            self._forward()  # every stream's `shutdown`
            self.close()

    def close(self) -> None:
        self.inbox.close(linger=0)
        self.socket.close(linger=100)
        if self.authenticator is not None:
            self.authenticator.stop()
        if not self.engine.running:  # a step stuck past the patience keeps its socket: the process exits anyway
            self.context.term()
