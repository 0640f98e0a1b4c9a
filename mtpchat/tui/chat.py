"""The chat column (messages, live stats, message box) and the controller of what it shows.

`Chat` owns the open conversation, the model picked for new conversations, the reply in flight and
the store; nothing else changes them. The app asks it to act (open, send, regenerate, fork, cancel,
pick a model, rename...) and reacts to what it posts: `Chat.Changed` when the conversation or its
title, model or settings changed (the top bar and the conversation list follow) and
`Chat.ReplyFinished` when a reply ended (the app tells the user how it went).

Editing a past user message forks: a new conversation "<title> (edited)" holds the messages before
it and the edited text, and the reply continues there; the original conversation is kept unchanged.
Regenerate replaces the last reply (the replaced one is not kept).

When the store cannot take the user's message (a full disk, a read-only or damaged file), nothing is
sent: the text stays in the message box, a private copy goes to `unsent-<time>.txt` in the data dir,
and the user is told which file failed and what to do. A reply the store cannot take goes on
streaming on screen; the user is told once.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from textual import work
from textual.containers import Vertical
from textual.message import Message as TextualMessage
from textual.timer import Timer

from mtpchat.paths import data_dir, private_file
from mtpchat.store import Conversation, Message, Store, StoreError
from mtpchat.tui.chat_view import ChatView, MessageView
from mtpchat.tui.prompt_input import PromptInput
from mtpchat.tui.replying import SAVE_S, ActiveReply, ReplyUpdated, request_fields
from mtpchat.tui.settings_dialog import summary
from mtpchat.tui.stats_bar import StatsBar
from mtpchat.tui.streaming import Outcome, ReplyFeed

TITLE_CHARS = 48
STREAMING = "A reply is streaming; Esc stops it"


def title_from(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else "New conversation"
    return line if len(line) <= TITLE_CHARS else line[:TITLE_CHARS - 1] + "…"


def save_unsent(text: str) -> Path:
    """A private copy, in the data dir, of a message the store could not take."""
    path = private_file(data_dir() / f"unsent-{datetime.now():%Y%m%d-%H%M%S-%f}.txt")
    path.write_text(text)
    return path


class Chat(Vertical):
    class Changed(TextualMessage):
        """The open conversation, or something about it, changed."""

    class ReplyFinished(TextualMessage):
        def __init__(self, outcome: Outcome):
            super().__init__()
            self.outcome = outcome

    def __init__(self, store: Store, source: Callable[[ReplyFeed, dict], None], max_tokens: int, **kwargs):
        super().__init__(**kwargs)
        self.store, self.source, self.max_tokens = store, source, max_tokens
        self.conversation_id: int | None = None
        self.model_choice: str | None = None  # for new conversations: the last model picked
        self.daemon_default: str | None = None  # the daemon's default model, named on replies without one
        self.reply: ActiveReply | None = None
        self.queued: int | None = None  # a conversation whose reply waits for the daemon to answer
        self.token_view = False
        self._saver: Timer | None = None  # saves the streaming reply every SAVE_S
        self.render_lags: list[float] = []  # seconds from a chunk's arrival to its render (scripts/bench_tui.py)

    def compose(self):
        yield ChatView(id="chat")
        yield StatsBar(id="stats")
        yield PromptInput(self.store.user_inputs(), id="prompt")

    def on_unmount(self) -> None:
        if self.reply is not None:  # leaving mid-reply: keep what arrived; the reader cancels and stops
            self.cancel_reply()
            self.reply.feed.finish(Outcome("interrupted", "the app was closed"))
            self._save_reply(self.reply, "interrupted", "the app was closed")
        self.store.close()

    # --- the conversation ----------------------------------------------------------------------
    def conversation(self) -> Conversation | None:
        return self.store.conversation(self.conversation_id) if self.conversation_id is not None else None

    def model(self) -> str | None:
        """The open conversation's model, or for a new one the last model picked (None: the daemon's default)."""
        conversation = self.conversation()
        return conversation.model if conversation is not None else self.model_choice

    def ensure_conversation(self) -> int:
        if self.conversation_id is None:
            self.conversation_id = self.store.create_conversation("New conversation", self.model_choice)
            self.post_message(self.Changed())
        return self.conversation_id

    async def open(self, conversation_id: int | None, at_message: int | None = None) -> None:
        """Show a conversation (None: a new one) at its end, or at `at_message` (a search hit)."""
        self.conversation_id = conversation_id
        messages = self.store.messages(conversation_id) if conversation_id is not None else []
        await self.query_one(ChatView).show(messages, self.token_view, at_message)
        replies = [m for m in messages if m.role == "assistant" and m.stats]
        self._show_settings()
        if replies:
            self.query_one(StatsBar).show(replies[-1].stats, replies[-1].model, streaming=False)
        else:
            self.query_one(StatsBar).show_idle(self.model())
        self.post_message(self.Changed())

    def change(self, **fields) -> None:
        """Change the open conversation's title, system_prompt, thinking or settings (creating it if needed)."""
        self.store.update_conversation(self.ensure_conversation(), **fields)
        self._show_settings()
        self.post_message(self.Changed())

    def _show_settings(self) -> None:
        conversation = self.conversation()
        self.query_one(StatsBar).show_settings(summary(conversation.settings) if conversation is not None else "")

    def pick_model(self, name: str) -> None:
        self.model_choice = name
        if self.conversation_id is not None:
            self.store.update_conversation(self.conversation_id, model=name)
        self.query_one(StatsBar).show_idle(name)
        self.post_message(self.Changed())

    async def delete(self) -> None:
        """Delete the open conversation and open the newest remaining one."""
        self.store.delete_conversation(self.conversation_id)
        remaining = self.store.conversations()
        await self.open(remaining[0].id if remaining else None)

    def export(self, kind: str) -> Path:
        """Write the open conversation to the data dir's exports/ as Markdown or JSON; the file's path."""
        conversation = self.conversation()
        slug = re.sub(r"[^a-z0-9]+", "-", conversation.title.lower()).strip("-") or "conversation"
        path = data_dir() / "exports" / f"{conversation.id}-{slug}.{'md' if kind == 'markdown' else 'json'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.store.export_markdown(conversation.id) if kind == "markdown"
                        else self.store.export_json(conversation.id))
        return path

    def focused_message(self, role: str) -> MessageView | None:
        """The focused message of this role, else the last one."""
        focused = self.app.focused
        if isinstance(focused, MessageView) and focused.role == role:
            return focused
        views = [v for v in self.query_one(ChatView).views() if v.role == role]
        return views[-1] if views else None

    def set_token_view(self, on: bool) -> None:
        self.token_view = on
        self.query_one(ChatView).set_token_view(on)

    # --- replies -------------------------------------------------------------------------------
    def replying(self, warning: str = STREAMING) -> bool:
        """Whether a reply is streaming; if so the user is told, with `warning`."""
        if self.reply is not None:
            self.notify(warning, severity="warning")
        return self.reply is not None

    async def send(self, text: str, reply: bool = True) -> None:
        """Store and show the user's message, then ask for the reply; with reply=False the reply is
        queued (`queued`) until `send_queued` (the daemon is still starting)."""
        try:
            self._store_user_message(text)  # stored before it is sent
        except StoreError as exc:
            self._tell_unsent(text, exc, "Your message was not sent; it is still in the box")
            return
        prompt = self.query_one(PromptInput)
        prompt.remember(text)
        prompt.text = ""
        await self.query_one(ChatView).add(self.store.messages(self.conversation_id)[-1], self.token_view)
        if reply:
            await self.start_reply()
        else:
            self.queued = self.conversation_id

    async def send_queued(self) -> bool:
        """Ask for the queued reply, if its conversation is still the open one; whether one was asked for."""
        queued, self.queued = self.queued, None
        if queued is None or queued != self.conversation_id or self.reply is not None:
            return False
        await self.start_reply()
        return True

    def _store_user_message(self, text: str) -> None:
        if self.conversation_id is None:  # the conversation and its first message, in one transaction
            self.conversation_id = self.store.start_conversation(title_from(text), self.model_choice, text)
            self.post_message(self.Changed())
        else:
            self.store.add_message(self.conversation_id, "user", text)

    def _tell_unsent(self, text: str, exc: StoreError, headline: str) -> None:
        """`text` could not be stored, so it was not sent: a copy goes to a recovery file, and the user
        is told what failed and where the text is."""
        try:
            copy = f"a copy is in {save_unsent(text)}"
        except OSError as error:
            copy = f"no copy could be written either ({error.strerror or error})"
        self.notify(f"{exc}\n\n{headline}; {copy}.", title="Not sent", severity="error", timeout=30)

    async def regenerate(self) -> None:
        """Replace the last reply with a new one (or answer a conversation that ends with the user)."""
        messages = self.store.messages(self.conversation_id)
        if messages and messages[-1].role == "assistant":
            self.store.delete_messages_from(self.conversation_id, messages[-1].id)
            await self.query_one(ChatView).views()[-1].remove()
        if self.store.messages(self.conversation_id):
            await self.start_reply()

    async def fork(self, message_id: int, text: str) -> None:
        """Continue from an edited user message in a copy of the conversation."""
        try:
            fork = self.store.fork(self.conversation_id, message_id, text)
        except StoreError as exc:
            self._tell_unsent(text, exc, "Your edited message was not sent")
            return
        await self.open(fork)
        await self.start_reply()

    async def start_reply(self) -> None:
        fields = request_fields(self.store, self.conversation_id, self.max_tokens)
        model = fields["model"] or self.daemon_default
        try:
            message_id = self.store.add_message(self.conversation_id, "assistant", "", "streaming", model)
        except StoreError as exc:
            self.notify(f"{exc}\n\nNo reply was asked for.", title="Reply not started", severity="error",
                        timeout=30)
            return
        view = await self.query_one(ChatView).add(Message(message_id, self.conversation_id, "assistant", "",
                                                          "streaming", model, {}, [], ""), self.token_view)
        self.reply = ActiveReply(ReplyFeed(lambda: self.post_message(ReplyUpdated())), view, message_id, model)
        self._read_reply(self.reply.feed, fields)
        self._saver = self.set_interval(SAVE_S, self._save_streaming)
        self.query_one(StatsBar).show({}, model, streaming=True)

    def _save_streaming(self) -> None:
        if self.reply is not None:
            self._save_reply(self.reply, "streaming")

    def _save_reply(self, reply: ActiveReply, status: str, error: str = "") -> None:
        """Save the reply; if the store cannot take it, it goes on on screen and the user is told once."""
        try:
            reply.save(self.store, status, error)
        except StoreError as exc:
            if not reply.unsaved:
                reply.unsaved = True
                self.notify(f"{exc}\n\nThe reply goes on here but is not saved.", title="Reply not saved",
                            severity="error", timeout=30)

    @work(thread=True, group="reply")
    def _read_reply(self, feed: ReplyFeed, fields: dict) -> None:
        self.source(feed, fields)

    def cancel_reply(self) -> bool:
        if self.reply is None:
            return False
        self.reply.feed.cancel_requested.set()
        return True

    async def on_reply_updated(self, event: ReplyUpdated) -> None:
        """Show everything that arrived; finish when the source has ended."""
        event.stop()
        reply = self.reply
        if reply is None:  # a late wake-up from a reply already finished
            return
        batch = reply.feed.drain()
        if batch.text or batch.pieces:
            await reply.view.append(batch.text, batch.pieces)
            self.render_lags.append(time.perf_counter() - batch.oldest)
        if batch.stats:
            reply.stats = batch.stats
            reply.view.set_streaming_stats(batch.stats)
            self.query_one(StatsBar).show(batch.stats, reply.model, streaming=True)
        if batch.outcome is not None:
            await self._finish_reply(reply, batch.outcome)

    async def _finish_reply(self, reply: ActiveReply, outcome: Outcome) -> None:
        self._saver.stop()
        reply.stats = outcome.stats or reply.stats
        await reply.view.finish(outcome.status, outcome.error, reply.stats, outcome.text)
        self._save_reply(reply, outcome.status, outcome.error)
        self.query_one(StatsBar).show(reply.stats, reply.model, streaming=False)
        self.reply = None
        self.post_message(self.ReplyFinished(outcome))
