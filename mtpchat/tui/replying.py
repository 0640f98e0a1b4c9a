"""Sending a message and streaming the reply into the view and the store.

The user's message is written to the store before anything is sent; the reply is a store row from
its first moment (`streaming`), saved again at least every SAVE_S seconds and when it ends, so a
crash, an Esc or a dead daemon loses nothing that reached the screen. The reply's source runs in a
thread (streaming.read_daemon_reply by default; the TUI benchmark injects a fixed-rate one) and is
drained every FRAME_S, so rendering cost does not grow with the token rate.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from mtpchat.store import Message
from mtpchat.tui.chat_view import ChatView, MessageView
from mtpchat.tui.stats_bar import StatsBar
from mtpchat.tui.streaming import ReplyFeed, read_daemon_reply

FRAME_S = 0.05
SAVE_S = 0.5


@dataclass
class ActiveReply:
    feed: ReplyFeed
    view: MessageView
    message_id: int
    model: str | None
    stats: dict = field(default_factory=dict)
    saved_at: float = field(default_factory=time.monotonic)
    busy: bool = False


class Replying:
    """Mixin for the app: `start_reply`, `cancel_reply`, and the frame loop that shows a reply."""

    reply: ActiveReply | None = None
    render_lags: list[float]  # seconds from a chunk's arrival to its render, for scripts/bench_tui.py

    def reply_source(self, feed: ReplyFeed, fields: dict) -> None:
        read_daemon_reply(feed, self.endpoint, fields)

    def request_fields(self, conversation_id: int) -> dict:
        conversation = self.store.conversation(conversation_id)
        history = [{"role": m.role, "content": m.text} for m in self.store.messages(conversation_id)
                   if m.status != "error" and m.text]
        return {"model": conversation.model, "messages": history, "system": conversation.system_prompt or None,
                "thinking": conversation.thinking, "max_tokens": self.max_tokens}

    async def start_reply(self, conversation_id: int) -> None:
        fields = self.request_fields(conversation_id)
        model = fields["model"] or self.default_model()
        message_id = self.store.add_message(conversation_id, "assistant", "", "streaming", model)
        view = await self.query_one(ChatView).add(Message(message_id, conversation_id, "assistant", "", "streaming",
                                                          model, {}, [], ""), self.token_view)
        self.reply = ActiveReply(ReplyFeed(), view, message_id, model)
        threading.Thread(target=self.reply_source, args=(self.reply.feed, fields), name="mtpchat-reply",
                         daemon=True).start()
        self.query_one(StatsBar).show({}, model, streaming=True)

    def cancel_reply(self) -> bool:
        if self.reply is None:
            return False
        self.reply.feed.cancel_requested.set()
        return True

    async def pump_reply(self) -> None:
        """One frame: show what arrived, save now and then, finish when the source has ended."""
        reply = self.reply
        if reply is None or reply.busy:
            return
        reply.busy = True
        try:
            outcome = reply.feed.outcome  # read before draining: every chunk before it is then drained
            batch = reply.feed.drain()
            if batch.text or batch.pieces:
                await reply.view.append(batch.text, batch.pieces)
                self.render_lags.append(time.perf_counter() - batch.oldest)
            if batch.stats:
                reply.stats = batch.stats
                reply.view.set_streaming_stats(batch.stats)
                self.query_one(StatsBar).show(batch.stats, reply.model, streaming=True)
            if outcome is not None:
                await self._finish_reply(reply, outcome)
            elif time.monotonic() - reply.saved_at >= SAVE_S:
                self.save_reply(reply, "streaming")
        finally:
            reply.busy = False

    def save_reply(self, reply: ActiveReply, status: str, error: str = "") -> None:
        view = reply.view
        self.store.update_message(reply.message_id, text=view.text, status=status, stats=reply.stats,
                                  pieces=view.pieces, error=error)
        reply.saved_at = time.monotonic()

    async def _finish_reply(self, reply: ActiveReply, outcome) -> None:
        reply.stats = outcome.stats or reply.stats
        await reply.view.finish(outcome.status, outcome.error, reply.stats, outcome.text)
        self.save_reply(reply, outcome.status, outcome.error)
        self.query_one(StatsBar).show(reply.stats, reply.model, streaming=False)
        self.reply = None
        if outcome.status == "error":
            self.notify(outcome.error, title="Reply failed", severity="error")
        elif outcome.error and outcome.error != "cancelled":
            self.notify(f"{outcome.error}; the partial reply is kept", title="Reply interrupted", severity="warning")
