"""The conversation on screen: one `MessageView` per message in a scrolling `ChatView`.

A streaming reply grows by batches (see streaming.py): the answer is appended to its Markdown
widget (Textual re-parses only the last block), thinking goes into a collapsed block, and when the
reply ends one full render puts every code block and table right. The view stays pinned to the
bottom while a reply streams until the user scrolls up (Textual's anchor). The token view shows the
same reply coloured by provenance: accepted MTP draft tokens vs tokens the verifier produced. The
user's own messages are shown as typed (plain text, line breaks kept), never read as Markdown.
"""

from __future__ import annotations

import re

from rich.text import Text
from textual.containers import Vertical, VerticalScroll
from textual.widgets import Collapsible, Markdown, Static

from mtpchat.store import Message
from mtpchat.tui.stats_bar import footer_line

CODE_BLOCK = re.compile(r"```[^\n]*\n(.*?)```", re.DOTALL)


def split_thinking(text: str) -> tuple[str | None, str]:
    """(thinking, answer) of a Qwen reply: thinking is inside <think>…</think>, or before a lone
    </think> when the chat template opened the block in the prompt; None when there is none."""
    stripped = text.lstrip()
    if stripped.startswith("<think>"):
        thinking, closed, answer = stripped[len("<think>"):].partition("</think>")
        return thinking.strip("\n"), answer.lstrip("\n") if closed else ""
    thinking, closed, answer = text.partition("</think>")
    if closed:
        return thinking.strip("\n"), answer.lstrip("\n")
    return None, text


def code_blocks(text: str) -> list[str]:
    return CODE_BLOCK.findall(text)


class MessageView(Vertical, can_focus=True):
    """One message; an assistant message can stream, and shows its footer when it ends."""

    def __init__(self, message: Message, token_view: bool = False):
        super().__init__(classes=f"message {message.role}")
        self.message_id = message.id
        self.role = message.role
        self.model = message.model
        self.text = message.text
        self.pieces = list(message.pieces)
        self.stats = message.stats
        self.status, self.error = message.status, message.error
        self.token_view = token_view
        self._shown_answer = ""

    def compose(self):
        yield Static(self._title(), classes="message-title")
        if self.role == "user":
            yield Static(Text(self.text), classes="answer")
            return
        yield Collapsible(Static("", classes="thinking-text"), title="Thinking", collapsed=True, classes="thinking")
        yield Markdown("", classes="answer")
        yield Static("", classes="tokens")
        yield Static("", classes="message-footer")

    async def on_mount(self) -> None:
        if self.role == "assistant":
            await self._render_text(full=True)
            self._render_footer()

    def _title(self) -> str:
        return "You" if self.role == "user" else f"Assistant · {self.model or 'default model'}"

    async def _render_text(self, full: bool) -> None:
        thinking, answer = split_thinking(self.text)
        block = self.query_one(".thinking", Collapsible)
        block.display = thinking is not None
        if thinking is not None:
            self.query_one(".thinking-text", Static).update(Text(thinking))
            block.title = f"Thinking ({len(thinking.split())} words)"
        markdown = self.query_one(".answer", Markdown)
        if full or not answer.startswith(self._shown_answer):
            await markdown.update(answer)
        else:
            await markdown.append(answer[len(self._shown_answer):])
        self._shown_answer = answer
        self._render_tokens()

    def _render_tokens(self) -> None:
        tokens = self.query_one(".tokens", Static)
        markdown = self.query_one(".answer", Markdown)
        show = self.token_view
        tokens.display, markdown.display = show, not show
        if show:
            theme = self.app.current_theme
            styles = {True: f"bold {theme.success}", False: theme.foreground or "", None: "dim"}
            tokens.update(Text.assemble(*((piece, styles[drafted]) for piece, drafted in self.pieces))
                          if self.pieces else Text(self.text))

    def _render_footer(self) -> None:
        footer = self.query_one(".message-footer", Static)
        parts = [footer_line(self.stats)] if self.stats else []
        if self.status == "streaming":
            parts.append("streaming…")
        elif self.status == "interrupted":
            parts.append(f"⚠ interrupted{f' ({self.error})' if self.error else ''}")
        elif self.status == "error":
            parts.append(f"✖ error: {self.error}")
        footer.update(" · ".join(p for p in parts if p))
        self.set_class(self.status != "complete", f"status-{self.status}")

    async def append(self, text: str, pieces: list) -> None:
        self.text += text
        self.pieces += pieces
        await self._render_text(full=False)

    async def finish(self, status: str, error: str, stats: dict | None, final_text: str | None) -> None:
        """The reply ended. Each append re-parsed the document from its last top-level block, so the
        streamed render already equals a full one; a full render (slow for long replies: seconds for
        20k characters on a busy CPU) is done only when the daemon's final text differs from the chunks."""
        replaced = final_text is not None and final_text != self.text
        if replaced:
            self.text = final_text
        self.status, self.error = status, error
        self.stats = stats or self.stats
        await self._render_text(full=replaced)
        self._render_footer()

    def set_streaming_stats(self, stats: dict) -> None:
        self.stats = stats
        self._render_footer()

    def set_token_view(self, on: bool) -> None:
        self.token_view = on
        if self.role == "assistant":
            self._render_tokens()


class ChatView(VerticalScroll):
    """The messages of the open conversation, pinned to the bottom while a reply streams."""

    async def show(self, messages: list[Message], token_view: bool, at_message: int | None = None) -> None:
        """Show `messages` from the bottom, or with the one whose id is `at_message` at the top, focused."""
        await self.remove_children()
        views = [MessageView(m, token_view) for m in messages]
        await self.mount_all(views)
        hit = next((view for view in views if view.message_id == at_message), None)
        if hit is None:
            self.scroll_end(animate=False, immediate=True)
            self.anchor()
            return
        self.release_anchor()
        hit.focus(scroll_visible=False)
        self.call_after_refresh(self.scroll_to_widget, hit, animate=False, top=True)

    async def add(self, message: Message, token_view: bool) -> MessageView:
        view = MessageView(message, token_view)
        await self.mount(view)
        self.scroll_end(animate=False)
        self.anchor()
        return view

    def views(self) -> list[MessageView]:
        return list(self.query(MessageView))

    def set_token_view(self, on: bool) -> None:
        for view in self.views():
            view.set_token_view(on)
