"""Talking to `mtpchatd` over ZeroMQ (DEALER), and starting it when nothing answers.

Requests are one msgpack map each (mtpchat.protocol); replies are matched by request id. A generate
yields the daemon's chunk replies and ends with its terminal reply; leaving the loop early (Ctrl-C,
break) sends a cancel so the daemon stops within a step.

A daemon that does not answer quickly is not therefore dead: while it runs a long prefill it may not
read its socket for a minute. Liveness is decided by the process (`daemon_liveness`): on this machine
the daemon holds a lock on its pid file for as long as it runs, so a silent daemon whose lock is held is
busy, not gone; an endpoint on another machine (tcp, an ssh tunnel) gets a longer hello instead. The
same check tells a reader waiting for the next chunk whether to keep waiting (`DeathWatch`).
"""

from __future__ import annotations

import fcntl
import itertools
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import zmq
from zmq.utils.monitor import recv_monitor_message

from mtpchat.curve import secure_client
from mtpchat.paths import daemon_log, default_endpoint, pid_file, private_file
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
        self._disconnects: zmq.Socket | None = None

    def close(self) -> None:
        if self._disconnects is not None:
            self.socket.disable_monitor()
            self._disconnects.close(linger=0)
        self.socket.close(linger=0)

    def disconnect_events(self) -> zmq.Socket:
        """A socket that reports this connection's disconnects; made once per client, since ZeroMQ keeps
        a monitor's address taken for as long as the socket lives (a second monitor fails)."""
        if self._disconnects is None:
            self._disconnects = self.socket.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        return self._disconnects

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

    def generate(self, silence_limit_s: float = 600.0, **fields) -> Iterator[dict]:
        """Yield chunk replies, then the terminal one (done / error / cancelled). A daemon that dies
        mid-reply raises DaemonUnavailable within seconds; a busy one is waited for up to
        `silence_limit_s` between two replies."""
        request_id = self.send("generate", **fields)
        watch = DeathWatch(self)
        finished = False
        try:
            while True:
                message = self.poll(request_id, POLL_MS)
                if message is None:
                    if watch.died():
                        raise DaemonUnavailable(f"mtpchatd died mid-reply (see {daemon_log()})")
                    if watch.silent_for() >= silence_limit_s:
                        raise DaemonUnavailable(f"no answer from mtpchatd at {self.endpoint} within "
                                                f"{silence_limit_s:g} s (log: {daemon_log()})")
                    continue
                watch.heard()
                yield message
                if message.get("type") in TERMINAL:
                    finished = True
                    return
        finally:
            if not finished:
                self.send("cancel", target=request_id)


POLL_MS = 100
CHECK_S = 3.0  # silence after which a reader asks whether the daemon still lives
REMOTE_HELLO_S = 10.0  # a daemon on another machine has no pid file here: a busy one gets this long to answer
ANSWERING, BUSY, DOWN = "answering", "busy", "down"


def local_daemon_pid(endpoint: str | None = None) -> int | None:
    """The pid of the running mtpchatd when `endpoint` is this machine's default socket: the pid file names
    a live process and its lock is held (a stale file from a killed daemon names a pid nobody locks).
    None otherwise. The probe holds the lock for an instant only when one may be held already."""
    if endpoint not in (None, default_endpoint()):
        return None
    try:
        with open(pid_file(), "rb") as lock:
            pid = int(lock.read().strip())
            os.kill(pid, 0)
            fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return pid
    except (OSError, ValueError):
        pass
    return None


def daemon_liveness(endpoint: str | None = None, timeout_s: float = 0.5) -> str:
    """ANSWERING: hello answered within `timeout_s` (or, on another machine's endpoint, within
    REMOTE_HELLO_S); BUSY: no answer, but this machine's daemon process runs and holds its lock;
    DOWN: neither."""
    if _socket_missing(endpoint) and local_daemon_pid(endpoint) is None:
        return DOWN  # the daemon makes its ipc socket when it starts listening: none there, none starting
    if daemon_answers(endpoint, timeout_s):
        return ANSWERING
    if local_daemon_pid(endpoint) is not None:
        return BUSY
    if endpoint not in (None, default_endpoint()) and daemon_answers(endpoint, REMOTE_HELLO_S):
        return ANSWERING
    return DOWN


class DeathWatch:
    """While a client waits for a reply: has the daemon died? ZeroMQ reports a closed connection at once,
    and every CHECK_S of silence `daemon_liveness` is asked; either way only DOWN counts as dead, so a
    daemon busy with another client's prefill is waited for."""

    def __init__(self, client: DaemonClient, check_s: float = CHECK_S):
        self.client, self.check_s = client, check_s
        self.disconnects = client.disconnect_events()
        self.quiet_since = self.checked_at = time.monotonic()

    def heard(self) -> None:
        self.quiet_since = self.checked_at = time.monotonic()

    def silent_for(self) -> float:
        return time.monotonic() - self.quiet_since

    def died(self) -> bool:
        disconnected = (self.disconnects.poll(0)
                        and recv_monitor_message(self.disconnects)["event"] == zmq.EVENT_DISCONNECTED)
        if not disconnected and time.monotonic() - self.checked_at < self.check_s:
            return False
        self.checked_at = time.monotonic()
        return daemon_liveness(self.client.endpoint) == DOWN


def _socket_missing(endpoint: str | None) -> bool:
    """Whether `endpoint` is an ipc socket that does not exist (Linux's abstract `ipc://@name` sockets
    have no file, so they are never missing)."""
    endpoint = endpoint or default_endpoint()
    if not endpoint.startswith("ipc://"):
        return False
    path = endpoint[len("ipc://"):]
    return not path.startswith("@") and not os.path.exists(path)


def daemon_answers(endpoint: str | None = None, timeout_s: float = 0.5) -> bool:
    with DaemonClient(endpoint) as client:
        try:
            return client.request("hello", timeout_ms=int(timeout_s * 1000))["type"] == "hello"
        except DaemonUnavailable:
            return False


def _last_line(log: Path, start: int) -> str:
    """The last non-blank line written to `log` after byte `start`: a daemon that stops at its start says
    why there (a bad config.toml, another daemon holding the lock, a traceback's last line)."""
    with open(log, "rb") as written:
        written.seek(start)
        lines = written.read()[-4096:].decode(errors="replace").splitlines()
    line = next((line.strip() for line in reversed(lines) if line.strip()), "")
    return line.removeprefix("mtpchatd: ")


def start_daemon(endpoint: str | None = None, wait_s: float = 60.0, busy_wait_s: float = 300.0,
                 progress: Callable[[str], None] = lambda line: None) -> None:
    """Start `mtpchatd` detached (own session, survives this shell) unless one answers; wait for it.
    A daemon that is busy (alive, not answering) is waited for up to `busy_wait_s`, never doubled."""
    log = private_file(daemon_log())
    deadline = time.monotonic() + busy_wait_s
    notes = itertools.chain(["mtpchatd is busy…"], itertools.repeat("."))
    while (state := daemon_liveness(endpoint)) == BUSY:
        if time.monotonic() >= deadline:
            raise DaemonUnavailable(f"mtpchatd (pid {local_daemon_pid(endpoint)}) is busy and did not answer "
                                    f"within {busy_wait_s:g} s; see {log}")
        progress(next(notes))
    if state == ANSWERING:
        return
    command = [sys.executable, "-m", "daemon", "serve"] + (["--listen", endpoint] if endpoint else [])
    with open(log, "ab") as out:
        logged_before = out.tell()
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
    # the daemon outlives this client's interest in it: reap it whenever it exits, so a long-lived
    # client (the TUI) never holds it as a zombie that `mtpchat daemon stop` would wait for
    threading.Thread(target=process.wait, name="mtpchatd-reaper", daemon=True).start()
    progress("starting mtpchatd")
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            reason = _last_line(log, logged_before)
            raise DaemonUnavailable(f"mtpchatd exited with code {process.returncode}"
                                    f"{': ' + reason if reason else ''}; see {log}")
        if daemon_answers(endpoint, timeout_s=0.5):
            return
        progress(".")
    raise DaemonUnavailable(f"mtpchatd did not answer within {wait_s:g} s; see {log}")
