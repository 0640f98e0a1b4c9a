"""One reply in flight, from the Chat widget's point of view.

The user's message is written to the store before anything is sent; the reply is a store row from
its first moment (`streaming`), saved again every SAVE_S seconds while it streams and when it ends, so a
crash, an Esc or a dead daemon loses nothing that reached the screen (a store that fails to save it is
the widget's to report: `unsaved` says it did). Its source (the daemon reader,
streaming.read_daemon_reply, or a stand-in) runs in a Textual thread worker and fills the reply's
feed; the feed posts `ReplyUpdated` when something arrives, and the widget then renders everything
that piled up in one go.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from textual.message import Message

from mtpchat.store import Store
from mtpchat.tui.chat_view import MessageView
from mtpchat.tui.streaming import ReplyFeed

SAVE_S = 0.5


class ReplyUpdated(Message):
    """Chunks or the end of the reply arrived in its feed (posted from the reader's thread)."""


@dataclass
class ActiveReply:
    feed: ReplyFeed
    view: MessageView
    message_id: int
    model: str | None
    stats: dict = field(default_factory=dict)
    unsaved: bool = False  # a save failed; the user has been told

    def save(self, store: Store, status: str, error: str = "") -> None:
        store.update_message(self.message_id, text=self.view.text, status=status, stats=self.stats,
                             pieces=self.view.pieces, error=error)


def request_fields(store: Store, conversation_id: int, max_tokens: int) -> dict:
    """The generate request for the next reply in a conversation: its model, settings and history.
    `max_tokens` is the app's, unless the conversation sets its own. A conversation that pins no seed
    gets a new one per request, so a regenerated reply is sampled anew (temperature 0 is greedy anyway)."""
    conversation = store.conversation(conversation_id)
    history = [{"role": m.role, "content": m.text} for m in store.messages(conversation_id)
               if m.status != "error" and m.text]
    return {"model": conversation.model, "messages": history, "system": conversation.system_prompt or None,
            "thinking": conversation.thinking, "max_tokens": max_tokens, "seed": secrets.randbits(31),
            **conversation.settings}
