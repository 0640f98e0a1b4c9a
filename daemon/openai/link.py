"""The HTTP gateway's connection to a daemon: an asyncio ZeroMQ DEALER speaking the wire protocol.

One link (one socket) per HTTP request: a cancel must come from the socket that started the
generation (docs/protocol.md, "Cancellation"), and a socket of its own means every reply on it is that
request's, with no router between concurrent requests. On ipc:// a connect costs microseconds. The
gateway needs nothing but the endpoint, so it works as well against a daemon on another machine
(tcp://, with CURVE keys as mtpchat.curve arranges).

Silence is not death: a daemon busy with a long prefill still answers hello at once (its socket loop
never runs the model), so after SILENCE_S without a reply the link asks hello, and gives up
(DaemonGone) only when that goes unanswered for HELLO_S.
"""

from __future__ import annotations

import itertools
import time

import zmq
import zmq.asyncio

from mtpchat.curve import secure_client
from mtpchat.protocol import pack, unpack

SILENCE_S = 5.0
HELLO_S = 10.0
CANCEL_LINGER_MS = 1000  # a closed socket keeps this long to deliver a cancel sent just before


class DaemonGone(Exception):
    """The daemon stopped answering."""


class Link:
    def __init__(self, context: zmq.asyncio.Context, endpoint: str):
        self.endpoint = endpoint
        self.socket = context.socket(zmq.DEALER)
        if endpoint.startswith("tcp://"):
            secure_client(self.socket)
        self.socket.connect(endpoint)
        self._ids = (f"http-{n}" for n in itertools.count(1))

    def __enter__(self) -> Link:
        return self

    def __exit__(self, *exc) -> None:
        self.socket.close(linger=CANCEL_LINGER_MS)

    def send(self, op: str, **fields) -> str:
        """Queue one request (never waits: safe in a cancelled task's cleanup); returns its id."""
        request_id = next(self._ids)
        self.socket.send(pack({"id": request_id, "op": op, **fields}), flags=zmq.NOBLOCK)
        return request_id

    async def receive(self, request_id: str) -> dict:
        """The next reply to `request_id` (or an error the daemon could not address)."""
        hello, asked_at = None, 0.0
        while True:
            if await self.socket.poll(SILENCE_S * 1000):
                message = unpack(await self.socket.recv())
                if message.get("id") in (request_id, None):
                    return message
                hello = None if message.get("id") == hello else hello
            elif hello is None:
                hello, asked_at = self.send("hello"), time.monotonic()
            elif time.monotonic() - asked_at > HELLO_S:
                raise DaemonGone(f"mtpchatd at {self.endpoint} does not answer")

    async def request(self, op: str, **fields) -> dict:
        return await self.receive(self.send(op, **fields))
