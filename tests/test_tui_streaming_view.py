"""The chat view under a stream it does not control: Markdown split at awkward places renders the same
as a full render, the view follows the bottom until the user scrolls up, thinking goes into its
block, the reply is in the store while it is still streaming (and interrupted when the daemon shuts down), the
user's own text is shown as typed, and a slow rate keeps its decimal."""

from __future__ import annotations

import threading

from textual.widgets import Markdown

from mtpchat.store import Store
from mtpchat.tui.app import MtpChatApp
from mtpchat.tui.chat_view import ChatView
from mtpchat.tui.streaming import Outcome, terminal_outcome
from tests.test_tui_app import send, wait_until
from tests.test_tui_snapshots import SIZE

REPLY = ("<think>\nplan the answer\n</think>\n\n# Title\n\nSome *text* and a list:\n\n- one\n- two\n\n"
         "```python\ndef f(x):\n    return x\n```\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\nThe end.\n") * 6


class ScriptedApp(MtpChatApp):
    """The app with a reply source the test drives: `release(n)` lets n more characters through."""

    def __init__(self, tmp_path, text: str):
        super().__init__(f"ipc://{tmp_path}/no-daemon.sock", autostart=False)
        self.script, self.sent, self.gate = text, 0, threading.Semaphore(0)

    def daemon_ready(self) -> bool:
        return True  # the scripted source stands in for the daemon

    def reply_source(self, feed, fields) -> None:
        self.fields = fields
        while self.sent < len(self.script):
            while not self.gate.acquire(timeout=0.05):
                if feed.cancel_requested.is_set():  # the app closed mid-reply
                    return
            piece = self.script[self.sent:self.sent + self.step]
            feed.add_chunk({"text": piece, "pieces": [piece], "drafted": [True], "stats": {"generated_tokens": 1}})
            self.sent += len(piece)
        feed.finish(Outcome("complete", stats={"generated_tokens": len(self.script)}))

    def release(self, chunks: int, step: int) -> None:
        self.step = step
        for _ in range(chunks):
            self.gate.release()


async def test_streamed_markdown_renders_like_a_full_render_and_is_saved_while_streaming(tmp_path):
    app = ScriptedApp(tmp_path, REPLY)
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "Write Markdown")
        app.release(len(REPLY) // 2 // 7 + 1, step=7)  # 7 characters at a time: fences and rows split
        await wait_until(pilot, lambda: app.sent >= len(REPLY) // 2)

        def saved():
            return app.chat.store.messages(app.chat.conversation_id)[-1]

        # the periodic save reaches the store while the source is held mid-reply; how soon depends on the load
        await wait_until(pilot, lambda: len(saved().text) >= len(REPLY) // 2 - 7)
        assert saved().status == "streaming" and app.chat.reply is not None
        app.release(len(REPLY), step=7)
        await wait_until(pilot, lambda: app.chat.reply is None)
        view = app.query_one(ChatView).views()[-1]
        markdown = view.query_one(".answer", Markdown)
        streamed = [(type(b).__name__, b.source_range) for b in markdown.children]
        assert view.query_one(".thinking").display and "Thinking (3 words)" in str(view.query_one(".thinking").title)
        await markdown.update(markdown.source)
        assert [(type(b).__name__, b.source_range) for b in markdown.children] == streamed
        assert "MarkdownFence" in {name for name, _ in streamed} and "MarkdownTable" in {name for name, _ in streamed}
        assert saved().text == REPLY


async def test_view_follows_the_stream_until_the_user_scrolls_up(tmp_path):
    app = ScriptedApp(tmp_path, "Some words.\n\n" * 1200)
    async with app.run_test(size=SIZE) as pilot:
        chat = app.query_one(ChatView)
        await send(pilot, "Talk")
        app.release(40, step=50)
        await wait_until(pilot, lambda: app.sent >= 2000 and chat.max_scroll_y > 5)
        await wait_until(pilot, lambda: chat.scroll_y == chat.max_scroll_y)  # following the bottom
        chat.scroll_home(animate=False)
        chat.release_anchor()  # what a user's scroll up does
        await pilot.pause(0.1)
        app.release(100, step=50)
        await wait_until(pilot, lambda: app.sent >= 7000)
        await pilot.pause(0.3)
        assert chat.scroll_y == 0 and chat.max_scroll_y > 5  # stays where the user is reading
        app.release(10_000, step=500)
        await wait_until(pilot, lambda: app.chat.reply is None)


async def test_closing_the_app_mid_reply_keeps_the_partial_as_interrupted(tmp_path):
    app = ScriptedApp(tmp_path, "Some words. " * 100)
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "Talk")
        app.release(5, step=12)
        await wait_until(pilot, lambda: app.chat.reply is not None and len(app.chat.reply.view.text) >= 60)
    store = type(app.chat.store)()
    reply = store.messages(1)[-1]
    assert (reply.status, reply.error, reply.text) == ("interrupted", "the app was closed", "Some words. " * 5)


async def test_the_users_own_message_is_shown_as_typed_not_as_markdown(tmp_path):
    typed = "Keep **these** stars\n- one\n- two\nright after the list\n\n# not a heading"
    app = ScriptedApp(tmp_path, "ok")
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, typed)
        app.release(1, step=2)
        await wait_until(pilot, lambda: app.chat.reply is None)
        mine = app.query_one(ChatView).views()[0]
        assert not mine.query(Markdown)
        assert str(mine.query_one(".answer").render()) == typed


class ShutdownApp(ScriptedApp):
    """The daemon stops mid-reply: one chunk, then its `shutdown` error."""

    def reply_source(self, feed, fields) -> None:
        feed.add_chunk({"text": "Once upon", "stats": {"generated_tokens": 2}})
        feed.finish(terminal_outcome({"type": "error", "code": "shutdown", "message": "the daemon is shutting down"}))


async def test_a_daemon_shutting_down_mid_reply_leaves_it_interrupted(tmp_path):
    app = ShutdownApp(tmp_path, "")
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "Tell me a story")
        await wait_until(pilot, lambda: app.chat.reply is None)
        reply = app.chat.store.messages(app.chat.conversation_id)[-1]
        assert (reply.status, reply.text) == ("interrupted", "Once upon")
        footer = str(app.query_one(ChatView).views()[-1].query_one(".message-footer").render())
        assert "interrupted (mtpchatd shut down)" in footer and "error" not in footer


async def test_a_slow_reply_shows_its_rate_with_a_decimal(tmp_path):
    store = Store()
    conversation = store.create_conversation("Slow", "dense")
    store.add_message(conversation, "user", "hi")
    reply = store.add_message(conversation, "assistant", "", "streaming", "dense")
    store.update_message(reply, text="Hello", status="complete", stats={"decode_tok_s": 1.43, "generated_tokens": 5})
    store.close()
    app = MtpChatApp(f"ipc://{tmp_path}/none.sock", autostart=False)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert str(app.query_one(ChatView).views()[-1].query_one(".message-footer").render()) == "1.4 tok/s · 5 tokens"
        assert "│ 1.4 tok/s │" in str(app.query_one("#stats").render())
