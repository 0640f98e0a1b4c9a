"""A reply in flight, between the thread that reads the daemon and the screen that shows it.

A source (the daemon reader, or the TUI benchmark's fixed-rate generator) runs in a Textual thread
worker and feeds chunk and terminal messages into a `ReplyFeed`. The feed tells the screen once when
something arrives and then stays quiet until the screen drains it, so the screen takes whatever piled
up while it was rendering in one batch: the render rate is independent of the token rate. The daemon
reader polls in short slices so that a cancel goes out at once and a daemon that dies mid-reply is
noticed (`interrupted`, as is one that shuts down mid-reply) instead of waited on; one busy with
another client's prefill is waited for (mtpchat.client.DeathWatch, the same check `mtpchat ask` makes).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import zmq

from mtpchat.client import POLL_MS, DaemonClient, DaemonUnavailable, DeathWatch


@dataclass(frozen=True)
class Outcome:
    """How a reply ended: status is complete, interrupted or error."""
    status: str
    error: str = ""
    stats: dict | None = None
    text: str | None = None  # the daemon's final text when it differs from the chunks


@dataclass
class Batch:
    """What arrived since the last drain, and the outcome if the reply has ended (after every chunk)."""
    text: str = ""
    pieces: list = field(default_factory=list)  # [[text, drafted], ...]
    stats: dict | None = None
    oldest: float | None = None  # perf_counter of the earliest chunk in this batch (render lag)
    outcome: Outcome | None = None


class ReplyFeed:
    """Thread-safe hand-over of chunks from a source thread to the UI. `on_change` is called (from the
    source's thread) when the first chunk or the outcome arrives after a drain."""

    def __init__(self, on_change: Callable[[], None] = lambda: None):
        self._lock = threading.Lock()
        self._batch = Batch()
        self._on_change = on_change
        self._told = False  # on_change called since the last drain
        self.outcome: Outcome | None = None
        self.cancel_requested = threading.Event()

    def _tell(self) -> None:
        with self._lock:
            told, self._told = self._told, True
        if not told:
            self._on_change()

    def add_chunk(self, message: dict) -> None:
        text = message.get("text", "")
        pieces = [[piece, bool(drafted)]
                  for piece, drafted in zip(message.get("pieces", []), message.get("drafted", []))]
        with self._lock:
            batch = self._batch
            if batch.oldest is None:
                batch.oldest = time.perf_counter()
            batch.text += text
            batch.pieces += pieces
            if told := "".join(piece for piece, _ in pieces):
                tail = text[len(told):]  # text released without a token (the end of a reply)
                if tail:
                    batch.pieces.append([tail, None])
            elif text:
                batch.pieces.append([text, None])
            batch.stats = message.get("stats", batch.stats)
        self._tell()

    def finish(self, outcome: Outcome) -> None:
        with self._lock:
            if self.outcome is None:
                self.outcome = outcome
        self._tell()

    def drain(self) -> Batch:
        with self._lock:
            batch, self._batch = self._batch, Batch()
            batch.outcome, self._told = self.outcome, False
        return batch


def terminal_outcome(message: dict) -> Outcome:
    kind = message["type"]
    if kind == "done":
        return Outcome("complete", stats=message.get("stats"),
                       text=None if message.get("truncated") else message.get("text"))
    if kind == "cancelled":
        return Outcome("interrupted", "cancelled")
    if message.get("code") == "shutdown":  # the daemon stopped mid-reply: what arrived is kept, as for a crash
        return Outcome("interrupted", "mtpchatd shut down")
    return Outcome("error", f"{message.get('message', 'unknown error')} ({message.get('code', 'error')})")


def read_daemon_reply(feed: ReplyFeed, endpoint: str | None, fields: dict) -> None:
    """Run in a thread: stream one generate request into `feed` until it ends, is cancelled, or the
    daemon goes away."""
    try:
        with DaemonClient(endpoint) as client:
            request_id = client.send("generate", **fields)
            watch = DeathWatch(client)
            cancel_sent = False
            while True:
                if feed.cancel_requested.is_set() and not cancel_sent:
                    client.send("cancel", target=request_id)
                    cancel_sent = True
                if feed.outcome is not None:  # the daemon's last word, or the app closed mid-reply
                    break
                message = client.poll(request_id, POLL_MS)
                if message is None:
                    if watch.died():
                        feed.finish(Outcome("interrupted", "mtpchatd died mid-reply"))
                    continue
                watch.heard()
                if message.get("type") == "chunk":
                    feed.add_chunk(message)
                elif message.get("type") in ("done", "cancelled", "error"):
                    feed.finish(terminal_outcome(message))
    except (DaemonUnavailable, zmq.ZMQError) as exc:
        feed.finish(Outcome("interrupted", str(exc)))
    except Exception as exc:  # noqa: BLE001 - a reader bug must still end the reply on screen
        feed.finish(Outcome("error", f"{type(exc).__name__}: {exc}"))
