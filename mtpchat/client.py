"""Talking to `mtpchatd` over ZeroMQ (DEALER), and starting it when nothing answers.

Requests are one msgpack map each (mtpchat.protocol); replies are matched by request id. A generate
yields the daemon's chunk replies and ends with its terminal reply; leaving the loop early (Ctrl-C,
break) sends a cancel so the daemon stops within a step.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import zmq

from mtpchat.curve import secure_client
from mtpchat.paths import daemon_log, default_endpoint, private_file
from mtpchat.protocol import TERMINAL, pack, unpack


class DaemonUnavailable(Exception):
    """No daemon answered; the message says what to do."""


class DaemonClient:
    def __init__(self, endpoint: str | None = None, timeout_s: float = 10.0):
        self.endpoint = endpoint or default_endpoint()
        self.timeout_ms = int(timeout_s * 1000)
        self.context = zmq.Context.instance()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        if self.endpoint.startswith("tcp://"):
            secure_client(self.socket)
        self.socket.connect(self.endpoint)
        self._ids = (f"{os.getpid()}-{n}" for n in itertools.count(1))

    def close(self) -> None:
        self.socket.close(linger=0)

    def __enter__(self) -> DaemonClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def send(self, op: str, **fields) -> str:
        """Send one request without waiting; returns its id (for `poll`, or a cancel's target)."""
        request_id = next(self._ids)
        self.socket.send(pack({"id": request_id, "op": op, **fields}))
        return request_id

    def poll(self, request_id: str, timeout_ms: int) -> dict | None:
        """The next reply to `request_id` (or an error without id), or None after `timeout_ms`."""
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            left = int((deadline - time.monotonic()) * 1000)
            if left <= 0 or not self.socket.poll(left):
                return None
            message = unpack(self.socket.recv())
            if message.get("id") in (request_id, None):
                return message

    def _receive(self, request_id: str, timeout_ms: int) -> dict:
        message = self.poll(request_id, timeout_ms)
        if message is None:
            raise DaemonUnavailable(f"no answer from mtpchatd at {self.endpoint} within {timeout_ms / 1000:g} s "
                                    f"(log: {daemon_log()})")
        return message

    def request(self, op: str, timeout_ms: int | None = None, **fields) -> dict:
        return self._receive(self.send(op, **fields), timeout_ms or self.timeout_ms)

    def generate(self, first_token_timeout_s: float = 600.0, **fields) -> Iterator[dict]:
        """Yield chunk replies, then the terminal one (done / error / cancelled)."""
        request_id = self.send("generate", **fields)
        finished = False
        try:
            while True:
                message = self._receive(request_id, int(first_token_timeout_s * 1000))
                yield message
                if message.get("type") in TERMINAL:
                    finished = True
                    return
        finally:
            if not finished:
                self.send("cancel", target=request_id)


def daemon_answers(endpoint: str | None = None, timeout_s: float = 0.5) -> bool:
    with DaemonClient(endpoint) as client:
        try:
            return client.request("hello", timeout_ms=int(timeout_s * 1000))["type"] == "hello"
        except DaemonUnavailable:
            return False


def start_daemon(endpoint: str | None = None, wait_s: float = 60.0,
                 progress: Callable[[str], None] = lambda line: None) -> None:
    """Start `mtpchatd` detached (own session, survives this shell) unless one answers; wait for it."""
    if daemon_answers(endpoint):
        return
    log = private_file(daemon_log())
    command = [sys.executable, "-m", "daemon", "serve"] + (["--listen", endpoint] if endpoint else [])
    with open(log, "ab") as out:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
    # the daemon outlives this client's interest in it: reap it whenever it exits, so a long-lived
    # client (the TUI) never holds it as a zombie that `mtpchat daemon stop` would wait for
    threading.Thread(target=process.wait, name="mtpchatd-reaper", daemon=True).start()
    progress("starting mtpchatd")
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise DaemonUnavailable(f"mtpchatd exited with code {process.returncode}; see {log}")
        if daemon_answers(endpoint, timeout_s=0.5):
            return
        progress(".")
    raise DaemonUnavailable(f"mtpchatd did not answer within {wait_s:g} s; see {log}")
